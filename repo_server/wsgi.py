"""WSGI entry point for gunicorn: `gunicorn -c gunicorn.conf.py repo_server.wsgi:app`."""

from repo_server.app import create_app

app = create_app()

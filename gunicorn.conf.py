# Production entry: gunicorn -c gunicorn.conf.py
# All values (and the migrate-on-start hook) live in repo_server/gunicorn_settings.py, shared
# with `nso-repo serve`; override them with the NSO_REPO_* variables documented in README.md.
from repo_server.gunicorn_settings import *  # noqa: F403

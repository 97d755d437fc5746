"""Options and error handling shared by the `nso-repo` commands."""

from __future__ import annotations

import json
import os
import sys
from functools import wraps
from typing import Any, Callable, Optional, TypeVar

import click
import requests

from repo_server.client import ApiError, RepoClient
from repo_server.errors import AppError

F = TypeVar("F", bound=Callable[..., Any])


def data_dir_option(f: F) -> F:
    """`--data-dir`: sets NSO_REPO_DATA_DIR for this process before settings are read."""

    def remember(ctx: click.Context, _param: click.Parameter, value: Optional[str]) -> None:
        if value:
            os.environ["NSO_REPO_DATA_DIR"] = value

    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        expose_value=False,
        callback=remember,
        is_eager=True,
        help="Data folder (default: $NSO_REPO_DATA_DIR or ./nso-repo-data).",
    )(f)


def client_options(f: F) -> F:
    f = click.option("--token", envvar="NSO_REPO_TOKEN", help="API token ($NSO_REPO_TOKEN).")(f)
    f = click.option(
        "--url",
        envvar="NSO_REPO_URL",
        help="Server URL ($NSO_REPO_URL, default http://127.0.0.1:8420).",
    )(f)
    return f


def make_client(url: Optional[str], token: Optional[str]) -> RepoClient:
    return RepoClient(url, token)


def _field_problems(fields: Any, where: str = "") -> list[str]:
    """``details.fields`` of a refusal as ``field: problem`` lines (the location the server
    names first, json or query, left out)."""
    if isinstance(fields, list):
        return [
            f"{where or 'request'}: {problem}" for problem in fields if isinstance(problem, str)
        ]
    if not isinstance(fields, dict):
        return []
    lines: list[str] = []
    for key, value in fields.items():
        top = not where and key in ("json", "query", "form", "headers", "files")
        lines += _field_problems(value, "" if top else f"{where}.{key}" if where else str(key))
    return lines[:20]


def handle_errors(f: F) -> F:
    """Turn known failures into one clear line on stderr and exit status 1."""

    @wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ApiError as exc:
            said = _field_problems(
                exc.details.get("fields") if isinstance(exc.details, dict) else None
            )
            fail(f"{exc.message} [{exc.code}]" + "".join(f"\n  {line}" for line in said))
        except AppError as exc:
            fail(exc.message)
        except requests.exceptions.SSLError as exc:
            url = getattr(exc.request, "url", "") or "the server"
            fail(
                f"cannot verify the TLS certificate of {url.split('?')[0]}: if a private CA "
                "signed it, set REQUESTS_CA_BUNDLE to that CA's PEM file (docs/deployment.md)"
            )
        except requests.ConnectionError as exc:
            url = getattr(exc.request, "url", "") or "the server"
            fail(
                f"cannot reach {url}: is the server running ('nso-repo serve')? "
                "Set --url or NSO_REPO_URL to its address"
            )
        except BrokenPipeError:
            # The reader went away ('| head'): stop quietly, as cat and grep do. Standard
            # output points at /dev/null so that the flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)  # 128 + SIGPIPE, the status of a command the pipe ended
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        except Exception as exc:
            # Database errors are reported in one line; importing SQLAlchemy here would slow
            # every client command, so they are recognised by their module.
            if not type(exc).__module__.startswith("sqlalchemy"):
                raise
            orig = getattr(exc, "orig", None) or exc
            # The data folder holds the database only when it is SQLite.
            where = (
                "NSO_REPO_DATABASE_URL"
                if os.environ.get("NSO_REPO_DATABASE_URL", "").startswith("postgresql")
                else "the data folder (--data-dir, NSO_REPO_DATA_DIR)"
            )
            fail(f"database error: {orig}; check {where}")

    return wrapper  # type: ignore[return-value]


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))

"""Every setting of the server in one table: environment variable -> setting.

`load_settings()` reads the environment once; `create_app(overrides)` lets tests and the CLI
replace any value. Settings are documented in the README's configuration table; keep both in
step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from repo_server.errors import AppError


class ConfigError(AppError):
    code = "config_error"


def _paths(text: str) -> tuple[str, ...]:
    """`a.pem,b.pem` (commas or spaces) -> ("a.pem", "b.pem")."""
    return tuple(part for part in text.replace(",", " ").split() if part)


def _size(text: str) -> int:
    """Parse `4294967296`, `512M`, `4G`, `1T` (binary units)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


# Long-polls one process keeps waiting at once by default: parked, each costs a socket.
MAX_PARKED_POLLS = 10_000
# Threads of a worker when NSO_REPO_THREADS is unset, on SQLite (PostgreSQL:
# repo_server/gunicorn_settings.py, default_threads).
DEFAULT_THREADS = 32


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("nso-repo-data")
    database_url: str = ""  # empty: SQLite file inside data_dir
    storage: str = "local"  # "local" or "s3"
    storage_dir: str = ""  # empty: data_dir/blobs
    s3_endpoint_url: str = ""
    s3_bucket: str = ""
    s3_prefix: str = "blobs/"
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_presign_expires: int = 300
    # The S3 endpoint as NSO hosts reach it: download redirects point there. Empty: the
    # server's own endpoint (s3_endpoint_url), right when both see the store the same way.
    s3_public_url: str = ""
    s3_multipart_threshold: int = 64 << 20
    max_upload_bytes: int = 4 << 30
    # Every other request body (JSON): refused with 413 before it is read when larger.
    max_json_bytes: int = 1 << 20
    # Long-polls one node may hold at once; a newer one answers the oldest 204 at once.
    max_polls_per_node: int = 2
    # Long-polls that may wait at once in one server process. Under the server's worker
    # they are parked (repo_server/parking.py) and hold no thread; the worker lowers it to
    # what its open-file limit allows. Under another server each holds a thread.
    max_waiting_polls: int = MAX_PARKED_POLLS
    tar_max_members: int = 10_000
    tar_max_unpacked_bytes: int = 2 << 30
    tar_max_ratio: int = 200
    gc_protect_seconds: int = 24 * 3600
    # How long a NED migration dry-run's result may be confirmed: device configuration changes
    # through NSO itself too, which no job of ours sees.
    ned_dry_run_max_age: int = 24 * 3600
    # Seconds between two runs of the rollout driver in each server process: what starts
    # targets whose maintenance window opened, and carries rollouts on after a restart.
    # 0: never by the clock (only when a rollout changes or one of its jobs ends).
    rollout_tick: float = 15.0
    log_level: str = "INFO"
    # Seconds a scrape of /metrics reuses the database's gauges of the last one.
    metrics_cache: float = 15.0
    # "json": one JSON line per request (method, route, status, ms, actor) on stderr.
    log_format: str = "text"
    # "terminal": the first admin token is printed on first start when stdout is a terminal;
    # "never": it never is (a container started with -t has a terminal that `docker logs`
    # keeps). Either way, `nso-repo token create --role admin` makes one on the host.
    first_admin_token: str = "terminal"
    # PEM files of the release managers' Ed25519 public keys; empty: any key's signature
    # that verifies is stored (agents hold the key that matters; docs/signed-releases.md).
    release_public_keys: tuple[str, ...] = ()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'nso-repo.db').resolve()}"

    @property
    def resolved_storage_dir(self) -> Path:
        return Path(self.storage_dir) if self.storage_dir else self.data_dir / "blobs"

    @property
    def tmp_dir(self) -> Path:
        """Uploads stream here first; on the data disk so the final move is a rename."""
        return self.data_dir / "tmp"

    def with_overrides(self, **overrides: Any) -> Settings:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        if "data_dir" in overrides:
            overrides["data_dir"] = Path(overrides["data_dir"])
        return replace(self, **overrides).validated()

    def validated(self) -> Settings:
        if not self.data_dir.is_absolute():
            # Relative to where the server was started, not to where Flask looks for files.
            return replace(self, data_dir=self.data_dir.absolute()).validated()
        if self.storage_dir and not Path(self.storage_dir).is_absolute():
            return replace(self, storage_dir=str(Path(self.storage_dir).absolute())).validated()
        if self.storage not in {"local", "s3"}:
            raise ConfigError(
                f"NSO_REPO_STORAGE={self.storage!r} is not a storage backend: use 'local' or 's3'"
            )
        if self.storage == "s3" and not self.s3_bucket:
            raise ConfigError(
                "NSO_REPO_STORAGE=s3 needs NSO_REPO_S3_BUCKET (and usually an endpoint)"
            )
        public = urlsplit(self.s3_public_url)
        if self.s3_public_url and (
            public.scheme not in ("http", "https")
            or not public.hostname
            or public.path not in ("", "/")
            or public.query
            or public.fragment
        ):
            # A path would be signed into every URL (/prefix/bucket/key), which no store
            # behind a path-stripping proxy accepts.
            raise ConfigError(
                f"NSO_REPO_S3_PUBLIC_URL={self.s3_public_url!r} is not an endpoint: give the "
                "scheme, host and port only, as NSO hosts reach the store, e.g. "
                "https://s3.example.net"
            )
        if self.first_admin_token not in ("terminal", "never"):
            raise ConfigError(
                f"NSO_REPO_FIRST_ADMIN_TOKEN={self.first_admin_token!r} is not a choice: use "
                "'terminal' (print the first admin token on a terminal) or 'never'"
            )
        if not 0 <= self.metrics_cache <= 300:
            raise ConfigError(f"NSO_REPO_METRICS_CACHE={self.metrics_cache}: give 0 to 300 seconds")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"NSO_REPO_LOG_FORMAT={self.log_format!r}: use text or json")
        if self.rollout_tick != 0 and not 1 <= self.rollout_tick <= 3600:
            raise ConfigError(
                f"NSO_REPO_ROLLOUT_TICK={self.rollout_tick} is out of range: give 0 (off) or "
                "1 to 3600 seconds (each server process runs the driver that often)"
            )
        if self.ned_dry_run_max_age < 1:
            raise ConfigError(
                f"NSO_REPO_NED_DRY_RUN_MAX_AGE={self.ned_dry_run_max_age} lets no dry-run be "
                "confirmed: give the seconds a dry-run's result holds (default 86400)"
            )
        if self.max_waiting_polls < 1:
            raise ConfigError(
                f"NSO_REPO_MAX_WAITING_POLLS={self.max_waiting_polls} lets no agent wait for "
                f"work: use 1 or more (default {MAX_PARKED_POLLS})"
            )
        if self.max_polls_per_node < 1:
            raise ConfigError(
                f"NSO_REPO_MAX_POLLS_PER_NODE={self.max_polls_per_node} lets no agent wait for "
                "work: use 1 or more (default 2)"
            )
        if self.max_json_bytes < 64 << 10:
            raise ConfigError(
                f"NSO_REPO_MAX_JSON_SIZE={self.max_json_bytes} is below 64K, too small for an "
                "agent's heartbeat: use 64K or more (default 1M)"
            )
        if isinstance(self.release_public_keys, str):
            return replace(self, release_public_keys=_paths(self.release_public_keys)).validated()
        if self.release_public_keys:
            from repo_server.catalog.release_manifest import trusted_keys

            trusted_keys(self.release_public_keys)  # a bad file stops the start, not a request
        return self


# environment variable -> (setting, parser)
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "NSO_REPO_DATA_DIR": ("data_dir", Path),
    "NSO_REPO_DATABASE_URL": ("database_url", str),
    "NSO_REPO_STORAGE": ("storage", str),
    "NSO_REPO_STORAGE_DIR": ("storage_dir", str),
    "NSO_REPO_S3_ENDPOINT_URL": ("s3_endpoint_url", str),
    "NSO_REPO_S3_BUCKET": ("s3_bucket", str),
    "NSO_REPO_S3_PREFIX": ("s3_prefix", str),
    "NSO_REPO_S3_REGION": ("s3_region", str),
    "NSO_REPO_S3_ACCESS_KEY_ID": ("s3_access_key_id", str),
    "NSO_REPO_S3_SECRET_ACCESS_KEY": ("s3_secret_access_key", str),
    "NSO_REPO_S3_PRESIGN_EXPIRES": ("s3_presign_expires", int),
    "NSO_REPO_S3_PUBLIC_URL": ("s3_public_url", str),
    "NSO_REPO_S3_MULTIPART_THRESHOLD": ("s3_multipart_threshold", _size),
    "NSO_REPO_MAX_UPLOAD_SIZE": ("max_upload_bytes", _size),
    "NSO_REPO_MAX_JSON_SIZE": ("max_json_bytes", _size),
    "NSO_REPO_MAX_POLLS_PER_NODE": ("max_polls_per_node", int),
    "NSO_REPO_MAX_WAITING_POLLS": ("max_waiting_polls", int),
    "NSO_REPO_TAR_MAX_MEMBERS": ("tar_max_members", int),
    "NSO_REPO_TAR_MAX_UNPACKED_SIZE": ("tar_max_unpacked_bytes", _size),
    "NSO_REPO_TAR_MAX_RATIO": ("tar_max_ratio", int),
    "NSO_REPO_GC_PROTECT_SECONDS": ("gc_protect_seconds", int),
    "NSO_REPO_NED_DRY_RUN_MAX_AGE": ("ned_dry_run_max_age", int),
    "NSO_REPO_ROLLOUT_TICK": ("rollout_tick", float),
    "NSO_REPO_LOG_LEVEL": ("log_level", str),
    "NSO_REPO_LOG_FORMAT": ("log_format", str),
    "NSO_REPO_METRICS_CACHE": ("metrics_cache", float),
    "NSO_REPO_FIRST_ADMIN_TOKEN": ("first_admin_token", str),
    "NSO_REPO_RELEASE_PUBLIC_KEYS": ("release_public_keys", _paths),
}


def load_settings(environ: Optional[dict[str, str]] = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for var, (name, parse) in ENVIRONMENT.items():
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[name] = parse(raw)
        except ValueError:
            raise ConfigError(
                f"{var}={raw!r} is not valid: expected {parse.__name__.lstrip('_')}; "
                "fix the environment variable and start again"
            ) from None
    return Settings(**values).validated()

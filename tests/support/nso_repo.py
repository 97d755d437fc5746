"""`nso-repo serve` as tests run it: a real gunicorn process on a port of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Union

import requests

from tests.support.ports import free_port
from tests.support.processes import REPO, ServerProcess, clean_env


class RepoServer:
    """`nso-repo serve --data-dir DATA_DIR` with its log beside the data folder. ``start``
    again after ``kill`` or ``stop`` keeps port and data; ``admin`` is an admin token made
    after the first start with ``nso-repo token create``, as an operator does when the
    server runs without a terminal (it prints no token then).

    With ``tls=(cert, key)`` it serves https (``--tls-cert``/``--tls-key``) at
    ``https://<url_host>:<port>`` (the name the certificate was issued for), and this
    fixture's own requests trust ``ca_file``. With ``nofile`` it runs under that limit of
    open files."""

    def __init__(
        self,
        data_dir: Path,
        env: Optional[dict[str, str]] = None,
        workers: Optional[int] = 1,
        *,
        tls: Optional[tuple[Path, Path]] = None,
        ca_file: Optional[Path] = None,
        url_host: str = "127.0.0.1",
        nofile: Optional[int] = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://{url_host}:{self.port}"
        self.verify: Union[str, bool] = str(ca_file) if ca_file else True
        serve_tls = ("--tls-cert", str(tls[0]), "--tls-key", str(tls[1])) if tls else ()
        self.admin = ""
        if env is None:
            access_log = str(data_dir.parent / "access.log")
            env = clean_env(PYTHONPATH=str(REPO), NSO_REPO_ACCESS_LOG=access_log)
        # ``nofile``: the server runs under that open-file limit, soft and hard (prlimit).
        limit = ("prlimit", f"--nofile={nofile}:{nofile}", "--") if nofile else ()
        self.process = ServerProcess(
            [
                *limit,
                *(sys.executable, "-m", "repo_server.cli", "serve", "--port", str(self.port)),
                *("--data-dir", str(data_dir)),
                *(("--workers", str(workers)) if workers else ()),  # None: serve's default
                *serve_tls,
            ],
            data_dir.parent / "serve.log",
            env=env,
            name="nso-repo serve",
            stop_timeout=30,
        )

    @property
    def log(self) -> Path:
        return self.process.log

    @property
    def starts(self) -> int:
        return self.process.starts

    def start(self) -> None:
        self.process.start()
        self.process.wait_ready(self.healthy, ignoring=(requests.RequestException,))
        if not self.admin:
            self.admin = self.make_token("admin")

    def make_token(self, role: str) -> str:
        """A new token of ``role``, made on the server host (`nso-repo token create`)."""
        made = subprocess.run(
            [
                *(sys.executable, "-m", "repo_server.cli", "token", "create", "--role", role),
                *("--name", f"tests-{role}", "--data-dir", str(self.data_dir)),
            ],
            env=self.process.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert made.returncode == 0, f"nso-repo token create failed: {made.stderr}"
        return made.stdout.strip()

    def healthy(self) -> bool:
        answer = requests.get(f"{self.url}/api/v1/health", timeout=1, verify=self.verify)
        return answer.status_code == 200

    def output(self) -> str:
        """What the server printed since its latest start."""
        return self.process.output()

    def kill(self) -> None:
        """SIGKILL the server's processes (gunicorn master and workers): a crash."""
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()

    @property
    def http(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.admin}"
        session.verify = self.verify
        # REQUESTS_CA_BUNDLE in the environment would override ``verify``.
        session.trust_env = self.verify is True
        return session

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self.http.request(method, f"{self.url}/api/v1{path}", timeout=30, **kw)

    def publish(
        self, version: str, installer: Path, packages: list[Path], **requirements: Any
    ) -> None:
        """Upload the files and create release ``version`` of them."""
        for path in [installer, *packages]:
            with path.open("rb") as fh:
                answer = self.http.put(f"{self.url}/api/v1/artifacts/{path.name}", data=fh)
            assert answer.status_code in (200, 201), answer.text
        answer = self.api(
            "POST",
            "/releases",
            json={
                "nso_version": version,
                "installer": installer.name,
                "packages": [p.name for p in packages],
                "requirements": requirements,
            },
        )
        assert answer.status_code == 201, answer.text

    def job(self, job_id: int) -> dict[str, Any]:
        answer = self.api("GET", f"/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

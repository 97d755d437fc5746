"""`nso-repo serve` as tests run it: a real gunicorn process on a port of its own."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Optional

import requests

from tests.support.ports import free_port
from tests.support.processes import REPO, ServerProcess, clean_env

ADMIN_TOKEN = re.compile(r"^\s+(nsr_\S+)$", re.MULTILINE)


class RepoServer:
    """`nso-repo serve --data-dir DATA_DIR` with its log beside the data folder. ``start``
    again after ``kill`` or ``stop`` keeps port and data; ``admin`` is the token printed on
    the first start."""

    def __init__(
        self, data_dir: Path, env: Optional[dict[str, str]] = None, workers: int = 1
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = ""
        if env is None:
            access_log = str(data_dir.parent / "access.log")
            env = clean_env(PYTHONPATH=str(REPO), NSO_REPO_ACCESS_LOG=access_log)
        self.process = ServerProcess(
            [
                *(sys.executable, "-m", "repo_server.cli", "serve", "--port", str(self.port)),
                *("--data-dir", str(data_dir), "--workers", str(workers)),
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
            self.admin = next(iter(ADMIN_TOKEN.findall(self.output())), "")

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200

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

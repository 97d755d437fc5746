"""The README's walkthrough, run line by line as a new user would paste it.

Only what cannot be shared between parallel test runs changes: the server's port, the
simulated host's address and CLI port. Everything else is the README's text.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from tests.support.ports import free_port
from tests.support.processes import ServerProcess, clean_env

README = Path(__file__).resolve().parent.parent / "README.md"


def walkthrough() -> str:
    text = README.read_text()
    block = re.search(
        r"<!-- walkthrough:start -->\s*```sh\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S
    )
    assert block, "README.md lost its walkthrough block"
    return block.group(1)


def test_readme_walkthrough(tmp_path: Path) -> None:
    address = f"127.31.{uuid.uuid4().int % 250 + 1}.{os.getpid() % 250 + 1}"
    script = (
        walkthrough()
        .replace("8420", str(free_port()))
        .replace("127.0.1.1", address)
        .replace("12024", str(free_port(address)))
    )
    env = clean_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    script_run = ServerProcess(
        ["bash", "-euo", "pipefail", "-c", script],
        tmp_path / "walkthrough.log",
        env=env,
        cwd=tmp_path,
        name="the walkthrough",
    )
    script_run.start()
    try:
        returncode = script_run.wait_exit(timeout=300)
    finally:
        # Whatever happened, leave nothing running: the script's background jobs and the host.
        script_run.kill()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nso_sim",
                "host",
                "stop",
                "--root",
                str(tmp_path / "demo/host1"),
            ],
            capture_output=True,
            timeout=60,
        )
    output = script_run.output()
    logs = "".join(
        f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in (tmp_path / "demo").glob("*.log")
    )
    assert returncode == 0, output + logs
    assert "may proceed" in output
    assert "job 1 succeeded" in output
    assert re.search(r"^6\.2$", output, re.M), output
    links = sorted(p.name for p in (tmp_path / "demo/host1/var/opt/ncs/packages").iterdir())
    assert links == ["ncs-6.2-router-nc-1.0.2.tar.gz"], links

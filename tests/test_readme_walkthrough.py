"""The README's walkthrough, run line by line as a new user would paste it.

Only what cannot be shared between parallel test runs changes: the server's port, the
simulated host's address and CLI port. Everything else is the README's text.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


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
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NSO_REPO_", "NSO_SIM_", "NSO_AGENT_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        # Whatever happened, leave nothing running: the script's background jobs and the host.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
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
    logs = "".join(
        f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in (tmp_path / "demo").glob("*.log")
    )
    assert process.returncode == 0, output + logs
    assert "may proceed" in output
    assert "job 1 succeeded" in output
    assert re.search(r"^6\.2$", output, re.M), output
    links = sorted(p.name for p in (tmp_path / "demo/host1/var/opt/ncs/packages").iterdir())
    assert links == ["ncs-6.2-router-nc-1.0.2.tar.gz"], links

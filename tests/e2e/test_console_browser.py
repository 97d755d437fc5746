"""The console in a real browser (Debian's chromium, driven by Playwright) against
`nso-repo demo`: the demo's server, simulated hosts and agents are real processes. A new
operator logs in, reads the fleet, plans and starts an upgrade from the plan page and
watches it finish without reloading, finds it in the audit log, uploads an installer by the
catalog's upload form, sees the matrix name a missing build, and upgrades the HA group;
no page logs a console error. Every page is saved as a screenshot (NSO_CONSOLE_SCREENSHOTS
names a folder to keep them in, as docs/screenshots was made). Ctrl-C then stops the demo,
which removes everything it made."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from tests.support.ports import worker_number
from tests.support.processes import REPO, clean_env, log_tail

from .conftest import PY

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READY_S = 180
# Form fields a screen reader could not name: no <label>, no aria-label.
UNLABELLED = """Array.from(document.querySelectorAll(
    'input:not([type=hidden]), select, textarea'))
  .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label'))
  .map(e => e.name || e.id)"""


@dataclass
class Demo:
    url: str
    token: str
    process: subprocess.Popen[str]
    tmp: Path
    stderr: Path

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.request(
            method, f"{self.url}/api/v1{path}", headers=headers, timeout=60, **kwargs
        )


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stderr = tmp_path / "demo.err"
    first = f"127.{20 + worker_number()}.240.1"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [
                *(PY, "-m", "repo_server.cli", "demo", "--port", "0"),
                *("--first-address", first, "--no-upgrade", "--time-scale", "0.02"),
            ],
            cwd=REPO,
            # A shell with a real deployment's settings: the demo must use none of them.
            env=clean_env(
                TMPDIR=str(tmp),
                NSO_REPO_DATABASE_URL="postgresql://demo-must-not-use@127.0.0.1:9/none",
                NSO_REPO_BIND="0.0.0.0:9",
                NSO_REPO_STORAGE="s3",
            ),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    printed = ""
    deadline = time.monotonic() + READY_S
    while "Ctrl-C stops everything." not in printed:
        assert process.poll() is None, f"the demo stopped:\n{printed}\n{log_tail(stderr)}"
        assert time.monotonic() < deadline, f"the demo was not ready:\n{log_tail(stderr)}"
        with contextlib.suppress(queue.Empty):
            printed += lines.get(timeout=1)
    url = re.search(r"Console:\s+(\S+)/ui/", printed)
    token = re.search(r"Admin token:\s+(\S+)", printed)
    assert url and token, printed
    made = Demo(url.group(1), token.group(1), process, tmp, stderr)
    try:
        yield made
    finally:
        # As an operator stops it: Ctrl-C, so that the demo stops its hosts and agents
        # (each in a process group of its own); a kill only when that hangs.
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=150)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[tuple[Page, list[str]]]:
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on(
            "console",
            lambda m: (
                problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
        page.on(
            "response",
            lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        try:
            yield page, problems
        finally:
            browser.close()


def _shots(tmp_path: Path) -> list[Path]:
    folders = [tmp_path / "screenshots"]
    if os.environ.get("NSO_CONSOLE_SCREENSHOTS"):
        folders.append(Path(os.environ["NSO_CONSOLE_SCREENSHOTS"]))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def _closed(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address, port)) != 0


def test_an_operator_upgrades_the_demo_fleet_from_the_browser(
    demo: Demo, browser_page: tuple[Page, list[str]], tmp_path: Path
) -> None:
    page, problems = browser_page
    folders = _shots(tmp_path)

    def shot(name: str) -> None:
        unlabelled = page.evaluate(UNLABELLED)
        assert not unlabelled, f"{name}: form fields without a label: {unlabelled}"
        for folder in folders:
            page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    # Log in: an unknown visitor is sent to the login page, then back where it went.
    page.goto(f"{demo.url}/ui/fleet")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    shot("login")
    page.get_by_label("API token").fill(demo.token)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{demo.url}/ui/fleet")
    rows = page.locator("table.fleet tbody tr")
    expect(rows).to_have_count(4)
    expect(page.locator("table.fleet")).to_contain_text("core-a")
    expect(page.locator("table.fleet")).to_contain_text("primary")
    expect(page.locator("main")).to_contain_text("core (2 members)")
    shot("fleet")

    # Plan edge-2's upgrade from its page, start it from the plan, watch it finish live.
    page.get_by_role("link", name="edge-2").click()
    expect(page.get_by_role("heading", name="Node edge-2")).to_be_visible()
    page.get_by_label("To release").select_option("6.2")
    page.get_by_role("button", name="Plan").click()
    expect(page.locator(".verdict.ok")).to_contain_text("Preflight passed")
    shot("plan")
    page.get_by_role("button", name="Start the upgrade").click()
    expect(page).to_have_url(re.compile(r"/ui/jobs/\d+$"))
    job_url = page.url
    expect(page.locator("[data-job-state]")).to_have_attribute(
        "data-job-state", "succeeded", timeout=120_000
    )
    assert page.url == job_url  # htmx replaced the part, the page was never reloaded
    expect(page.locator("#job-live")).to_contain_text("verify")
    shot("job")
    # The agent reports the node as it is once the job is over (a heartbeat about a second
    # after its last step): what the node runs comes with it, not with the job's end.
    deadline = time.monotonic() + 60
    while (running := demo.api("GET", "/nodes/edge-2").json()["running_version"]) != "6.2":
        assert time.monotonic() < deadline, f"edge-2 still reports {running} a minute on"
        time.sleep(0.5)

    page.goto(f"{demo.url}/ui/audit?action=job.create")
    expect(page.locator('tr[data-action="job.create"]')).to_have_count(1)
    expect(page.locator("table")).to_contain_text("admin:demo")
    shot("audit")

    # Upload an NSO 6.3 installer with the catalog's upload form (the script's path, with
    # its progress), define 6.3 without the NED, and read the matrix.
    made = subprocess.run(
        [PY, "-m", "nso_sim", "make-installer", "6.3", "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert made.returncode == 0, made.stderr
    page.goto(f"{demo.url}/ui/catalog")
    page.set_input_files("#upload-file", str(tmp_path / "a/nso-6.3.linux.x86_64.installer.bin"))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator('[data-outcome="stored"]')).to_contain_text("installer, stored")
    page.reload()
    expect(page.locator("table")).to_contain_text("nso-6.3.linux.x86_64.installer.bin")
    shot("catalog")
    release = demo.api(
        "POST",
        "/releases",
        json={"nso_version": "6.3", "installer": "nso-6.3.linux.x86_64.installer.bin"},
    )
    assert release.status_code == 201, release.text
    page.goto(f"{demo.url}/ui/matrix")
    blocked = page.locator('[data-cell="router-nc@6.3"]')
    expect(blocked).to_have_attribute("data-state", "blocked")
    expect(blocked).to_contain_text("upload ncs-6.3-router-nc-1.0.2.tar.gz")
    expect(page.locator('[data-cell="router-nc@6.2"]')).to_have_attribute("data-state", "pinned")
    shot("matrix")

    # The HA group: its plan, then its upgrade with the write windows on the timeline.
    page.goto(f"{demo.url}/ui/groups/core")
    shot("group")
    page.get_by_label("To release").select_option("6.2")
    page.get_by_role("button", name="Plan").click()
    expect(page.locator(".verdict.ok")).to_be_visible()
    shot("group-plan")
    page.get_by_role("button", name="Start the upgrade").click()
    expect(page.locator("[data-job-state]")).to_have_attribute(
        "data-job-state", "succeeded", timeout=180_000
    )
    expect(page.locator(".timeline")).to_contain_text("write-unavailable")
    shot("ha-job")
    for path, name in (
        ("/ui/jobs", "jobs"),
        ("/ui/rollouts", "rollouts"),
        ("/ui/nodes/core-a", "node"),
    ):
        page.goto(f"{demo.url}{path}")
        shot(name)
    assert not problems, problems

    # Without JavaScript the read-only pages still say everything.
    plain = page.context.browser.new_context(java_script_enabled=False)  # type: ignore[union-attr]
    bare = plain.new_page()
    bare.goto(f"{demo.url}/ui/login")
    bare.get_by_label("API token").fill(demo.token)
    bare.get_by_role("button", name="Log in").click()
    expect(bare.locator("table.fleet tbody tr")).to_have_count(4)
    bare.goto(job_url)
    expect(bare.locator("[data-job-state]")).to_have_attribute("data-job-state", "succeeded")
    bare.goto(f"{demo.url}/ui/matrix")
    expect(bare.locator('[data-cell="router-nc@6.3"]')).to_contain_text("blocks")
    plain.close()

    # Ctrl-C: every process stops and the demo's folder is gone.
    cli_ports = [(h["address"], h["port"]) for h in _cli_endpoints(demo)]
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=120) == 0, log_tail(demo.stderr)
    assert list(demo.tmp.iterdir()) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{demo.url}/healthz", timeout=5)
    assert all(_closed(address, port) for address, port in cli_ports)


def _cli_endpoints(demo: Demo) -> list[dict[str, Any]]:
    """Where the demo's simulated NSO hosts listen: from their agents' configurations."""
    found = []
    for conf in demo.tmp.glob("nso-repo-demo-*/agents/*/agent.conf"):
        text = conf.read_text()
        found.append(
            {
                "address": re.search(r"^host = (\S+)$", text, re.M).group(1),  # type: ignore[union-attr]
                "port": int(re.search(r"^port = (\d+)$", text, re.M).group(1)),  # type: ignore[union-attr]
            }
        )
    assert len(found) == 4, found
    return found

"""`nso-repo release|node|job` against a live server, with a protocol-speaking agent."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import requests

from tests.api.helpers import put_file
from tests.factories import make_installer, make_package
from tests.upgrades.builders import Agent, agent_result, healthy_inventory, nso_repo


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_release_node_plan_upgrade_watch(live, tmp_path: Path) -> None:
    files = [make_installer(tmp_path, "6.2"), make_package(tmp_path, "router-nc", "1.0.2", "6.2")]
    for path in files:
        assert put_file(live.session("uploader"), live.url, path).status_code == 201
    created = nso_repo(
        live,
        "operator",
        "release",
        "create",
        "6.2",
        "--installer",
        str(files[0]),
        "--package",
        str(files[1]),
        "--java",
        "11",
    )
    assert created.returncode == 0, created.stderr
    assert files[1].name in created.stdout

    added = nso_repo(live, "operator", "node", "add", "edge-7")
    enrollment = added.stdout.strip()
    assert added.returncode == 0 and enrollment.startswith("nse_")
    token = requests.post(
        f"{live.url}/api/v1/agent/enroll", json={"enrollment_token": enrollment}
    ).json()["token"]
    agent = Agent(live.url, token)

    inventory = healthy_inventory("6.1", {"router-nc": "1.0.2"})
    inventory["crypto_keys"] = ["AESCFB128_KEY"]
    agent.heartbeat(inventory)
    refused = nso_repo(live, "viewer", "node", "plan", "edge-7", "--to", "6.2")
    assert refused.returncode == 1
    assert "REFUSED" in refused.stdout and "openssl rand -hex 32" in refused.stdout
    assert "switch_current" in refused.stdout

    agent.heartbeat(healthy_inventory("6.1", {"router-nc": "1.0.2"}))
    assert "may proceed" in nso_repo(live, "viewer", "node", "plan", "edge-7", "--to", "6.2").stdout
    started = nso_repo(live, "operator", "node", "upgrade", "edge-7", "--to", "6.2")
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()

    def run_agent() -> None:
        while (step := agent.next(wait=5)) is not None:
            agent.report(step["id"], "succeeded", result=agent_result(step))

    worker = threading.Thread(target=run_agent)
    worker.start()
    watched = nso_repo(live, "viewer", "job", "watch", job_id, "--interval", "0.2")
    worker.join(timeout=60)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert f"job {job_id} succeeded" in watched.stdout
    assert re.search(r"^\s*9 verify\s+succeeded$", watched.stdout, re.MULTILINE), watched.stdout
    listed = nso_repo(live, "viewer", "job", "ls")
    assert "edge-7" in listed.stdout and "succeeded" in listed.stdout

    # A rollback takes writes made since the stop out of NSO: the operator must say so.
    refused = nso_repo(live, "operator", "job", "rollback", job_id)
    assert refused.returncode == 1
    assert "--discard-writes" in refused.stdout + refused.stderr
    rollback = nso_repo(live, "operator", "job", "rollback", job_id, "--discard-writes")
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    step = agent.next(wait=5)
    assert step["name"] == "recover"
    restore_point = f"/var/opt/ncs/backups/nso-agent-job-{job_id}/restore-point"
    assert step["params"]["restore_point"] == restore_point


def test_an_agents_words_are_shown_as_text_never_as_markup() -> None:
    # A log line such as "[/x]" stopped `job watch` with a markup error; "[bold red]" restyled it.
    from rich.console import Console

    from repo_server.cli.fleet_cmds import _render

    hostile = "[/x] closing tag [bold red]restyled[/] [link=file:///etc/passwd]x[/link]"
    job = {
        "id": 7,
        "node": "[red]n1",
        "kind": "upgrade",
        "source_version": "6.1",
        "target_version": "6.2",
        "state": "running",
        "steps": [
            {
                "seq": 1,
                "name": "start",
                "state": "running",
                "progress": 5,
                "message": hostile,
                "log_tail": "line one\n" + hostile,
            }
        ],
    }
    console = Console(record=True, width=400, color_system=None)
    console.print(_render(job))
    text = console.export_text()
    assert text.count(hostile) == 2
    assert "[red]n1" in text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_reader_that_goes_away_ends_the_command_quietly(live) -> None:
    """`nso-repo node ls | head -1`: the pipe closes before the command writes; it stops
    as cat would, without "error: Broken pipe" or a traceback."""
    import os
    import subprocess
    import sys

    for i in range(3):
        assert (
            live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": f"pipe-{i}"}).ok
        )
    env = {**os.environ, "NSO_REPO_URL": live.url, "NSO_REPO_TOKEN": live.tokens["viewer"]}
    reader, writer = os.pipe()
    os.close(reader)  # the reader has gone before anything is written
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "repo_server.cli", "node", "ls"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.close(writer)
    assert ran.returncode == 141, ran.stderr
    assert ran.stderr == ""


def test_a_nodes_package_upgrade_answers_to_the_groups_words_too(live) -> None:
    """`group package-upgrade` has a node twin named `node upgrade-packages`: typing the
    group's words for a node reaches the same command (unlisted), not "did you mean
    'upgrade'"."""
    said = [
        nso_repo(live, "operator", "node", name, "no-such-node", "--remove", "router-nc")
        for name in ("upgrade-packages", "package-upgrade")
    ]
    assert [s.returncode for s in said] == [1, 1], said
    assert said[0].stderr == said[1].stderr and "no-such-node" in said[0].stderr, said
    assert "package-upgrade" not in nso_repo(live, "viewer", "node", "--help").stdout

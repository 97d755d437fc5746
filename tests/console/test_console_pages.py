"""The console's pages over real HTTP on SQLite and PostgreSQL: the fleet, a plan and the
upgrade it starts, a job's stages, the compatibility matrix, uploads, rollout buttons and
the audit log; each check reads what an operator would read on the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from repo_server.auth.models import AuditEvent
from repo_server.catalog.models import Artifact
from repo_server.fleet.models import Node
from tests.console.helpers import Browser, alert, logged_in
from tests.factories import make_installer
from tests.upgrades.builders import (
    Agent,
    agent_result,
    define_release,
    enroll_node,
    healthy_inventory,
    publish_release,
    upload_package,
)

PKGS = {"router-nc": "1.0.2", "l3vpn": "2.1"}


@pytest.fixture
def fleet(live, tmp_path: Path) -> dict[str, Agent]:
    publish_release(live, tmp_path, "6.1", PKGS)
    publish_release(live, tmp_path, "6.2", PKGS)
    agents = {}
    for name in ("edge-1", "edge-2"):
        agents[name] = enroll_node(live, name)
        assert agents[name].heartbeat(healthy_inventory("6.1")).status_code == 200
    return agents


def _cells(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-cell="([^"]+)" data-state="([^"]+)"', page))


def test_fleet_page_shows_each_node_and_filters_by_release(live, fleet) -> None:
    fleet["edge-2"].heartbeat(healthy_inventory("6.2"))
    browser = logged_in(live.url, live.tokens["viewer"])
    page = browser.get("/ui/fleet").text
    assert "2 nodes; page 1 of 1." in page
    assert "edge-1" in page and "edge-2" in page and "router-nc 1.0.2" in page
    only = browser.get("/ui/fleet", params={"version": "6.2"}).text
    assert "1 node; page 1 of 1." in only and "edge-2" in only and "edge-1" not in only
    refused = browser.get("/ui/fleet", params={"per_page": "100000"})
    assert refused.status_code == 400 and "filter is not valid" in alert(refused.text)


def test_patches_are_called_loaded_only_when_nso_listed_them(live, fleet) -> None:
    """An agent that could not ask NSO (stopped) leaves `loaded` out: those files are not
    shown as loaded patches, on the node's page or in the fleet's."""
    stopped = healthy_inventory("6.1") | {
        "status": "stopped",
        "running_version": None,
        "patches": [
            {"module": "ncs_fix", "file": "ncs_fix.beam"},
            {"module": "ncs_old", "file": "ncs_old.beam", "loaded": False},
        ],
    }
    running = healthy_inventory("6.1") | {
        "patches": [{"module": "ncs_live", "file": "ncs_live.beam", "loaded": True}]
    }
    assert fleet["edge-1"].heartbeat(stopped).status_code == 200
    assert fleet["edge-2"].heartbeat(running).status_code == 200
    browser = logged_in(live.url, live.tokens["viewer"])
    page = browser.get("/ui/nodes/edge-1").text
    loaded = page.split("<h2>Loaded patches</h2>", 1)[1].split("</p>", 1)[0]
    assert "ncs_fix" not in loaded and "None." in loaded, loaded
    assert "did not say (not running, or its CLI not answering): ncs_fix" in page
    assert "NSO does not list as loaded: ncs_old" in page
    page = browser.get("/ui/nodes/edge-2").text
    assert "<h2>Loaded patches</h2>\n<p>ncs_live</p>" in page
    fleet_page = browser.get("/ui/fleet").text
    assert "files, loaded unknown: ncs_fix" in fleet_page and "<td>ncs_live" in fleet_page


def test_an_upgrade_planned_started_and_followed_from_the_console(live, fleet, app_state) -> None:
    browser = logged_in(live.url, live.tokens["operator"])
    plan = browser.get("/ui/nodes/edge-1/plan", params={"to": "6.2"})
    assert plan.status_code == 200
    assert "Preflight passed" in plan.text and "Start the upgrade" in plan.text
    started = browser.post("/ui/nodes/edge-1/upgrade", {"to": "6.2"})
    assert started.status_code == 303
    job_id = int(started.headers["Location"].rsplit("/", 1)[1])
    agent = fleet["edge-1"]
    step = agent.next()
    assert step is not None
    agent.report(
        step["id"],
        "succeeded",
        progress=100,
        message="prestaged",
        log_tail="tail-x",
        result=agent_result(step),
    )
    live_part = browser.get(f"/ui/jobs/{job_id}/live").text
    assert 'data-job-state="running"' in live_part and "hx-trigger" in live_part
    assert "prestaged" in live_part and "tail-x" in live_part
    # A viewer follows the same job without its log tails (job:details).
    viewer = logged_in(live.url, live.tokens["viewer"]).get(f"/ui/jobs/{job_id}").text
    assert "prestaged" in viewer and "tail-x" not in viewer
    assert "Cancel the job" not in viewer
    audit = browser.get("/ui/audit", params={"action": "job.create"}).text
    assert 'data-action="job.create"' in audit and "operator:test-operator" in audit


def test_a_refused_plan_shows_every_reason_and_offers_no_start(live, fleet) -> None:
    fleet["edge-1"].heartbeat(healthy_inventory("6.1", {"router-nc": "1.0.2", "l3vpn": "9.9"}))
    browser = logged_in(live.url, live.tokens["operator"])
    plan = browser.get("/ui/nodes/edge-1/plan", params={"to": "6.2"}).text
    assert "Preflight refused" in plan and "package_version" in plan
    assert "Start the upgrade" not in plan
    forced = browser.post("/ui/nodes/edge-1/upgrade", {"to": "6.2"})
    assert forced.status_code == 422 and "preflight" in forced.text.lower()


def test_the_matrix_shows_a_missing_build_and_what_to_upload(live, fleet, tmp_path) -> None:
    # 6.3 has only the service package: the NED every node runs has no build for it.
    l3vpn = upload_package(live, tmp_path / "63", "l3vpn", "2.1", "6.3")
    assert define_release(live, tmp_path, "6.3", [l3vpn]).status_code == 201
    page = logged_in(live.url, live.tokens["viewer"]).get("/ui/matrix").text
    cells = _cells(page)
    assert cells["router-nc@6.2"] == "pinned" and cells["l3vpn@6.3"] == "pinned"
    assert cells["router-nc@6.3"] == "blocked"
    assert "blocks 2 nodes" in page and "upload ncs-6.3-router-nc-1.0.2.tar.gz" in page
    # Once a 6.3 build of the NED is in the catalog, the fix is to pin it in a release.
    upload_package(live, tmp_path / "63b", "router-nc", "1.0.2", "6.3")
    page = logged_in(live.url, live.tokens["viewer"]).get("/ui/matrix").text
    assert "the catalog has ncs-6.3-router-nc-1.0.2.tar.gz: define a release" in page


def test_a_console_upload_is_stored_audited_and_a_bad_one_leaves_nothing(
    live, app_state, tmp_path
) -> None:
    browser = logged_in(live.url, live.tokens["uploader"])
    installer = make_installer(tmp_path, "6.4")
    with installer.open("rb") as f:
        stored = browser.http.post(
            f"{live.url}/ui/catalog/upload",
            files={"file": (installer.name, f)},
            headers={"X-CSRF-Token": browser.csrf or "", "X-Requested-With": "console-upload"},
            timeout=60,
        )
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"filename": installer.name, "kind": "installer", "did": "stored"}
    bad = browser.http.post(
        f"{live.url}/ui/catalog/upload",
        files={"file": ("notes.txt", b"hello")},
        headers={"X-CSRF-Token": browser.csrf or ""},
        timeout=60,
    )
    assert bad.status_code == 400 and alert(bad.text)
    forged = browser.http.post(
        f"{live.url}/ui/catalog/upload",
        files={"file": ("nso-6.5.linux.x86_64.installer.bin", installer.read_bytes())},
        timeout=60,
    )
    assert forged.status_code == 403
    with app_state.sessions() as session:
        names = session.scalars(select(Artifact.filename)).all()
        uploads = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "artifact.upload")
        ).all()
    assert names == [installer.name]
    assert [e.actor for e in uploads] == ["uploader:test-uploader"]
    catalog = browser.get("/ui/catalog").text
    assert installer.name in catalog and "uploader:test-uploader" in catalog


def test_rollout_buttons_pause_resume_and_cancel_with_reasons(live, fleet, app_state) -> None:
    made = live.session("operator").post(
        f"{live.url}/api/v1/rollouts",
        json={"release": "6.2", "select": {"nodes": ["edge-1", "edge-2"]}, "concurrency": 1},
    )
    assert made.status_code == 201, made.text
    rollout = made.json()["id"]
    viewer = logged_in(live.url, live.tokens["viewer"])
    assert "Pause" not in viewer.get(f"/ui/rollouts/{rollout}").text
    browser = logged_in(live.url, live.tokens["operator"])
    page = browser.get(f"/ui/rollouts/{rollout}").text
    assert 'data-rollout-state="running"' in page and "Pause" in page
    assert (
        browser.post(f"/ui/rollouts/{rollout}/pause", {"reason": "change freeze"}).status_code
        == 303
    )
    page = browser.get(f"/ui/rollouts/{rollout}").text
    assert 'data-rollout-state="paused"' in page and "change freeze" in page
    no_reason = browser.post(f"/ui/rollouts/{rollout}/cancel", {"reason": " "})
    assert no_reason.status_code == 422 and "say why" in alert(no_reason.text)
    unknown = browser.post(f"/ui/rollouts/{rollout}/explode")
    assert unknown.status_code == 400
    assert browser.post(f"/ui/rollouts/{rollout}/resume").status_code == 303
    assert (
        browser.post(f"/ui/rollouts/{rollout}/cancel", {"reason": "wrong night"}).status_code == 303
    )
    state = live.session("viewer").get(f"{live.url}/api/v1/rollouts/{rollout}").json()["state"]
    assert state == "cancelled"
    with app_state.sessions() as session:
        actors = {
            (e.action, e.actor)
            for e in session.scalars(select(AuditEvent).where(AuditEvent.action.like("rollout.%")))
        }
    for action in ("rollout.pause", "rollout.resume", "rollout.cancel"):
        assert (action, "operator:test-operator") in actors


def test_every_page_answers_an_empty_server(live) -> None:
    browser: Browser = logged_in(live.url, live.tokens["admin"])
    for path in (
        "/ui/",
        "/ui/fleet",
        "/ui/matrix",
        "/ui/catalog",
        "/ui/jobs",
        "/ui/rollouts",
        "/ui/audit",
        "/ui/audit?before=5&action=x",
    ):
        answer = browser.get(path)
        assert answer.status_code == 200, (path, alert(answer.text))
    for path, status in (
        ("/ui/nodes/ghost", 404),
        ("/ui/jobs/99", 404),
        ("/ui/catalog?kind=bogus", 400),
        ("/ui/audit?before=zero", 400),
        ("/ui/nodes/ghost/plan", 400),
        ("/ui/groups/ghost/plan?to=6.2", 404),
    ):
        answer = browser.get(path)
        assert answer.status_code == status and alert(answer.text), path


def test_inventories_of_any_old_shape_show_as_unknown_not_as_a_failed_page(
    live, fleet, app_state
) -> None:
    """Inventories stored before heartbeats were checked may hold anything."""
    with app_state.sessions() as session:
        for name, junk in (
            ("edge-1", {"patches": 5, "packages": "x", "ha": [], "status": 1}),
            ("edge-2", ["not", "a", "dict"]),
        ):
            node = session.scalar(select(Node).where(Node.name == name))
            node.inventory = junk
            node.inventory_checked = None
        session.commit()
    browser = logged_in(live.url, live.tokens["viewer"])
    for path in ("/ui/fleet", "/ui/nodes/edge-1", "/ui/nodes/edge-2", "/ui/matrix"):
        assert browser.get(path).status_code == 200, path


def test_the_matrix_counts_only_nodes_an_upgrade_would_move(live, fleet) -> None:
    """A node on a newer release is not blocked by an older one's builds."""
    fleet["edge-2"].heartbeat(healthy_inventory("6.2", {"router-nc": "1.0.2", "l3vpn": "2.0"}))
    page = logged_in(live.url, live.tokens["viewer"]).get("/ui/matrix").text
    cells = _cells(page)
    assert cells["l3vpn@6.1"] == "pinned", "edge-2 runs 6.2: 6.1 does not block it"
    assert cells["l3vpn@6.2"] == "pinned"


def test_live_parts_keep_no_form_and_old_audit_pages_open(live, fleet, app_state) -> None:
    made = live.session("operator").post(
        f"{live.url}/api/v1/rollouts",
        json={"release": "6.2", "select": {"nodes": ["edge-1"]}},
    )
    rollout = made.json()["id"]
    browser = logged_in(live.url, live.tokens["operator"])
    # The buttons refresh with the state, and are kept (a reason being typed with them)
    # while it stays: htmx preserves the element of the same id.
    part = browser.get(f"/ui/rollouts/{rollout}/live").text
    assert 'id="rollout-actions-running" hx-preserve' in part and "Pause" in part
    browser.post(f"/ui/rollouts/{rollout}/pause", {"reason": "look first"})
    part = browser.get(f"/ui/rollouts/{rollout}/live").text
    assert 'id="rollout-actions-paused"' in part and "Resume" in part and "Pause<" not in part
    assert browser.get("/ui/audit", params={"before": "1000001"}).status_code == 200
    assert browser.get("/ui/audit", params={"before": str(2**31)}).status_code == 400
    nul = browser.post(f"/ui/rollouts/{rollout}/pause", {"reason": "freeze\x00"})
    assert nul.status_code == 400 and "NUL" in alert(nul.text)

"""Least privilege: an agent downloads only the blobs of the step its node runs, and a
viewer sees jobs without their operational details (README, "Roles")."""

from __future__ import annotations

from typing import Any

from repo_server.auth.roles import roles_for
from tests.upgrades.builders import agent_result, enroll_node, start_upgrade


def _download(agent, sha256: str, method: str = "GET"):
    return agent.http.request(method, f"{agent.url}/api/v1/blobs/{sha256}", allow_redirects=False)


def test_an_agent_downloads_only_the_blobs_of_its_nodes_step(
    storage_backend, live, enrolled, releases
) -> None:
    start_upgrade(live, enrolled)
    installer, package, other_release = (
        _sha256(live, name)
        for name in (
            releases["6.2"]["installer"],
            releases["6.2"]["packages"][0],
            releases["6.1"]["packages"][0],  # the installers are the same bytes
        )
    )
    assert other_release not in (installer, package)
    missing = live.session("viewer").get(f"{live.url}/api/v1/blobs/{'0' * 64}")
    assert missing.status_code == 404
    # Before the step is handed out the node has nothing to download.
    assert _download(enrolled, installer).json() == _missing_answer(missing, installer)
    step = enrolled.next()
    assert step["name"] == "prestage"
    for sha in (installer, package):
        for method in ("GET", "HEAD"):
            assert _download(enrolled, sha, method).status_code in (200, 302)
    # A blob the catalog has but this node's step does not name: the same 404 as a digest
    # nobody has, so the agent learns nothing about what exists.
    refused = _download(enrolled, other_release)
    assert refused.status_code == 404
    assert refused.json() == _missing_answer(missing, other_release)
    # Another node's agent cannot fetch edge-1's installer.
    other = enroll_node(live, "edge-2")
    assert _download(other, installer).json() == _missing_answer(missing, installer)
    # Users with blob:read still download anything published.
    assert live.session("viewer").get(
        f"{live.url}/api/v1/blobs/{other_release}", allow_redirects=False
    ).status_code in (200, 302)
    # Once the step is done its blobs are no longer the node's to fetch.
    done = enrolled.report(step["id"], "succeeded", result=agent_result(step))
    assert done.status_code == 200, done.text
    assert _download(enrolled, installer).status_code == 404


def _sha256(live, filename: str) -> str:
    return str(
        live.session("viewer").get(f"{live.url}/api/v1/artifacts/{filename}").json()["sha256"]
    )


def _missing_answer(missing, sha256: str) -> dict[str, Any]:
    body = missing.json()
    body["error"]["message"] = body["error"]["message"].replace("0" * 64, sha256)
    return body


def test_viewers_see_jobs_without_contexts_results_and_log_tails(live, enrolled, releases) -> None:
    job = start_upgrade(live, enrolled)
    step = enrolled.next()
    enrolled.report(step["id"], "running", log_tail="sh nso-6.2.installer.bin\n/opt/ncs")
    enrolled.report(step["id"], "succeeded", result={"installed_release": "6.2"})
    step = enrolled.next()
    enrolled.report(step["id"], "succeeded", result=agent_result(step), log_tail="ncs-backup ok")

    url = f"{live.url}/api/v1/jobs/{job['id']}"
    full = live.session("operator").get(url).json()
    assert full["context"]["backup_file"].startswith("/var/opt/ncs/backups/")
    assert full["steps"][1]["log_tail"] == "ncs-backup ok"
    assert full["steps"][0]["result"] == {"installed_release": "6.2"}

    seen = live.session("viewer").get(url)
    assert seen.status_code == 200
    redacted = seen.json()
    assert "context" not in redacted
    assert all("log_tail" not in s and "result" not in s for s in redacted["steps"])
    # Everything else a dashboard shows is there.
    assert [s["state"] for s in redacted["steps"][:2]] == ["succeeded", "succeeded"]
    assert redacted["state"] == full["state"] and redacted["node"] == "edge-1"
    listed = live.session("viewer").get(f"{live.url}/api/v1/jobs").json()
    assert listed and all("context" not in j for j in listed)
    assert "context" in live.session("operator").get(f"{live.url}/api/v1/jobs").json()[0]
    assert roles_for("job:details") == {"admin", "operator"}

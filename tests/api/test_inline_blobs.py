"""Small blobs ride in the step that names them (``content_base64``); large ones, and any
that storage no longer holds intact, are downloaded as before."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from repo_server.upgrades.inline_blobs import INLINE_MAX_BYTES
from tests.api.helpers import put_file
from tests.factories import make_installer, make_package, make_patch_bundle
from tests.upgrades.builders import enroll_node, healthy_inventory


def upload(live: Any, path: Path) -> dict[str, Any]:
    answer = put_file(live.session("uploader"), live.url, path)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_small_blobs_ride_in_the_step_and_a_large_one_is_downloaded(live, tmp_path: Path):
    big = upload(live, make_installer(tmp_path, "6.2", size=INLINE_MAX_BYTES + 1))
    package = make_package(tmp_path, "router-nc", "1.0.3", "6.2")
    small = upload(live, package)
    release = live.session("operator").post(
        f"{live.url}/api/v1/releases",
        json={"nso_version": "6.2", "installer": big["filename"], "packages": [package.name]},
    )
    assert release.status_code == 201, release.text
    agent = enroll_node(live, "edge-1")
    assert agent.heartbeat(healthy_inventory("6.1", {"router-nc": "1.0.3"})).status_code == 200
    started = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade", json={"to": "6.2"}
    )
    assert started.status_code == 202, started.text
    step = agent.next()
    assert step is not None and step["name"] == "prestage"
    installer, [carried] = step["params"]["installer"], step["params"]["packages"]
    assert "content_base64" not in installer
    downloaded = agent.http.get(f"{live.url}{installer['url']}").content
    assert downloaded == (tmp_path / big["filename"]).read_bytes()
    assert base64.b64decode(carried["content_base64"], validate=True) == package.read_bytes()
    assert carried["sha256"] == small["sha256"]


def test_a_blob_storage_holds_altered_is_not_carried(live, app_state, tmp_path: Path):
    # Its own modules: a bundle no other test has handed out (the server keeps carried
    # blobs by sha256, and storage is altered here behind its back).
    bundle = upload(
        live, make_patch_bundle(tmp_path, "6.2", "CSCalter1", ("ncs_altered_in_storage",))
    )
    stored = app_state.storage.local_path(bundle["sha256"])
    assert stored is not None
    stored.chmod(0o600)
    stored.write_bytes(b"x" * bundle["size"])  # same size, other bytes
    agent = enroll_node(live, "edge-2")
    assert agent.heartbeat(healthy_inventory("6.2")).status_code == 200
    started = live.session("operator").post(
        f"{live.url}/api/v1/patch-rollouts",
        json={"patch": bundle["filename"], "nodes": ["edge-2"]},
    )
    assert started.status_code == 201, started.text
    step = agent.next()
    assert step is not None and step["name"] == "apply_patch"
    assert "content_base64" not in step["params"]["patch"]
    # What the agent downloads instead is refused by its own sha256 check.
    got = agent.http.get(f"{live.url}{step['params']['patch']['url']}").content
    assert hashlib.sha256(got).hexdigest() != bundle["sha256"]


def test_a_bundle_deleted_mid_rollout_is_not_carried_any_more(live, tmp_path: Path):
    bundle = upload(live, make_patch_bundle(tmp_path, "6.2", "CSCpulled1", ("ncs_pulled",)))
    agents = {name: enroll_node(live, name) for name in ("edge-3", "edge-4")}
    for agent in agents.values():
        assert agent.heartbeat(healthy_inventory("6.2")).status_code == 200
    started = live.session("operator").post(
        f"{live.url}/api/v1/patch-rollouts",
        json={"patch": bundle["filename"], "nodes": sorted(agents)},
    )
    assert started.status_code == 201, started.text
    first = agents["edge-3"].next()
    assert first is not None and "content_base64" in first["params"]["patch"]  # now cached
    pulled = live.session("admin").delete(f"{live.url}/api/v1/artifacts/{bundle['filename']}")
    assert pulled.status_code == 200, pulled.text
    second = agents["edge-4"].next()
    assert second is not None and "content_base64" not in second["params"]["patch"]
    url = f"{live.url}{second['params']['patch']['url']}"
    assert agents["edge-4"].http.get(url).status_code == 404  # as a download is refused

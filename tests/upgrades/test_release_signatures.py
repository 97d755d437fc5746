"""Signed releases on the server: the canonical manifest, `nso-repo release keygen | sign |
verify`, the signature route, and the manifest and signatures every prestage step carries.

The server stores and checks signatures but never makes one; a database changed after the
signing shows as a signature that no longer verifies (the agent's side of it:
tests/agent/test_release_signature.py, and end to end below).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from sqlalchemy import create_engine, text

from agent.config import load
from agent.runner import Runner
from tests.agent.test_runner_server import drive_job, publish, start_upgrade
from tests.api.helpers import assert_error, put_file
from tests.factories import make_package
from tests.support.sim_hosts import Artifacts, SimHost
from tests.upgrades.builders import Agent, healthy_inventory, publish_release
from tests.upgrades.test_cli_fleet import nso_repo


def keygen(live: Any, folder: Path, name: str = "release-signing") -> tuple[Path, Path]:
    made = nso_repo(live, "operator", "release", "keygen", "--out", str(folder), "--name", name)
    assert made.returncode == 0, made.stderr
    return folder / f"{name}.pem", folder / f"{name}.pub"


def manifest(live: Any, version: str, role: str = "viewer") -> dict[str, Any]:
    answer = live.session(role).get(f"{live.url}/api/v1/releases/{version}/manifest")
    assert answer.status_code == 200, answer.text
    return answer.json()


def sign_body(key: Ed25519PrivateKey, data: str) -> dict[str, str]:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "signature": base64.b64encode(key.sign(data.encode())).decode(),
        "public_key": public.decode(),
    }


def put_signature(live: Any, version: str, body: dict[str, str], role: str = "operator") -> Any:
    return live.session(role).put(f"{live.url}/api/v1/releases/{version}/signature", json=body)


def swap_build(database_url: str, filename: str, other: str) -> dict[str, Any]:
    """What a compromised database does: the release's build row ``filename`` now names the
    bytes of the artifact ``other``. Returns the row's values as they were."""
    engine = create_engine(database_url)
    select = text("SELECT sha256, size, blob_id FROM artifacts WHERE filename = :f")
    with engine.begin() as db:
        before = dict(db.execute(select, {"f": filename}).one()._mapping)
        evil = db.execute(select, {"f": other}).one()
        set_row(db, filename, {"sha256": evil.sha256, "size": evil.size, "blob_id": evil.blob_id})
    engine.dispose()
    return before


def set_row(db: Any, filename: str, values: dict[str, Any]) -> None:
    db.execute(
        text("UPDATE artifacts SET sha256 = :sha256, size = :size, blob_id = :blob_id "
             "WHERE filename = :f"),
        {**values, "f": filename},
    )  # fmt: skip


def test_keygen_sign_verify(live, tmp_path: Path) -> None:
    release = publish_release(live, tmp_path, "6.2", {"router-nc": "1.0.2", "l3vpn": "2.1"})
    assert release["signatures"] == []
    private, public = keygen(live, tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert "BEGIN PUBLIC KEY" in public.read_text()
    again = nso_repo(live, "operator", "release", "keygen", "--out", str(tmp_path / "keys"))
    assert again.returncode == 1 and "exists: keep the key you have" in again.stderr

    # The canonical manifest: sorted-key JSON of version, installer, builds, requirements.
    got = manifest(live, "6.2")
    pinned = json.loads(got["manifest"])
    assert got["manifest"] == json.dumps(pinned, sort_keys=True, separators=(",", ":"))
    assert got["manifest_sha256"] == hashlib.sha256(got["manifest"].encode()).hexdigest()
    assert pinned["format"] == "nso-fleet-release/1" and pinned["nso_version"] == "6.2"
    assert pinned["installer"]["filename"] == release["installer"]
    assert sorted(p["filename"] for p in pinned["packages"]) == sorted(release["packages"])
    assert set(pinned["packages"][0]) == {"filename", "sha256", "size"}

    # It shows the manifest and asks; no answer signs nothing. --yes signs, uploads the signature.
    refused = nso_repo(live, "operator", "release", "sign", "6.2", "--key", str(private))
    assert refused.returncode == 1 and "sign exactly this release?" in refused.stdout
    assert manifest(live, "6.2")["signatures"] == []
    signed = nso_repo(live, "operator", "release", "sign", "6.2", "--key", str(private), "--yes")
    assert signed.returncode == 0, signed.stderr
    assert release["installer"] in signed.stdout  # what is signed is shown first
    stored = manifest(live, "6.2")["signatures"]
    assert [s["valid"] for s in stored] == [True] and stored[0][
        "signed_by"
    ] == "operator:test-operator"
    assert "signed by 1 key(s)" in nso_repo(live, "viewer", "release", "ls").stdout
    listed = live.session("viewer").get(f"{live.url}/api/v1/releases/6.2").json()
    assert listed["signatures"][0]["key_id"] == stored[0]["key_id"]
    audit = live.session("admin").get(f"{live.url}/api/v1/audit", params={"action": "release.sign"})
    assert audit.json()[0]["details"]["key_id"] == stored[0]["key_id"]

    verified = nso_repo(live, "viewer", "release", "verify", "6.2", "--public-key", str(public))
    assert verified.returncode == 0, verified.stderr
    assert f"signed by key {stored[0]['key_id']}: valid" in verified.stdout
    _other, other_public = keygen(live, tmp_path / "keys", "other")
    unsigned = nso_repo(
        live, "viewer", "release", "verify", "6.2", "--public-key", str(other_public)
    )
    assert unsigned.returncode == 1 and "has no signature by key" in unsigned.stderr


def test_check_files_compares_the_manifest_with_local_copies(live, tmp_path: Path) -> None:
    publish_release(live, tmp_path, "6.2", {"router-nc": "1.0.2"})
    private, public = keygen(live, tmp_path / "keys")
    copies = tmp_path / "copies"
    copies.mkdir()
    for path in (tmp_path / "release-6.2").rglob("*"):
        if path.is_file():
            (copies / path.name).write_bytes(path.read_bytes())
    installer = copies / "nso-6.2.linux.x86_64.installer.bin"
    good = installer.read_bytes()
    installer.write_bytes(good + b"x")
    args = ["release", "sign", "6.2", "--key", str(private), "--yes", "--check-files", str(copies)]
    mismatch = nso_repo(live, "operator", *args)
    assert mismatch.returncode == 1
    assert f"{installer} is not the file the manifest pins" in mismatch.stderr
    assert manifest(live, "6.2")["signatures"] == []
    installer.write_bytes(good)
    assert nso_repo(live, "operator", *args).returncode == 0
    checked = nso_repo(
        live, "viewer", "release", "verify", "6.2", "--public-key", str(public),
        "--check-files", str(copies),
    )  # fmt: skip
    assert checked.returncode == 0 and "every file matches" in checked.stdout


def test_the_signature_route_checks_what_it_stores(live, tmp_path: Path) -> None:
    publish_release(live, tmp_path, "6.2", {"router-nc": "1.0.2"})
    data = manifest(live, "6.2")["manifest"]
    key = Ed25519PrivateKey.generate()
    body = sign_body(key, data)

    assert_error(put_signature(live, "6.2", body, role="viewer"), 403, "forbidden")
    assert_error(put_signature(live, "6.2", body, role="uploader"), 403, "forbidden")
    assert_error(put_signature(live, "7.0", body), 404, "not_found")
    over_other = sign_body(key, data.replace("6.2", "6.3"))
    error = assert_error(put_signature(live, "6.2", over_other), 422, "signature_invalid")
    assert "GET /api/v1/releases/6.2/manifest" in error["message"]
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        answer = put_signature(live, "6.2", {**body, "signature": bad})
        assert_error(answer, 422, "validation_failed")
    rsa = generate_private_key(public_exponent=65537, key_size=2048).public_key()
    rsa_pem = rsa.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    error = assert_error(
        put_signature(live, "6.2", {**body, "public_key": rsa_pem}), 422, "validation_failed"
    )
    assert "not an Ed25519 public key" in error["message"]
    assert manifest(live, "6.2")["signatures"] == []

    assert put_signature(live, "6.2", body).status_code == 200
    assert put_signature(live, "6.2", body).status_code == 200  # one per key: replaced
    second = Ed25519PrivateKey.generate()  # a second key, e.g. while keys are rotated
    assert put_signature(live, "6.2", sign_body(second, data), role="admin").status_code == 200
    assert [s["valid"] for s in manifest(live, "6.2")["signatures"]] == [True, True]


@pytest.fixture
def trusted_key(app_overrides: dict[str, Any], tmp_path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "trusted.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    app_overrides["release_public_keys"] = (str(pub),)
    return key


def test_a_server_with_configured_keys_stores_only_their_signatures(
    trusted_key, live, tmp_path: Path
) -> None:
    publish_release(live, tmp_path, "6.2", {"router-nc": "1.0.2"})
    data = manifest(live, "6.2")["manifest"]
    error = assert_error(
        put_signature(live, "6.2", sign_body(Ed25519PrivateKey.generate(), data)),
        422,
        "signature_untrusted",
    )
    assert "NSO_REPO_RELEASE_PUBLIC_KEYS" in error["message"]
    assert put_signature(live, "6.2", sign_body(trusted_key, data)).status_code == 200


def test_a_bad_key_file_stops_the_server_at_start(tmp_path: Path) -> None:
    from repo_server.config import ConfigError, load_settings

    (tmp_path / "bad.pub").write_text("not a key\n")
    for value, says in (
        (str(tmp_path / "missing.pub"), "cannot read"),
        (str(tmp_path / "bad.pub"), "is not a PEM public key"),
    ):
        with pytest.raises(ConfigError, match=says):
            load_settings({"NSO_REPO_RELEASE_PUBLIC_KEYS": value})


def test_prestage_carries_the_signed_manifest_and_a_changed_database_shows(
    live, enrolled: Agent, database_url: str, tmp_path: Path
) -> None:
    pkgs = {"router-nc": "1.0.2", "l3vpn": "2.1"}
    publish_release(live, tmp_path, "6.1", pkgs)
    publish_release(live, tmp_path, "6.2", pkgs)
    data = manifest(live, "6.2")["manifest"]
    key = Ed25519PrivateKey.generate()
    body = sign_body(key, data)
    assert put_signature(live, "6.2", body).status_code == 200
    assert enrolled.heartbeat(healthy_inventory("6.1", pkgs)).status_code == 200

    def prestage() -> dict[str, Any]:
        plan = live.session("operator").get(
            f"{live.url}/api/v1/nodes/edge-1/plan", params={"to": "6.2"}
        )
        assert plan.status_code == 200, plan.text
        return plan.json()["steps"][0]["params"]

    params = prestage()
    assert params["release_manifest"] == data
    assert params["release_signatures"] == [
        {"key_id": manifest(live, "6.2")["signatures"][0]["key_id"], "signature": body["signature"]}
    ]

    # Someone with the database points the release's l3vpn build at other bytes.
    evil = tmp_path / "evil"
    evil.mkdir()
    other = make_package(evil, "l3vpn", "2.2", "6.2")
    assert put_file(live.session("uploader"), live.url, other).status_code == 201
    swap_build(database_url, "ncs-6.2-l3vpn-2.1.tar.gz", other.name)
    assert [s["valid"] for s in manifest(live, "6.2")["signatures"]] == [False]
    params = prestage()
    assert params["release_manifest"] != data  # built from the changed rows...
    assert params["release_signatures"][0]["signature"] == body["signature"]  # ...old signature
    public = tmp_path / "release.pub"
    public.write_text(body["public_key"])
    verify = nso_repo(live, "viewer", "release", "verify", "6.2", "--public-key", str(public))
    assert verify.returncode == 1 and "does not verify" in verify.stderr
    listing = nso_repo(live, "viewer", "release", "ls").stdout
    assert "SIGNATURES DO NOT VERIFY" in listing


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_package_upgrade_carries_a_signed_release_holding_its_builds(
    live, enrolled: Agent, tmp_path: Path
) -> None:
    pkgs = {"router-nc": "1.0.2", "l3vpn": "2.1"}
    publish_release(live, tmp_path, "6.1", {"router-nc": "1.0.2", "l3vpn": "2.0"})
    inventory = healthy_inventory("6.1", {"router-nc": "1.0.2", "l3vpn": "2.0"})
    assert enrolled.heartbeat(inventory).status_code == 200
    publish_release(live, tmp_path, "6.1.1", pkgs)

    def staged_by_a_package_upgrade() -> dict[str, Any]:
        """The params of its prestage_packages; the job then fails there (as an agent with
        a key refuses an unsigned build), which frees the node for the next one."""
        created = live.session("operator").post(
            f"{live.url}/api/v1/nodes/edge-1/package-upgrade",
            json={"packages": ["ncs-6.1-l3vpn-2.1.tar.gz"]},
        )
        assert created.status_code == 202, created.text
        step = enrolled.next()
        assert step is not None and step["name"] == "prestage_packages"
        assert enrolled.report(step["id"], "failed", message="refused").status_code == 200
        return step["params"]

    assert "release_manifest" not in staged_by_a_package_upgrade()  # no signed release has it
    key = Ed25519PrivateKey.generate()
    signature = sign_body(key, manifest(live, "6.1.1")["manifest"])
    assert put_signature(live, "6.1.1", signature).status_code == 200
    params = staged_by_a_package_upgrade()
    assert params["release_manifest"] == manifest(live, "6.1.1")["manifest"]
    assert params["release_signatures"][0]["signature"] == signature["signature"]


# -- end to end: a real agent on a simulated host, with the release manager's key ----------


def trusting_agent(live: Any, host: SimHost, public: Path, tmp_path: Path) -> Runner:
    """An agent enrolled for the host whose configuration names the release manager's key."""
    added = live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": "edge-1"})
    on_host = host.path("/etc/nso-agent/release-signing.pub")
    on_host.parent.mkdir(parents=True, exist_ok=True)
    on_host.write_bytes(public.read_bytes())
    conf = tmp_path / "agent.conf"
    conf.write_text(
        f"[host]\nroot = {host.root}\n[cli]\nhost = {host.address}\nport = {host.cli_port}\n"
        "user = admin\npassword = admin\n"
        "[trust]\nrelease_public_key = /etc/nso-agent/release-signing.pub\n"
    )
    enroll = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(conf), "enroll", "--server", live.url,
         "--token", added.json()["enrollment_token"]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert enroll.returncode == 0, enroll.stderr
    cfg = load(conf)
    assert cfg.release_public_key == "/etc/nso-agent/release-signing.pub"  # kept by enroll
    return Runner(cfg)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_agent_with_the_key_refuses_a_changed_database_and_installs_the_signed_release(
    live, database_url: str, make_host, artifacts: Artifacts, tmp_path: Path
) -> None:
    publish(live, artifacts, "6.1")
    publish(live, artifacts, "6.2")
    service = artifacts.service("6.2")
    private, public = keygen(live, tmp_path / "keys")
    signed = nso_repo(live, "operator", "release", "sign", "6.2", "--key", str(private), "--yes")
    assert signed.returncode == 0, signed.stderr
    host = make_host("6.1")
    runner = trusting_agent(live, host, public, tmp_path)
    assert runner.once(wait=0) is None  # heartbeat: the node's inventory

    # The database is changed after the signing: the service build is other bytes.
    other = artifacts.service("6.2", "1.1")
    assert put_file(live.session("uploader"), live.url, other).status_code == 201
    before = swap_build(database_url, service.name, other.name)
    job = drive_job(live, runner, start_upgrade(live, "6.2"))
    assert (job["state"], job["outcome"]) == ("failed", "unchanged"), job
    prestage = job["steps"][0]
    assert prestage["name"] == "prestage" and prestage["state"] == "failed"
    assert "refusing this upgrade's prestage" in prestage["message"]
    assert "no signature verifies over the manifest" in prestage["message"]
    assert not host.path("/opt/ncs/ncs-6.2").exists()
    assert not host.path(f"/opt/ncs/packages/{service.name}").exists()

    # Put the row back as it was signed: the same agent installs the release.
    engine = create_engine(database_url)
    with engine.begin() as db:
        set_row(db, service.name, before)
    engine.dispose()
    job = drive_job(live, runner, start_upgrade(live, "6.2"))
    assert job["state"] == "succeeded", job
    assert os.readlink(host.path("/opt/ncs/current")) == "ncs-6.2"

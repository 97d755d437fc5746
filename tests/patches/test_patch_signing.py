"""Signed patch bundles: `nso-repo patch sign` signs a bundle's canonical manifest off the
server, the server checks and keeps the signature, and every `apply_patch` step carries
the manifest and signatures an agent that installs only signed files checks
(tests/agent/test_patch_steps.py runs that agent)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from repo_server.catalog import release_manifest as signing
from tests.api.helpers import assert_error
from tests.patches.test_rollout_api import BUNDLE, MODULES, node_on, rollout
from tests.patches.test_rollout_api import bundle as bundle_fixture
from tests.upgrades.test_cli_fleet import nso_repo
from tests.upgrades.test_release_signatures import keygen

MANIFEST = f"/api/v1/patches/{BUNDLE}/manifest"
signed_bundle = bundle_fixture  # the bundle in the catalog, to be signed
SIGNATURE = f"/api/v1/patches/{BUNDLE}/signature"


def _manifest(live: Any, role: str = "viewer") -> dict[str, Any]:
    answer = live.session(role).get(f"{live.url}{MANIFEST}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _put(live: Any, role: str, key: Ed25519PrivateKey, data: bytes) -> Any:
    return live.session(role).put(
        f"{live.url}{SIGNATURE}",
        json={
            "signature": signing.sign(key, data),
            "public_key": signing.public_pem(key.public_key()),
        },
    )


def test_the_manifest_pins_the_bundle_and_only_a_signature_over_it_is_kept(
    live, signed_bundle: dict[str, Any]
) -> None:
    shown = _manifest(live)
    manifest = json.loads(shown["manifest"])
    assert signing.canonical_bytes(manifest).decode("ascii") == shown["manifest"]
    assert manifest == {
        "format": "nso-fleet-patch/1",
        "bundle": {
            "filename": BUNDLE,
            "sha256": signed_bundle["sha256"],
            "size": signed_bundle["size"],
        },
        "nso_version": "6.2",
        "patch_id": "CSCfix1",
        "modules": sorted(MODULES),
    }
    assert shown["signatures"] == []
    key = Ed25519PrivateKey.generate()
    data = shown["manifest"].encode("ascii")

    # Over other bytes (a release's manifest, a tampered one): refused, nothing kept.
    other = _put(live, "operator", key, data.replace(b"CSCfix1", b"CSCfix9"))
    assert_error(other, 422, "signature_invalid")
    assert _put(live, "viewer", key, data).status_code == 403
    missing = live.session("operator").put(
        f"{live.url}/api/v1/patches/nso-6.2-patch-CSCnone.tar.gz/signature",
        json={
            "signature": signing.sign(key, data),
            "public_key": signing.public_pem(key.public_key()),
        },
    )
    assert missing.status_code == 404
    assert _manifest(live)["signatures"] == []

    signed = _put(live, "operator", key, data)
    assert signed.status_code == 200, signed.text
    (kept,) = _manifest(live)["signatures"]
    assert kept["key_id"] == signing.key_id(key.public_key()) and kept["valid"] is True
    audit = live.session("admin").get(f"{live.url}/api/v1/audit", params={"action": "patch.sign"})
    assert audit.json()[0]["target"] == f"artifact:{BUNDLE}"
    # Signing again with the same key replaces its signature: one per key.
    assert _put(live, "admin", key, data).status_code == 200
    assert len(_manifest(live)["signatures"]) == 1


def test_a_rollout_hands_the_signed_manifest_to_each_apply_step(
    live, signed_bundle: dict[str, Any], tmp_path
) -> None:
    agent = node_on(live, "edge-1", "6.2")
    private, _public = keygen(live, tmp_path)
    refused = nso_repo(live, "operator", "patch", "sign", BUNDLE, "--key", str(private))
    assert refused.returncode != 0  # it asks first, and got no answer
    assert _manifest(live)["signatures"] == []
    signed = nso_repo(live, "operator", "patch", "sign", BUNDLE, "--key", str(private), "--yes")
    assert signed.returncode == 0, signed.stderr
    assert "patch CSCfix1 for NSO 6.2" in signed.stdout

    assert rollout(live, nodes=["edge-1"]).status_code == 201
    step = agent.next()
    assert step is not None and step["name"] == "apply_patch"
    params = step["params"]
    assert params["patch_manifest"] == _manifest(live)["manifest"]
    (offered,) = params["patch_signatures"]
    key = _public_key(private)
    key.verify(base64.b64decode(offered["signature"]), params["patch_manifest"].encode("ascii"))


def _public_key(private: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization

    loaded = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    return loaded.public_key()

"""Signed releases on the agent: with ``[trust] release_public_key`` it installs only what the
release manager signed, whatever the server (or whoever writes its database) sends.

Each test plays a compromised server: it hands out ``prestage`` with params of its choosing
and serves the bytes they name. The manifest is built and signed here as `nso-repo release
sign` does (sorted-key JSON, Ed25519), without importing the server: this file runs on
Python 3.9 with the agent's dependencies only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any, Optional

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import Config, load
from agent.errors import ConfigError, StepFailed

from .conftest import agent_config
from .test_upgrade_steps import plan, refs

KEY_ON_HOST = "/etc/nso-agent/release-signing.pub"


def key_id(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def manifest_text(p: dict[str, Any]) -> str:
    """The canonical manifest of the release ``p`` stages (docs/signed-releases.md)."""

    def entry(ref: dict[str, Any]) -> dict[str, Any]:
        return {"filename": ref["filename"], "sha256": ref["sha256"], "size": ref["size"]}

    manifest = {
        "format": "nso-fleet-release/1",
        "nso_version": p["target_version"],
        "installer": entry(p["installer"]),
        "packages": sorted((entry(r) for r in p["packages"]), key=lambda e: e["filename"]),
        "requirements": {},
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"))


def signed(p: dict[str, Any], key: Ed25519PrivateKey, text: Optional[str] = None) -> dict:
    """``p`` carrying a manifest (``text``, else the one of ``p``) signed with ``key``."""
    text = text or manifest_text(p)
    signature = base64.b64encode(key.sign(text.encode("ascii"))).decode()
    return {
        **p,
        "release_manifest": text,
        "release_signatures": [{"key_id": key_id(key), "signature": signature}],
    }


@pytest.fixture
def release_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def trusting(host: Any, key: Ed25519PrivateKey) -> Config:
    """The agent's configuration with the release manager's public key on the host."""
    pub = host.path(KEY_ON_HOST)
    pub.parent.mkdir(parents=True, exist_ok=True)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return agent_config(host, release_public_key=KEY_ON_HOST)


def swapped_package(file_server: Any, artifacts: Any, p: dict[str, Any]) -> dict:
    """What a compromised server or database hands out: the l3vpn build's row points at
    the attacker's bytes (another build, under the signed file name), with the sha256 and
    size of those bytes, so that a download verifies. The signed file stays served too."""
    real = p["packages"][1]
    evil = file_server.dir / "evil" / real["filename"]
    evil.parent.mkdir(exist_ok=True)
    shutil.copyfile(artifacts.service("6.2", "1.1"), evil)
    data = evil.read_bytes()
    ref = {
        "filename": real["filename"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "url": f"/files/evil/{real['filename']}",
    }
    assert ref["sha256"] != real["sha256"]
    return {**p, "packages": [p["packages"][0], ref]}


@dataclass
class Trusting:
    """A 6.1 host whose agent holds the release manager's key, the 6.2 release's prestage
    params as the server would send them (unsigned), and the driver of that agent."""

    host: Any
    file_server: Any
    params: dict[str, Any]
    drive: Any
    key: Ed25519PrivateKey

    def signed_params(self) -> dict[str, Any]:
        return signed(self.params, self.key)

    def refused(self, params: dict[str, Any], step: str = "prestage") -> str:
        """The message the step fails with; it failed before a byte was fetched."""
        self.file_server.requests.clear()
        with pytest.raises(StepFailed) as refused:
            self.drive.step(step, params)
        assert self.file_server.requests == []
        assert not self.host.path("/opt/ncs/ncs-6.2").exists()
        for ref in self.params["packages"]:
            assert not self.host.path(f"/opt/ncs/packages/{ref['filename']}").exists()
        return str(refused.value)


@pytest.fixture
def trusting_host(make_host, artifacts, file_server, driver, release_key) -> Trusting:
    host = make_host("6.1", start=False)
    params = plan(file_server, artifacts)
    drive = driver(trusting(host, release_key), file_server)
    return Trusting(host, file_server, params, drive, release_key)


def with_manifest(params: dict[str, Any], signed_params: dict[str, Any]) -> dict[str, Any]:
    """``params`` carrying the manifest and signatures of ``signed_params``."""
    carried = ("release_manifest", "release_signatures")
    return {**params, **{k: signed_params[k] for k in carried}}


def test_a_signed_release_is_installed(trusting_host):
    result = trusting_host.drive.step("prestage", trusting_host.signed_params())
    assert result["installed_release"] == "6.2"
    assert trusting_host.host.path("/opt/ncs/ncs-6.2/bin/ncs").exists()


def test_a_package_swapped_in_the_database_is_refused_before_any_download(trusting_host, artifacts):
    p = trusting_host.params
    attack = swapped_package(trusting_host.file_server, artifacts, p)
    message = trusting_host.refused(with_manifest(attack, trusting_host.signed_params()))
    real, evil = p["packages"][1], attack["packages"][1]
    assert f"package {real['filename']}: sha256 {evil['sha256']} in the step" in message
    assert f"{real['sha256']} signed" in message
    assert "Nothing was downloaded" in message and "nso-repo release verify 6.2" in message


def test_without_a_key_the_agent_behaves_as_before(make_host, artifacts, file_server, driver):
    """The threat the key closes: an agent without one installs whatever verifies against
    the sha256 it is sent, the attacker's bytes included; unsigned steps run as they did."""
    host = make_host("6.1", start=False)
    attack = swapped_package(file_server, artifacts, plan(file_server, artifacts))
    drive = driver(agent_config(host), file_server)
    assert drive.step("prestage", attack)["installed_release"] == "6.2"
    stored = host.path(f"/opt/ncs/packages/{attack['packages'][1]['filename']}")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == attack["packages"][1]["sha256"]


def test_a_manifest_rewritten_to_match_is_refused(trusting_host, artifacts):
    """The database is rewritten whole: the manifest the server builds now names the
    attacker's file, but the stored signature was made over the release as it was."""
    attack = swapped_package(trusting_host.file_server, artifacts, trusting_host.params)
    attack = with_manifest(attack, trusting_host.signed_params())
    attack["release_manifest"] = manifest_text(attack)
    assert "no signature verifies over the manifest" in trusting_host.refused(attack)


def test_a_manifest_signed_by_another_key_is_refused(trusting_host, artifacts):
    attacker = Ed25519PrivateKey.generate()
    attack = swapped_package(trusting_host.file_server, artifacts, trusting_host.params)
    message = trusting_host.refused(signed(attack, attacker))
    assert f"signed only by key(s) {key_id(attacker)[:16]}" in message
    assert f"signed by key {key_id(trusting_host.key)[:16]}" in message


def test_an_unsigned_release_is_refused(trusting_host):
    p = trusting_host.params
    for unsigned in (p, {**p, "release_manifest": manifest_text(p), "release_signatures": []}):
        message = trusting_host.refused(unsigned)
        assert "nso-repo release sign 6.2 --key PRIVATE.pem" in message


def test_target_version_and_installer_must_be_the_signed_ones(trusting_host, artifacts):
    p, good = trusting_host.params, trusting_host.signed_params()
    other = refs(trusting_host.file_server, [artifacts.installer("6.3")])[0]
    message = trusting_host.refused({**good, "target_version": "6.3", "installer": other})
    assert "target version 6.3 is not the signed 6.2" in message
    assert f"installer {p['installer']['filename']}: file name {other['filename']}" in message
    assert f"sha256 {other['sha256']} in the step, {p['installer']['sha256']} signed" in message
    # A package the release does not have at all; a size that differs.
    extra = refs(trusting_host.file_server, [artifacts.service("6.2", "1.1", name="extra")])[0]
    resized = {**p["packages"][0], "size": p["packages"][0]["size"] + 1}
    message = trusting_host.refused({**good, "packages": [resized, extra]})
    assert f"package {extra['filename']} is not in the signed release 6.2" in message
    assert f"size {resized['size']} in the step, {resized['size'] - 1} signed" in message


def test_a_package_upgrade_takes_only_builds_of_a_signed_release(trusting_host, artifacts):
    p, release = trusting_host.params, trusting_host.signed_params()
    builds = [{**ref, "name": "l3vpn", "version": "1.0"} for ref in p["packages"][1:]]
    message = trusting_host.refused({"packages": builds}, "prestage_packages")
    assert "put these builds in a release signed" in message
    attack = swapped_package(trusting_host.file_server, artifacts, p)["packages"][1:]
    message = trusting_host.refused(
        with_manifest({"packages": attack}, release), "prestage_packages"
    )
    assert "sha256" in message and "in the step" in message
    staged = trusting_host.drive.step(
        "prestage_packages", with_manifest({"packages": builds}, release)
    )
    assert staged == {"staged_packages": [builds[0]["filename"]]}


def test_an_unreadable_key_under_root_slash_names_only_the_option(tmp_path):
    """With [host] root = / the option's path is where the key was looked for: no "under
    [host] root" aside then."""
    conf = tmp_path / "agent.conf"
    Config(root="/", release_public_key=str(tmp_path / "missing.pub")).save(conf)
    with pytest.raises(ConfigError, match="cannot read it") as refused:
        load(conf)
    assert "under [host] root" not in str(refused.value)
    assert "cannot read it (No such file or directory)" in str(refused.value)


def test_the_key_is_read_at_start_and_kept_by_enroll(make_host, release_key, tmp_path):
    host = make_host("6.1", start=False)
    conf = tmp_path / "agent.conf"
    trusting(host, release_key).save(conf)
    cfg = load(conf)  # enroll writes the configuration back: the option must survive
    assert cfg.release_public_key == KEY_ON_HOST
    os.unlink(host.path(KEY_ON_HOST))
    with pytest.raises(ConfigError, match=r"\[trust\] release_public_key .* cannot read it") as e:
        load(conf)
    # Read under [host] root, where someone who typed the path may not look: said.
    assert f"at {host.path(KEY_ON_HOST)}, under [host] root" in str(e.value)
    host.path(KEY_ON_HOST).write_text("not a key\n")
    with pytest.raises(ConfigError, match="is not a PEM public key"):
        load(conf)

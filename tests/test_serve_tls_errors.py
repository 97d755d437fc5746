"""`nso-repo serve --tls-cert/--tls-key` says which file is wrong and what to do about it
(issue 8 review): a missing file was "No such file or directory" without its name, and a file
that holds no PEM, or an encrypted key, was OpenSSL's "[SSL] PEM lib (_ssl.c:3926)"."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from repo_server.cli import cli


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls-errors")
    issued = trustme.CA().issue_cert("localhost")
    cert, key = folder / "server.pem", folder / "server.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def _serve(tmp_path: Path, cert: Path, key: Path) -> str:
    result = CliRunner().invoke(
        cli,
        [
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
    )
    assert result.exit_code == 1, result.output
    return result.output


def test_a_missing_file_is_named(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    cert, _key = pair
    output = _serve(tmp_path, cert, tmp_path / "nope.key")
    assert f"cannot read --tls-key {tmp_path / 'nope.key'}: No such file" in output, output


def test_a_file_without_pem_says_which_and_how_to_convert(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    cert, key = pair
    der = tmp_path / "server.der"
    der.write_bytes(b"\x30\x82\x01\x0a" + b"\x00" * 64)
    output = _serve(tmp_path, der, key)
    assert f"--tls-cert {der} holds no PEM certificate" in output, output
    assert "openssl x509 -in" in output
    # The two swapped: the key file named as the certificate.
    output = _serve(tmp_path, key, cert)
    assert f"--tls-cert {key} holds no PEM certificate" in output, output


def test_an_encrypted_key_says_so(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    cert, key = pair
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    output = _serve(tmp_path, cert, encrypted)
    assert "PEM lib" not in output, output
    assert "encrypted with a passphrase" in output and "openssl pkey -in" in output, output


def test_a_key_of_another_certificate_is_named(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    cert, _key = pair
    other = tmp_path / "other.key"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other))
    output = _serve(tmp_path, cert, other)
    assert f"the key in {other} is not the key of the certificate in {cert}" in output, output

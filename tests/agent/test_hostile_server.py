"""A second, hostile read of the agent side (issue 8 review): what a server that is not ours
(or a proxy, or a compromised server) can send, and what reaches the host.

Each test plays that server with crafted answers over real HTTP, or hands crafted step
params to the real step functions, and checks the agent refuses before anything on the host
changed, with a message that says what was wrong and what to do. Nothing is mocked.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli import main as agent_cli
from agent.client import MAX_ANSWER_BYTES, Backoff, ServerClient
from agent.config import Config, load
from agent.download import Artifact, Downloader
from agent.errors import ConfigError, DownloadError, ServerError, StepFailed
from agent.runner import Runner

from .test_trust import bare_config


class CraftedServer:
    """Answers every request with ``answers[path]`` (status, body), else 404; records the
    requests. Loopback http, as the tests' other servers."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def answer(self) -> None:
                server.requests.append(f"{self.command} {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body = server.answers.get(self.path.split("?")[0], (404, b""))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def next_answers(self, body: bytes) -> None:
        self.answers["/api/v1/agent/next"] = (200, body)
        self.answers["/api/v1/agent/heartbeat"] = (200, b"{}")


@pytest.fixture
def crafted() -> Iterator[CraftedServer]:
    server = CraftedServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def enrolled(tmp_path: Path, url: str) -> Config:
    cfg = Config(server_url=url, root=str(tmp_path / "root"), poll_wait=0)
    cfg.state_path.mkdir(parents=True)
    cfg.token_file.write_text("nsn_node_token_for_tests\n")
    return cfg


def quick_client(url: str) -> ServerClient:
    return ServerClient(url, "nsn_node_token_for_tests", backoff=Backoff(tries=1))


STEP = {"id": 5, "job_id": 2, "attempt": 1, "name": "stop", "params": {}, "context": {}}

# What a server that is not ours answers `next` with: not JSON, JSON the protocol never
# sends, and steps whose fields have the wrong types. Before: ValueError, RecursionError,
# KeyError, TypeError or AttributeError out of the client, which stopped the agent's service.
NOT_AN_ANSWER = {
    "html": b"<html>captive portal</html>",
    "nan": b'{"step": {"id": NaN, "name": "stop"}}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "huge integer": b'{"step": {"id": ' + b"9" * 5000 + b', "name": "stop"}}',
    "a list": b"[1, 2]",
    "step as text": b'{"step": "stop"}',
    "id as text": json.dumps({"step": {**STEP, "id": "5; rm -rf /"}}).encode(),
    "id too large": json.dumps({"step": {**STEP, "id": 2**70}}).encode(),
    "id a boolean": json.dumps({"step": {**STEP, "id": True}}).encode(),
    "no name": json.dumps({"step": {"id": 5}}).encode(),
    "name not text": json.dumps({"step": {**STEP, "name": ["stop"]}}).encode(),
    "params as text": json.dumps({"step": {**STEP, "params": "abc"}}).encode(),
    "context a list": json.dumps({"step": {**STEP, "context": [1]}}).encode(),
    "job_id as text": json.dumps({"step": {**STEP, "job_id": "x"}}).encode(),
    "job.id as text": json.dumps({"step": {**STEP, "job": {"id": "x"}}}).encode(),
}


@pytest.mark.parametrize("body", NOT_AN_ANSWER.values(), ids=NOT_AN_ANSWER.keys())
def test_an_answer_that_is_not_the_servers_is_a_clear_error_and_nothing_runs(
    tmp_path, crafted, body
):
    crafted.next_answers(body)
    runner = Runner(enrolled(tmp_path, crafted.url), client=quick_client(crafted.url))
    with pytest.raises(ServerError) as refused:
        runner.once(wait=0)
    message = str(refused.value)
    assert "[server] url" in message, message  # what to check
    assert "nothing of it was run" in message or "not" in message
    assert not any(r.startswith("POST /api/v1/agent/steps/") for r in crafted.requests)
    assert runner.journal.entry is None


def test_the_service_keeps_serving_after_an_answer_it_cannot_read(tmp_path, crafted):
    """``run`` logged the ServerError and polled again; before, the ValueError of a non-JSON
    answer ended the service."""
    crafted.next_answers(b"<html>captive portal</html>")
    runner = Runner(enrolled(tmp_path, crafted.url), client=quick_client(crafted.url))
    runner.sleep = lambda _seconds: None
    polls = iter(range(3))
    runner.run_forever(lambda: next(polls, None) is None)
    assert sum(r.startswith("GET /api/v1/agent/next") for r in crafted.requests) == 3


def test_an_answer_longer_than_any_of_the_servers_is_not_read(tmp_path, crafted):
    crafted.next_answers(b" " * (MAX_ANSWER_BYTES + 10) + b"{}")
    with pytest.raises(ServerError, match=f"longer than {MAX_ANSWER_BYTES} bytes"):
        quick_client(crafted.url).next_step(0)


@pytest.mark.parametrize(
    "answer",
    [{"token": {"a": 1}}, {"token": "nsn_x\r\nX-Injected: 1"}, {"token": "short"}, ["x"]],
    ids=["object", "header injection", "too short", "a list"],
)
def test_enroll_writes_no_token_the_server_did_not_send_properly(tmp_path, crafted, answer):
    crafted.answers["/api/v1/agent/enroll"] = (200, json.dumps(answer).encode())
    conf = tmp_path / "agent.conf"
    Config(root=str(tmp_path / "root")).save(conf)
    done = CliRunner().invoke(
        agent_cli,
        ["--config", str(conf), "enroll", "--server", crafted.url, "--token", "nse_x"],
    )
    assert done.exit_code == 1, done.output
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    assert "--server" in done.output or "[server] url" in done.output, done.output
    assert "Injected" not in done.output
    assert not load(conf).token_file.exists()


# -- step params of the wrong type -----------------------------------------------------------


@pytest.mark.parametrize("value", ["false", "no", 0, 1, [], {}])
@pytest.mark.parametrize(
    "step,name,params",
    [
        ("reload_packages", "allow_data_loss", {}),
        ("recover", "discard_writes", {"source_version": "6.1"}),
        ("recover", "target_started", {"source_version": "6.1"}),
    ],
)
def test_yes_no_params_are_json_booleans(tmp_path, driver, step, name, params, value):
    """``bool("false")`` is True: ``allow_data_loss: "false"`` made the agent run
    ``packages reload force``, and ``discard_writes: "false"`` stopped a running NSO."""
    drive = driver(bare_config(tmp_path))
    with pytest.raises(StepFailed) as refused:
        drive.step(step, {**params, name: value})
    assert f"{name} {value!r} from the server is refused: expected true or false" in str(
        refused.value
    )


@pytest.mark.parametrize("value", ["nan", float("nan"), float("inf"), 1e308, "600", True, 0, -5])
def test_start_timeout_is_a_bounded_number_of_seconds(tmp_path, driver, value):
    """``float("nan")`` and ``1e308`` made a start wait that never ends (or never begins)."""
    drive = driver(bare_config(tmp_path))
    with pytest.raises(StepFailed, match=r"start_timeout .* expected a number of seconds"):
        drive.step("start", {"start_timeout": value})


def test_a_list_param_sent_as_text_is_refused_not_read_letter_by_letter(tmp_path, driver):
    """``remove_elements: "aaa"`` was read as the element names ``a``, ``a``, ``a``."""
    drive = driver(bare_config(tmp_path))
    with pytest.raises(StepFailed, match=r"remove_elements 'aaa' .* expected a list of names"):
        drive.step("ncs_conf", {"remove_elements": "aaa"})
    with pytest.raises(StepFailed, match=r"packages 'ncs-6\.1-a-1\.0\.tar\.gz' .* expected a list"):
        drive.step("install_packages", {"packages": "ncs-6.1-a-1.0.tar.gz"})


def test_the_agents_own_folders_are_named_in_ascii_digits_only(tmp_path, driver):
    """``\\d`` matched any Unicode digit: ``nso-agent-job-\u0663`` passed as a job folder."""
    cfg = bare_config(tmp_path)
    look_alike = "/var/opt/ncs/backups/nso-agent-job-\u0663/package-links"
    (cfg.paths.path(look_alike) / "packages").mkdir(parents=True)
    drive = driver(cfg)
    with pytest.raises(StepFailed, match="is not a place this agent writes"):
        drive.step("recover_packages", {"extra_dir": look_alike})


# -- downloads: the announced size --------------------------------------------------------------


def test_a_download_larger_than_the_free_space_is_refused_before_a_request(tmp_path, file_server):
    """Reading stops at the announced size, but a huge announced size filled the disk
    (NSO's too, on most hosts) before the sha256 could refuse the bytes."""
    # Far past the free space: other tests free and fill the same disk meanwhile.
    free = shutil.disk_usage(tmp_path).free
    artifact = Artifact("ncs-6.2-l3vpn-1.0.tar.gz", "0" * 64, "/files/x", 2 * free + (1 << 40))
    with pytest.raises(DownloadError, match=r"only \d+ are free .* nothing was downloaded"):
        Downloader(file_server.url).fetch(artifact, tmp_path / "dl" / artifact.filename)
    assert file_server.requests == []


# -- signed releases: the key file and the [trust] section -----------------------------------


def pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def conf_with(tmp_path: Path, trust: str) -> Path:
    conf = tmp_path / "agent.conf"
    Config(server_url="https://nso-repo.example.net", root=str(tmp_path / "root")).save(conf)
    with conf.open("a") as fh:
        fh.write(trust)
    return conf


@pytest.mark.parametrize(
    "trust,said",
    [
        ("[trust]\nrelease_public_keys = /k.pub\n", r"\[trust\] release_public_keys: unknown"),
        ("[trust]\nrelease_public_key =\n", r"\[trust\] release_public_key is empty"),
        ("[Trust]\nrelease_public_key = /k.pub\n", r"unknown section\(s\) \[Trust\]"),
        ("[trusts]\nrelease_public_key = /k.pub\n", r"unknown section\(s\) \[trusts\]"),
    ],
    ids=["misspelled option", "empty key", "section case", "misspelled section"],
)
def test_a_trust_setting_the_agent_cannot_read_stops_it(tmp_path, trust, said):
    """Before, each of these left the agent without a key: it installed unsigned releases
    while its operator believed it checked signatures."""
    with pytest.raises(ConfigError, match=said):
        load(conf_with(tmp_path, trust))


def test_a_key_file_with_two_keys_stops_the_agent(tmp_path):
    """The PEM reader took the first of two keys and ignored the second without a word."""
    key = tmp_path / "root" / "k.pub"
    key.parent.mkdir(parents=True)
    key.write_bytes(pem(Ed25519PrivateKey.generate()) + pem(Ed25519PrivateKey.generate()))
    with pytest.raises(ConfigError, match="more than one PEM block"):
        load(conf_with(tmp_path, "[trust]\nrelease_public_key = /k.pub\n"))


@pytest.mark.parametrize("signatures", [5, "abc", {"key_id": "x"}, [5, None, "x"]])
def test_malformed_signatures_are_an_unsigned_release_not_a_crash(tmp_path, driver, signatures):
    cfg = bare_config(tmp_path)
    key = cfg.paths.path("/etc/nso-agent/release.pub")
    key.parent.mkdir(parents=True)
    key.write_bytes(pem(Ed25519PrivateKey.generate()))
    cfg.release_public_key = "/etc/nso-agent/release.pub"
    drive = driver(cfg)
    params = {
        "target_version": "6.2",
        "packages": [],
        "release_manifest": '{"format":"nso-fleet-release/1"}',
        "release_signatures": signatures,
    }
    with pytest.raises(StepFailed, match="refusing this upgrade's prestage: the release is not"):
        drive.step("prestage", params)


@pytest.mark.parametrize(
    "header, seconds",
    [
        (None, 0),
        ("", 0),
        ("10", 10),
        ("0", 1),
        ("99999999999", 0),
        ("3600", 60),
        ("-5", 0),
        ("1.5", 0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", 0),
        ("\u0661\u0660", 0),  # Arabic-Indic "10"
    ],
)
def test_a_retry_after_is_bounded_before_the_agent_sleeps_on_it(header, seconds):
    # tests/upgrades/test_long_poll_limit.py has the agent sleep on a real server's header.
    from agent.client import retry_seconds

    assert retry_seconds(header) == seconds


def test_a_kept_final_report_the_server_cannot_take_yet_is_retried_not_fatal(tmp_path, crafted):
    """Restarted with a final report a crash kept from the server, the service finds the
    server answering 503: it keeps the report and tries again, instead of exiting (and
    being restarted by systemd, in a loop) with a traceback; it asks for no new work
    before the report is in."""
    runner = Runner(enrolled(tmp_path, crafted.url), client=quick_client(crafted.url))
    runner.sleep = lambda _seconds: None
    step = {"id": 41, "job_id": 7, "attempt": 1, "name": "backup"}
    entry = runner.journal.begin(step)
    entry.final_report = {"report_id": entry.report_id("final"), "state": "succeeded"}
    runner.journal.save()
    crafted.answers["/api/v1/agent/steps/41"] = (503, b"{}")
    polls = iter(range(3))
    runner.run_forever(lambda: next(polls, None) is None)
    sent = [r for r in crafted.requests if r.startswith("POST /api/v1/agent/steps/41")]
    assert len(sent) >= 3  # tried again at each turn of the loop
    assert not any(r.startswith("GET /api/v1/agent/next") for r in crafted.requests)
    kept = runner.journal.entry
    assert kept is not None and kept.final_report is not None

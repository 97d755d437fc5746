"""`nso-repo demo`: the whole product on one machine in under a minute. A server on SQLite
and local disk, two releases with their packages, and a simulated fleet (two single nodes
and a two-node HA group, each host on its own loopback address with a real agent); then it
upgrades the first node, prints the console's URL and an admin token, and waits. Ctrl-C
stops every process and removes what it made (unless --dir kept it).

It drives only the public commands and the HTTP API, as an operator would: `nso-sim` makes
the installers, packages and hosts, `nso-agent` enrolls and runs the agents."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import click
import requests

from repo_server.client import ApiError, RepoClient, sha256_file

RELEASES = ("6.1", "6.2")
# Package builds per release branch: a NED with devices, and a service package.
PACKAGES = (("router-nc", "1.0.2", ("--ned-id", "router-nc-1.0")), ("l3vpn", "1.0", ()))
SINGLE_NODES = ("edge-1", "edge-2")
PAIR = (("core-a", "n1", "primary"), ("core-b", "n2", "secondary:failover"))
READY_SECONDS = 90


@dataclass
class Host:
    node: str
    root: Path
    address: str
    cli_port: int


# Settings a shell may carry that would point the demo's processes at a real deployment
# (its database, its bucket, its address): the demo's children never see them.
OWN_PREFIXES = ("NSO_REPO_", "NSO_AGENT_", "NSO_SIM_", "PROMETHEUS_MULTIPROC_DIR")


def demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}


@dataclass
class Demo:
    folder: Path
    time_scale: float = 0.05
    python: str = sys.executable
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)

    def run(self, *args: str) -> str:
        # Our own interpreter and modules, with arguments we made: no shell, no user input.
        done = subprocess.run(  # nosec B603
            args, capture_output=True, text=True, timeout=120, env=demo_env()
        )
        if done.returncode != 0:
            raise click.ClickException(
                f"{' '.join(args[:4])} ... failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-800:]}"
            )
        return done.stdout.strip()

    def sim(self, *args: str) -> str:
        return self.run(self.python, "-m", "nso_sim", *args)

    def start(self, log: str, *args: str) -> subprocess.Popen[bytes]:
        # Our own interpreter and modules, with arguments we made.
        with open(self.folder / log, "ab") as out:
            process = subprocess.Popen(  # nosec B603
                [self.python, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=demo_env(),
            )
        self.processes.append(process)
        return process

    def stop(self) -> bool:
        """Agents and the server first (each process group: what they spawned in it goes
        with them), then every host through its init script; True when all stopped."""
        for process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
        # Every host is stopped, whichever failed before it.
        return all([self._stop_host(host) for host in self.hosts])

    def _stop_host(self, host: Host) -> bool:
        """`host stop` until the host's CLI port is closed: a start an agent had begun may
        bring the daemon up after a first stop (the init script's stop says 0 either way)."""
        for _ in range(3):
            with suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(  # nosec B603 - our own simulator, a folder we made
                    [self.python, "-m", "nso_sim", "host", "stop", "--root", str(host.root)],
                    capture_output=True,
                    timeout=120,
                    env=demo_env(),
                )
            time.sleep(0.5)
            if not _listening(host.address, host.cli_port):
                return True
        return False


def _listening(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address, port)) == 0


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def free_port(*addresses: str) -> int:
    """A port free on every address (an HA group's members share theirs)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        if all(_free(a, port) for a in addresses[1:]):
            return port
    raise click.ClickException(f"no port free on every one of {', '.join(addresses)}")


def _free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _wait(what: str, check: Any, seconds: float = READY_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = check()
        except (requests.RequestException, ApiError):
            found = None
        if found:
            return found
        time.sleep(0.3)
    raise click.ClickException(f"the demo gave up waiting for {what} after {seconds:.0f} s")


def _artifacts(demo: Demo) -> list[Path]:
    out = demo.folder / "artifacts"
    for release in RELEASES:
        demo.sim("make-installer", release, "--out", str(out))
        for name, version, extra in PACKAGES:
            demo.sim("make-package", name, version, "--nso", release, *extra, "--out", str(out))
    return sorted(p for p in out.iterdir() if p.is_file())


def _publish(client: RepoClient, files: list[Path]) -> None:
    for path in files:
        client.upload(path, sha256=sha256_file(path))
    for release in RELEASES:
        client.call(
            "POST",
            "/api/v1/releases",
            json={
                "nso_version": release,
                "installer": f"nso-{release}.linux.x86_64.installer.bin",
                "packages": [f"ncs-{release}-{n}-{v}.tar.gz" for n, v, _ in PACKAGES],
                "notes": "made by nso-repo demo",
            },
        )


def _host_args(demo: Demo, node: str, address: str, extra: tuple[str, ...]) -> Host:
    root = demo.folder / "hosts" / node
    cli_port = free_port(address)
    artifacts = demo.folder / "artifacts"
    packages = [f"ncs-6.1-{n}-{v}.tar.gz" for n, v, _ in PACKAGES]
    demo.sim(
        *("host", "create", "--root", str(root), "--version", "6.1", "--address", address),
        *("--cli-port", str(cli_port), "--ipc-port", str(free_port(address))),
        *("--time-scale", str(demo.time_scale)),
        *("--installer", str(artifacts / "nso-6.1.linux.x86_64.installer.bin")),
        *(arg for p in packages for arg in ("--package", str(artifacts / p))),
        *extra,
    )
    host = Host(node, root, address, cli_port)
    demo.hosts.append(host)
    return host


def _hosts(demo: Demo, first: str) -> list[Host]:
    base = ipaddress.IPv4Address(first)
    addresses = [str(base + i) for i in range(len(SINGLE_NODES) + len(PAIR))]
    hosts = [
        _host_args(demo, node, address, ("--ha-port", str(free_port(address))))
        for node, address in zip(SINGLE_NODES, addresses)
    ]
    pair = addresses[len(SINGLE_NODES) :]
    ha_port = free_port(*pair)
    spec = [f"--ha-node={ha_id}={a}:{role}" for (_, ha_id, role), a in zip(PAIR, pair)]
    for (node, ha_id, _), address in zip(PAIR, pair):
        extra = [*spec, "--ha-id", ha_id, "--ha-port", str(ha_port)]
        if len(hosts) > len(SINGLE_NODES):  # HA members share the first one's keys
            keys = hosts[len(SINGLE_NODES)].root / "etc/ncs/ncs.crypto_keys"
            extra += ["--crypto-keys", str(keys)]
        hosts.append(_host_args(demo, node, address, tuple(extra)))
    for host in hosts:
        demo.sim("host", "start", "--root", str(host.root))
    return hosts


AGENT_CONF = """[host]
root = {root}
[cli]
host = {address}
port = {port}
user = admin
password = admin
[agent]
poll_wait = 5
heartbeat_interval = 2
"""


def _agents(demo: Demo, client: RepoClient, url: str, hosts: list[Host]) -> None:
    for host in hosts:
        token = client.call("POST", "/api/v1/nodes", json={"name": host.node})["enrollment_token"]
        conf = demo.folder / "agents" / host.node / "agent.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(AGENT_CONF.format(root=host.root, address=host.address, port=host.cli_port))
        demo.run(
            demo.python,
            *("-m", "agent", "--config", str(conf), "enroll", "--server", url, "--token", token),
        )
        demo.start(f"agents/{host.node}/agent.log", "-m", "agent", "--config", str(conf), "run")


def _reported(client: RepoClient, node: str) -> bool:
    return bool(client.call("GET", f"/api/v1/nodes/{node}").get("running_version"))


def _pair_whole(client: RepoClient) -> bool:
    ha = (client.call("GET", f"/api/v1/nodes/{PAIR[0][0]}").get("inventory") or {}).get("ha") or {}
    return PAIR[1][1] in (ha.get("connected_secondaries") or [])


@contextmanager
def _folder(kept: Optional[Path]) -> Iterator[tuple[Path, list[bool]]]:
    """The demo's folder; a temporary one is removed at the end unless a host may still
    run from it (its stop failed): then it is kept, and named."""
    if kept is not None:
        kept.mkdir(parents=True, exist_ok=True)
        yield kept, [True]
        return
    made = Path(tempfile.mkdtemp(prefix="nso-repo-demo-"))
    stopped = [True]
    try:
        yield made, stopped
    finally:
        if stopped[0]:
            shutil.rmtree(made, ignore_errors=True)
        else:
            with suppress(OSError):
                click.echo(f"demo: a host may still run: its files stay in {made}", err=True)


@click.command("demo")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8420,
    show_default=True,
    help="The server's port on 127.0.0.1 (0: any free port).",
)
@click.option(
    "--first-address",
    default="127.0.1.1",
    show_default=True,
    help="The simulated hosts take this loopback address and the next three.",
)
@click.option(
    "--dir",
    "kept",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep everything in this folder (default: a temporary one, removed at exit).",
)
@click.option("--no-upgrade", is_flag=True, help="Do not start the first node's upgrade.")
@click.option(
    "--time-scale",
    type=click.FloatRange(0.001, 1),
    default=0.05,
    show_default=True,
    help="How fast the simulated NSO runs (1: real NSO's timings).",
)
def demo(
    port: int, first_address: str, kept: Optional[Path], no_upgrade: bool, time_scale: float
) -> None:
    """Start a server and a simulated fleet, upgrade a node, and print the console's URL.

    Two single NSO 6.1 nodes and a 6.1 HA pair, each with its agent; releases 6.1 and 6.2
    with their packages in the catalog. Ctrl-C stops and removes everything."""
    try:
        address = ipaddress.IPv4Address(first_address)
    except ValueError:
        raise click.BadParameter("an IPv4 loopback address", param_hint="--first-address") from None
    last = int(address) + len(SINGLE_NODES) + len(PAIR) - 1
    if not address.is_loopback or not ipaddress.IPv4Address(last).is_loopback:
        raise click.BadParameter(
            "the four simulated hosts bind this loopback address and the next three (127.x.y.z)",
            param_hint="--first-address",
        )
    port = port or free_port("127.0.0.1")
    if not _free("127.0.0.1", port):
        raise click.ClickException(f"port {port} is taken: give another with --port (0: any)")
    _on_signals()
    with _folder(kept) as (folder, stopped):
        session = Demo(folder, time_scale)
        try:
            _run(session, port, first_address, no_upgrade)
        except ApiError as refused:
            raise click.ClickException(f"the server refused a demo step: {refused}") from None
        finally:
            # A second Ctrl-C would leave hosts running: the stop is bounded, let it end.
            # Nothing is printed first: after a SIGHUP the terminal is gone, and a failed
            # write must not skip the stop.
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            stopped[0] = False
            stopped[0] = session.stop()


# Ctrl-C, a stop, and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_signals() -> None:
    """Any stop signal as Ctrl-C: it ends the wait, or the setup (what was made goes)."""

    def asked(_signum: int, _frame: Any) -> None:
        # One is enough: a second one must not cut the stop short.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        signal.signal(signum, asked)


def _run(session: Demo, port: int, first_address: str, no_upgrade: bool) -> None:
    url = f"http://127.0.0.1:{port}"
    say = lambda text: click.echo(f"demo: {text}", err=True)  # noqa: E731
    data = session.folder / "server"
    say(f"starting the server on {url} (data in {data})")
    server = session.start(
        "server.log",
        *("-m", "repo_server.cli", "serve", "--data-dir", str(data)),
        *("--host", "127.0.0.1", "--port", str(port)),
    )

    def ready() -> bool:
        if server.poll() is not None:
            raise click.ClickException(f"the server did not start: see {data.parent}/server.log")
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200

    _wait("the server", ready)
    token = session.run(
        session.python,
        "-m",
        "repo_server.cli",
        "token",
        "create",
        "--role",
        "admin",
        "--name",
        "demo",
        "--data-dir",
        str(data),
    )
    client = RepoClient(url, token)
    say("making NSO 6.1 and 6.2 installers and their packages, uploading them, defining releases")
    _publish(client, _artifacts(session))
    say(f"starting four simulated NSO 6.1 hosts from {first_address}, and their agents")
    hosts = _hosts(session, first_address)
    _agents(session, client, url, hosts)
    for host in hosts:
        _wait(f"{host.node}'s first heartbeat", lambda n=host.node: _reported(client, n))
    _wait("the HA pair to connect", lambda: _pair_whole(client))
    client.call(
        "POST",
        "/api/v1/groups",
        json={
            "name": "core",
            "members": [
                {
                    "node": node,
                    "ha_id": ha_id,
                    "role": role.split(":")[0],
                    "failover": role.endswith("failover"),
                }
                for node, ha_id, role in PAIR
            ],
        },
    )
    job = None
    if not no_upgrade:
        job = client.call("POST", f"/api/v1/nodes/{SINGLE_NODES[0]}/upgrade", json={"to": "6.2"})
    click.echo(f"\nConsole:      {url}/ui/")
    click.echo(f"Admin token:  {token}")
    if job is not None:
        click.echo(
            f"Upgrading:    {SINGLE_NODES[0]} to 6.2, job {job['id']}: {url}/ui/jobs/{job['id']}"
        )
    click.echo(
        f"Then:         plan {SINGLE_NODES[1]} or the HA group 'core' to 6.2 from the console"
    )
    click.echo(f"Logs:         {session.folder}")
    click.echo("Ctrl-C stops everything.", nl=True)
    sys.stdout.flush()
    try:
        while session.processes[0].poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        return
    raise click.ClickException(f"the server stopped: see {session.folder / 'server.log'}")

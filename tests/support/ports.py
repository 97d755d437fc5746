"""Free TCP ports for the servers tests start, without races between xdist workers.

Asking the kernel for an ephemeral port (bind to 0, close, hand the number out) races: until
the service binds it, the kernel may give the same port to another worker's probe or to any
outgoing connection. Here each test process claims a block of ports of its own, below the
kernel's ephemeral range so the kernel never hands them out itself, and walks it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

FIRST_PORT = 10000
BLOCK_SIZE = 500
# Block locks live as long as the process that holds them (the kernel drops an flock when
# its file is closed, also on SIGKILL), so a crashed run never keeps a block.
LOCK_DIR = Path(tempfile.gettempdir()) / "nso-fleet-test-ports"

_block: Optional[tuple[int, Iterator[int]]] = None  # (lock fd, endless walk of the block)


def ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The first port the kernel may pick for bind(0) and outgoing connections."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def worker_number() -> int:
    """N of xdist worker gwN; 0 without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name[2:].isdigit() else 0


def _claim_block() -> tuple[int, Iterator[int]]:
    """Lock a block for this process: gwN's own block N first. Several runs of the suite may
    share a machine (and their gw0s would otherwise walk the same ports in the same order),
    so a block taken by another process is skipped for the next free one."""
    blocks = (ephemeral_low() - FIRST_PORT) // BLOCK_SIZE
    if blocks < 1:
        raise RuntimeError(
            f"no room for test ports between {FIRST_PORT} and the ephemeral range "
            f"({ephemeral_low()}): raise net.ipv4.ip_local_port_range's lower bound"
        )
    LOCK_DIR.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        LOCK_DIR.chmod(0o1777)  # shared by every user's runs, like /tmp
    preferred = worker_number() % blocks
    for index in [*range(preferred, blocks), *range(preferred)]:
        try:
            fd = os.open(LOCK_DIR / f"block-{index}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        first = FIRST_PORT + index * BLOCK_SIZE
        return fd, itertools.cycle(range(first, first + BLOCK_SIZE))
    raise RuntimeError(
        f"all {blocks} test port blocks under {LOCK_DIR} are held by other test processes"
    )


def _bindable(port: int, addresses: tuple[str, ...]) -> bool:
    sockets = []
    try:
        for address in addresses:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            # No SO_REUSEADDR: a port with a listener or a connection in TIME_WAIT on it
            # fails here and is skipped, where the service might have failed later.
            sock.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()


def free_port(*addresses: str) -> int:
    """A port of this process's block that binds on every one of ``addresses`` right now
    (default 127.0.0.1).

    Pass every address the service will listen on: a port free on one address can be taken
    on another, or on 0.0.0.0 (something on these machines listens on 0.0.0.0:2024, and a
    wildcard listener blocks the port on every address). The walk goes round its block, so
    ports of stopped servers come back once they bind again.
    """
    global _block
    if _block is None:
        _block = _claim_block()
    walk = _block[1]
    wanted = addresses or ("127.0.0.1",)
    for _ in range(BLOCK_SIZE):
        port = next(walk)
        if _bindable(port, wanted):
            return port
    raise RuntimeError(f"no port of this process's block binds on {', '.join(wanted)}")

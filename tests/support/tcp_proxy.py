"""A TCP load balancer for tests: each new connection goes to the next backend that accepts
it, round robin, as a proxy in front of several `nso-repo serve` hosts does.

Run as its own process: ``python -m tests.support.tcp_proxy PORT HOST:PORT [HOST:PORT...]``.
It prints ``listening`` once it accepts connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.write_eof()


async def serve(port: int, backends: list[tuple[str, int]]) -> None:
    turn = itertools.cycle(range(len(backends)))

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = next(turn)
        for i in range(len(backends)):
            host, backend_port = backends[(first + i) % len(backends)]
            try:
                up_reader, up_writer = await asyncio.open_connection(host, backend_port)
            except OSError:
                continue  # that host is down: the next one
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            up_writer.close()
            break
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    backends = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in sys.argv[2:]]
    asyncio.run(serve(port, backends))


if __name__ == "__main__":
    main()

"""The NSO CLI over SSH (``/ncs-config/cli/ssh``, port 2024 by default), a paramiko server.

Password and public-key authentication. An ``exec`` request (``ssh -p 2024 host 'cmd'``) runs
the command lines and closes with exit status 0, or 1 if a command failed; a shell gets the
``admin@ncs#`` prompt, with echo when the client asked for a pty.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Optional

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from nso_sim import faults
from nso_sim.ha.manager import HaManager
from nso_sim.installer import HOST_KEY, generate_host_key
from nso_sim.node.daemon import Daemon
from nso_sim.nso_cli.session import CliSession


class _ChannelState:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.exec_command: Optional[str] = None
        self.pty = False
        # SIMULATOR fault cli-exec-reply-lost: the command runs, then the connection drops
        # before the server confirms the request (`ran`: the command has run).
        self.reply_lost = False
        self.ran = threading.Event()


class _Server(paramiko.ServerInterface):
    """Authentication and channel requests of one SSH connection (many channels)."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.user: Optional[str] = None
        self.channels: dict[int, _ChannelState] = {}
        self._lock = threading.Lock()

    def state(self, chanid: int) -> _ChannelState:
        with self._lock:
            return self.channels.setdefault(chanid, _ChannelState())

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            self.state(chanid)
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def get_allowed_auths(self, username: str) -> str:
        return "password,publickey"

    def check_auth_password(self, username: str, password: str) -> int:
        if self.d.check_password(username, password):
            self.user = username
            return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        offered = f"{key.get_name()} {key.get_base64()}"
        for line in self.d.authorized_keys(username):
            parts = line.split()
            if len(parts) >= 2 and f"{parts[0]} {parts[1]}" == offered:
                self.user = username
                return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_channel_pty_request(self, channel: paramiko.Channel, *args: object) -> bool:
        self.state(channel.get_id()).pty = True
        return True

    def check_channel_window_change_request(self, *args: object) -> bool:
        return True

    def check_channel_env_request(self, *args: object) -> bool:
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        self.state(channel.get_id()).ready.set()
        return True

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        st = self.state(channel.get_id())
        st.exec_command = command.decode(errors="replace")
        wanted = faults.active(self.d.layout, "cli-exec-reply-lost")
        if isinstance(wanted, str) and wanted in st.exec_command:
            st.reply_lost = faults.fire(self.d.layout, "cli-exec-reply-lost") is not None
        st.ready.set()
        if not st.reply_lost:
            return True
        # Answered only once the command has run, and never: the connection drops first.
        st.ran.wait(30)
        self.d.log("INFO", "CLI connection dropped before confirming an exec request (fault)")
        with contextlib.suppress(OSError):
            channel.get_transport().sock.shutdown(socket.SHUT_RDWR)
        return False


class SshServer:
    def __init__(self, daemon: Daemon, ha: HaManager, sock: socket.socket) -> None:
        self.d = daemon
        self.ha = ha
        self.sock = sock
        key_path = daemon.layout.config_dir / HOST_KEY
        if not key_path.exists():
            generate_host_key(key_path)
        self.host_key = paramiko.PKey.from_path(key_path)
        self.transports: list[paramiko.Transport] = []
        self._closing = False

    def start(self) -> None:
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def shutdown(self) -> None:
        self._closing = True
        for t in list(self.transports):
            with contextlib.suppress(Exception):
                t.close()

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, addr[0]), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        transport = paramiko.Transport(conn)
        self.transports.append(transport)
        try:
            transport.add_server_key(self.host_key)
            server = _Server(self.d)
            transport.start_server(server=server)
            while transport.is_active() and not self._closing:
                chan = transport.accept(1.0)
                if chan is None:
                    continue
                threading.Thread(
                    target=self._channel, args=(server, chan, peer), daemon=True
                ).start()
        except (paramiko.SSHException, OSError, EOFError):
            pass
        finally:
            with contextlib.suppress(Exception):
                transport.close()
            if transport in self.transports:
                self.transports.remove(transport)

    def _channel(self, server: _Server, chan: paramiko.Channel, peer: str) -> None:
        st = server.state(chan.get_id())
        if not st.ready.wait(30) or server.user is None:
            st.ran.set()
            chan.close()
            return
        session = CliSession(self.d, self.ha, server.user, peer, "ssh")
        transport = chan.get_transport()
        session.hang_up = transport.close
        try:
            if st.reply_lost and st.exec_command is not None:
                try:
                    for line in st.exec_command.splitlines():
                        session.execute(line)
                finally:
                    st.ran.set()
            elif st.exec_command is not None:
                self._exec(chan, session, st.exec_command)
            else:
                self._shell(chan, session, peer, st.pty)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            session.close()
            chan.close()

    @staticmethod
    def _send(chan: paramiko.Channel, text: str, pty: bool) -> None:
        if not text:
            return
        if pty:
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        chan.sendall(text.encode())

    def _exec(self, chan: paramiko.Channel, session: CliSession, command: str) -> None:
        status = 0
        for line in command.splitlines():
            result = session.execute(line)
            if result.output:
                self._send(chan, result.output + "\n", False)
            if not result.ok:
                status = 1
            if result.exit:
                break
        chan.send_exit_status(status)
        chan.shutdown_write()
        chan.close()

    def _shell(self, chan: paramiko.Channel, session: CliSession, peer: str, pty: bool) -> None:
        self._send(chan, f"{session.user} connected from {peer} using ssh on ncs\n", pty)
        self._send(chan, session.prompt(), pty)
        buf = b""
        while True:
            data = chan.recv(4096)
            if not data:
                break
            if pty:  # a terminal expects its keystrokes echoed
                chan.sendall(data.replace(b"\r", b"\r\n"))
            buf += data
            while True:
                cut = min((i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0), default=-1)
                if cut < 0:
                    break
                line = buf[:cut].decode(errors="replace")
                buf = buf[cut + 1 :]
                if buf.startswith(b"\n") and line is not None:
                    buf = buf[1:]
                result = session.execute(line)
                if result.output:
                    self._send(chan, result.output + "\n", pty)
                if result.exit:
                    chan.send_exit_status(0)
                    chan.close()
                    return
                self._send(chan, session.prompt(), pty)
        chan.close()

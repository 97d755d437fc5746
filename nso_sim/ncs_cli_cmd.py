"""``ncs_cli``: the NSO CLI on the console, talking to the daemon over its IPC port."""

from __future__ import annotations

import argparse
import getpass
import sys

from nso_sim import ipc
from nso_sim.layout import HostLayout, root_of_release_file


def main(script: str, vsn: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ncs_cli")
    p.add_argument("-C", action="store_true", help="Cisco style (the only one simulated)")
    p.add_argument("-J", action="store_true", help="Juniper style (accepted, C is used)")
    p.add_argument("-u", "--user")
    p.add_argument("-g", "--groups")
    p.add_argument("-n", "--noninteractive", action="store_true")
    p.add_argument("--noaaa", action="store_true")
    args = p.parse_args(argv)
    layout = HostLayout(root_of_release_file(script))
    user = args.user or getpass.getuser()
    if user == "root":
        user = "admin"
    try:
        conn = ipc.connect(layout)
    except OSError:
        print("Failed to connect to server", file=sys.stderr)
        return 1
    interactive = sys.stdin.isatty() and not args.noninteractive
    failed = False
    try:
        conn.send({"op": "cli", "user": user})
        hello = conn.recv()
        if hello is None or "error" in hello:
            print((hello or {}).get("error", "connection closed"), file=sys.stderr)
            return 1
        prompt = hello["prompt"]
        while True:
            if interactive:
                sys.stdout.write(prompt)
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                break
            conn.send({"line": line.rstrip("\n")})
            reply = conn.recv()
            if reply is None:
                break
            if reply["out"]:
                sys.stdout.write(
                    reply["out"] if reply["out"].endswith("\n") else reply["out"] + "\n"
                )
                sys.stdout.flush()
            failed = failed or not reply["ok"]
            prompt = reply["prompt"]
            if reply["exit"]:
                break
    finally:
        conn.close()
    return 1 if failed else 0

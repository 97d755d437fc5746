"""The configuration database: a small schema, a data tree, and its files in ``cdb/``.

``A.cdb`` (invented format) is JSON lines: a snapshot first, then one line per committed
transaction (the write log). ``ncs --cdb-compact`` folds the log into a new snapshot; a long
log makes start-up slower, as on a real host.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from nso_sim.layout import write_bytes_atomic

Tree = dict[str, Any]
# ("set", path, value) | ("create", path, None) | ("delete", path, None)
Op = tuple[str, list[str], Optional[str]]

NCS_NS = "http://tail-f.com/ns/ncs"


class Leaf:
    pass


class Free:
    """Free-form leaf/value pairs: device config under a NED, a service instance's body."""


class LeafList:
    """A leaf-list (``device-name [ r1 r2 ]``), kept as ``{value: {}}`` so values are added
    (``create``) and removed (``delete``) one by one, as list keys are."""


@dataclass
class Container:
    children: dict[str, Any] = field(default_factory=dict)


@dataclass
class List:
    entry: Union[Container, Free]


Schema = Union[Leaf, LeafList, Free, Container, List]

_DEVICE = Container(
    {
        "address": Leaf(),
        "port": Leaf(),
        "authgroup": Leaf(),
        "description": Leaf(),
        "device-type": Container(
            {
                "netconf": Container({"ned-id": Leaf()}),
                "cli": Container({"ned-id": Leaf()}),
                "generic": Container({"ned-id": Leaf()}),
            }
        ),
        "state": Container({"admin-state": Leaf()}),
        "config": Free(),
    }
)
_HA = Container(
    {
        "token": Leaf(),  # tailf:aes-256-cfb-128-encrypted-string, encrypted on commit
        "ha-node": List(
            Container({"address": Leaf(), "nominal-role": Leaf(), "failover-primary": Leaf()})
        ),
        "settings": Container(
            {
                "enable-failover": Leaf(),
                "reconnect-interval": Leaf(),
                "reconnect-attempts": Leaf(),
                "reconnect-secondaries": Leaf(),
                "start-up": Container({"assume-nominal-role": Leaf(), "join-ha": Leaf()}),
                "consensus": Container({"enabled": Leaf(), "algorithm": Leaf()}),
            }
        ),
    }
)
# A device group names devices and other groups (`device-group [ ... ]`): its members are
# both, nested groups' included (group_devices).
_DEVICE_GROUP = Container({"device-name": LeafList(), "device-group": LeafList()})
BUILTIN_TOP = {
    "devices": Container({"device": List(_DEVICE), "device-group": List(_DEVICE_GROUP)}),
    "high-availability": _HA,
}


class SchemaError(Exception):
    pass


def top_schema(service_prefixes: list[str]) -> Container:
    children: dict[str, Any] = dict(BUILTIN_TOP)
    for prefix in service_prefixes:
        children.setdefault(prefix, List(Free()))
    return Container(children)


def parse_set(tokens: list[str], schema: Container) -> list[Op]:
    """``devices device r1 address 10.0.0.1 port 22`` -> create the entry, set two leaves."""
    ops: list[Op] = []
    node: Schema = schema
    path: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if isinstance(node, Free):
            value = tokens[i + 1] if i + 1 < len(tokens) else ""
            ops.append(("set", [*path, tok], value))
            i += 2
            continue
        if not isinstance(node, Container):
            raise SchemaError(f"syntax error: unexpected {tok!r}")
        child = node.children.get(tok)
        if child is None:
            raise SchemaError(f"syntax error: unknown element: {tok}")
        if isinstance(child, Leaf):
            if i + 1 >= len(tokens):
                raise SchemaError(f"syntax error: incomplete command, {tok} needs a value")
            ops.append(("set", [*path, tok], tokens[i + 1]))
            i += 2
        elif isinstance(child, LeafList):
            values, i = _leaf_list_values(tokens, i + 1, tok)
            ops += [("create", [*path, tok, value], None) for value in values]
        elif isinstance(child, List):
            if i + 1 >= len(tokens):
                raise SchemaError(f"syntax error: incomplete command, {tok} needs a key")
            path = [*path, tok, tokens[i + 1]]
            ops.append(("create", list(path), None))
            node = child.entry
            i += 2
        else:
            path = [*path, tok]
            node = child
            i += 1
    if not ops:
        if not path:
            raise SchemaError("syntax error: incomplete command")
        ops.append(("create", path, None))
    return ops


def _leaf_list_values(tokens: list[str], i: int, name: str) -> tuple[list[str], int]:
    """``[ a b ]`` or a single value at ``tokens[i]``: (values, index after them)."""
    if i >= len(tokens):
        raise SchemaError(f"syntax error: incomplete command, {name} needs a value")
    if tokens[i] != "[":
        return [tokens[i]], i + 1
    if "]" not in tokens[i:]:
        raise SchemaError(f"syntax error: {name} [ ... needs a closing ]")
    end = tokens.index("]", i)
    return tokens[i + 1 : end], end + 1


def parse_path(tokens: list[str], schema: Container) -> list[str]:
    """A path for ``no``/``show``: like parse_set but a trailing leaf needs no value."""
    node: Schema = schema
    path: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if isinstance(node, Free):
            return [*path, tok]
        if not isinstance(node, Container):
            raise SchemaError(f"syntax error: unexpected {tok!r}")
        child = node.children.get(tok)
        if child is None:
            raise SchemaError(f"syntax error: unknown element: {tok}")
        if isinstance(child, Leaf):
            return [*path, tok]
        if isinstance(child, LeafList):
            return [*path, tok, *tokens[i + 1 : i + 2]]
        if isinstance(child, List):
            if i + 1 >= len(tokens):
                return [*path, tok]
            path, node, i = [*path, tok, tokens[i + 1]], child.entry, i + 2
        else:
            path, node, i = [*path, tok], child, i + 1
    return path


def apply_ops(tree: Tree, ops: list[Op]) -> None:
    for kind, path, value in ops:
        if kind == "delete":
            parent = get(tree, path[:-1])
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
            continue
        node = tree
        last = len(path) if kind == "create" else len(path) - 1
        for part in path[:last]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {}
            node = nxt
        if kind == "set":
            node[path[-1]] = value


def get(tree: Tree, path: list[str]) -> Any:
    node: Any = tree
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def prune_to(tree: Tree, path: list[str]) -> Tree:
    """A copy of the tree holding only ``path`` and what is below it."""
    if not path:
        return copy.deepcopy(tree)
    value = get(tree, path)
    if value is None:
        return {}
    out: Tree = {}
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = copy.deepcopy(value)
    return out


def render(tree: Tree, schema: Container) -> list[str]:
    """C-style ``show running-config``: containers fold into the line, lists open a block."""
    lines: list[str] = []
    _render(tree, schema, 0, [], lines)
    return lines


def _render(data: Tree, schema: Schema, depth: int, words: list[str], out: list[str]) -> None:
    pad = " " * depth
    # Inside a block, NSO aligns the values of the block's own leaves (not of leaves folded
    # into a container's line): "address      172.21.0.2" / "nominal-role primary".
    width = 0
    if depth and not words:
        width = max((len(n) for n, v in data.items() if _is_leaf(schema, n, v)), default=0)
    for name, value in data.items():
        if isinstance(schema, Free):
            if isinstance(value, dict):
                continue
            out.append(f"{pad}{' '.join([*words, name.ljust(width)])} {quote(value)}".rstrip())
            continue
        assert isinstance(schema, Container)  # nosec B101 # narrows the type for mypy; under python -O the next line fails on None, it never lets anything through
        child = schema.children.get(name)
        if child is None:
            continue
        if isinstance(child, Leaf):
            out.append(f"{pad}{' '.join([*words, name.ljust(width)])} {quote(value)}".rstrip())
        elif isinstance(child, LeafList):
            shown = " ".join(quote(v) for v in sorted(value, key=_natural))
            out.append(f"{pad}{' '.join([*words, name.ljust(width)])} [ {shown} ]")
        elif isinstance(child, List):
            for key in sorted(value, key=_natural):
                out.append(f"{pad}{' '.join([*words, name, key])}")
                _render(value[key], child.entry, depth + 1, [], out)
                out.append(f"{pad}!")
        elif isinstance(child, Free):
            out.append(f"{pad}{' '.join([*words, name])}")
            _render(value, child, depth + 1, [], out)
            out.append(f"{pad}!")
        else:
            _render(value, child, depth, [*words, name], out)


def _is_leaf(schema: Schema, name: str, value: Any) -> bool:
    if isinstance(schema, Free):
        return not isinstance(value, dict)
    return isinstance(schema, Container) and isinstance(schema.children.get(name), (Leaf, LeafList))


def quote(value: Any) -> str:
    """A value as the CLI prints it: quoted when it holds a space."""
    text = "" if value is None else str(value)
    return f'"{text}"' if " " in text else text


def _natural(key: str) -> tuple[Any, ...]:
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key))


def count_leaves(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(count_leaves(v) for v in tree.values()) or 1
    return 1


class CdbCorrupt(Exception):
    pass


class CdbStore:
    """``cdb/A.cdb``: a snapshot line followed by the write log."""

    def __init__(self, cdb_dir: Path) -> None:
        self.path = cdb_dir / "A.cdb"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> tuple[Tree, int, int]:
        """(tree, txid, write-log length)."""
        if not self.path.exists():
            return {}, 0, 0
        try:
            lines = self.path.read_text().splitlines()
            first = json.loads(lines[0])
            tree: Tree = first["snapshot"]
            txid: int = first["txid"]
            for line in lines[1:]:
                entry = json.loads(line)
                apply_ops(tree, [(k, p, v) for k, p, v in entry["ops"]])
                txid = entry["txid"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise CdbCorrupt(f"{self.path}: {exc}") from None
        return tree, txid, len(lines) - 1

    def write_snapshot(self, tree: Tree, txid: int) -> None:
        line = json.dumps({"snapshot": tree, "txid": txid}, sort_keys=False)
        write_bytes_atomic(self.path, (line + "\n").encode())

    def append(self, ops: list[Op], txid: int) -> None:
        if not self.path.exists():
            self.write_snapshot({}, 0)
        with self.path.open("a") as fh:
            fh.write(json.dumps({"txid": txid, "ops": [list(op) for op in ops]}) + "\n")

    def compact(self) -> tuple[int, int]:
        """Fold the write log into the snapshot; returns (log entries folded, bytes after)."""
        tree, txid, log_len = self.load()
        self.write_snapshot(tree, txid)
        return log_len, self.path.stat().st_size


def group_devices(tree: dict[str, Any], name: str) -> Optional[list[str]]:
    """The devices of device group ``name``, those of the groups it nests (at any depth, each
    group once) included, sorted; None when there is no such group. A nested group that
    does not exist adds nothing (real NSO's leafref would not let it be committed)."""
    found: set[str] = set()
    seen: set[str] = set()
    todo = [name]
    while todo:
        group = todo.pop()
        if group in seen:
            continue
        seen.add(group)
        entry = get(tree, ["devices", "device-group", group])
        if entry is None:
            if group == name:
                return None
            continue
        found.update(entry.get("device-name") or {})
        todo.extend(entry.get("device-group") or {})
    return sorted(found)

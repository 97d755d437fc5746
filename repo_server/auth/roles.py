"""Which role may do what. One table, read by `require()` and documented in docs/api.md."""

from __future__ import annotations

READ_ROLES = frozenset({"admin", "uploader", "operator", "viewer", "agent"})

PERMISSIONS: dict[str, frozenset[str]] = {
    "artifact:read": READ_ROLES,
    "blob:read": READ_ROLES,
    "artifact:upload": frozenset({"admin", "uploader"}),
    "artifact:delete": frozenset({"admin"}),
    "token:manage": frozenset({"admin"}),
    "audit:read": frozenset({"admin", "operator"}),
    "release:read": READ_ROLES,
    "release:manage": frozenset({"admin", "operator"}),
    "node:read": frozenset({"admin", "operator", "viewer"}),
    "node:manage": frozenset({"admin", "operator"}),
    "job:read": frozenset({"admin", "operator", "viewer"}),
    "job:manage": frozenset({"admin", "operator"}),
    "agent": frozenset({"agent"}),
}


def roles_for(permission: str) -> frozenset[str]:
    return PERMISSIONS[permission]

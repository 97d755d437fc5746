"""Which role may do what. One table, read by `require()` and documented in docs/api.md."""

from __future__ import annotations

READ_ROLES = frozenset({"admin", "uploader", "operator", "viewer", "agent"})

PERMISSIONS: dict[str, frozenset[str]] = {
    "artifact:read": READ_ROLES,
    # An agent only the blobs the step its node runs names (catalog/blob_views.py).
    "blob:read": READ_ROLES,
    "artifact:upload": frozenset({"admin", "uploader"}),
    "artifact:delete": frozenset({"admin"}),
    "token:manage": frozenset({"admin"}),
    "audit:read": frozenset({"admin", "operator"}),
    # /api/v1/health answers anyone up or down; these roles also get version and checks.
    "health:details": frozenset({"admin", "operator"}),
    # GET /metrics (Prometheus: give its scraper a viewer token).
    "metrics:read": frozenset({"admin", "operator", "viewer"}),
    "release:read": READ_ROLES,
    "release:manage": frozenset({"admin", "operator"}),
    "node:read": frozenset({"admin", "operator", "viewer"}),
    # Register nodes and issue their one-time enrollment tokens (audited as node.add and
    # node.enrollment_token): whoever holds one can enroll an agent as that node.
    "node:manage": frozenset({"admin", "operator"}),
    "job:read": frozenset({"admin", "operator", "viewer"}),
    # A job's context, step results and log tails: host paths, NSO's output, restore point
    # tokens. Viewers see jobs without them (README, "Roles").
    "job:details": frozenset({"admin", "operator"}),
    "job:manage": frozenset({"admin", "operator"}),
    "agent": frozenset({"agent"}),
    # Log in to the console (/ui); each page then needs its API twin's permission.
    "console": frozenset({"admin", "uploader", "operator", "viewer"}),
}


def roles_for(permission: str) -> frozenset[str]:
    return PERMISSIONS[permission]

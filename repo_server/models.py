"""Import every model module once, so relationships resolve and Alembic sees every table."""

from __future__ import annotations


def register_models() -> None:
    import repo_server.auth.models
    import repo_server.catalog.models
    import repo_server.catalog.release_models
    import repo_server.console.models
    import repo_server.fleet.group_models
    import repo_server.fleet.models
    import repo_server.patches.models
    import repo_server.rollouts.models
    import repo_server.upgrades.models  # noqa: F401

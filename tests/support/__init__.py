"""Shared test support: helpers and pytest plugins.

Plugins (fixtures), registered by ``pytest_plugins`` in tests/conftest.py, and with ``-p`` by
the agent's Python 3.9 run (``make test-agent-py39``, which installs only the agent's
dependencies, so ``sim_hosts`` and what it imports must not need the server's):

- ``postgres``: a PostgreSQL 15 cluster per session (``postgres_server``).
- ``s3``: a SeaweedFS S3 server per session (``s3_server``).
- ``storage``: every storage backend (``storage``) and ``blob_file``.
- ``sim_hosts``: simulated NSO hosts (``shell``, ``sim``, ``artifacts``, ``make_host``,
  ``make_cluster``).

Helpers: ``ports.free_port``, ``waiting.wait_until``, ``processes.ServerProcess`` (any
long-running process of a test) and ``nso_repo.RepoServer`` (``nso-repo serve``).
"""

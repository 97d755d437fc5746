"""nso-agent: the node agent that runs on each NSO host (docs/agent-protocol.md).

It enrolls once with the repository server, long-polls it for work, and runs the steps of
the upgrade guide's procedures on its own host. It never imports ``repo_server``: the two
meet only over the HTTP protocol. It runs on the Python NSO hosts ship (3.9 and newer).
"""

__version__ = "0.1.0"

"""The steps of docs/agent-protocol.md, one module per kind of job.

- ``registry.py``: step name -> function, and how one step is run;
- ``context.py``: what a step function gets (the step, the host, NSO, the journal);
- ``single_node.py``: the single-node NSO upgrade (prestage ... verify);
- ``packages.py``: the package-only upgrade;
- ``recovery.py``: putting a node back after a failed upgrade (``recover``,
  ``recover_packages``);
- ``package_links.py``: saving and restoring the load path's links ``ncs-backup`` skips;
- ``shared.py``: what steps of several kinds do alike (stage a package, switch ``current``,
  start NSO, check its packages);
- ``ha.py``: the steps of an HA group's upgrade (read-only, be-primary, enable...).

Steps reach NSO only through ``ctx.nso`` (``agent/nso.py``): no step writes a CLI command or
reads its output.
"""

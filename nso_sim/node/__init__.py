"""The simulated NSO node: its daemon's state (CDB, packages, patches, commit queue) and
start-up. The HA manager and the CLI are built on top of it and never imported from here."""

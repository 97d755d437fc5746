"""The simulated rule-based HA: the manager (roles, failover, ``packages ha sync``) and its
links between nodes. Built on the node; the CLI sits on top."""

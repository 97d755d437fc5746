"""The simulated NSO CLI (C-style): command sessions, their output, the SSH server and the
``ncs_cli`` console. Built on the node and its HA manager; nothing below imports it."""

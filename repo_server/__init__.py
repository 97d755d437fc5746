"""The NSO artifact repository and upgrade orchestrator server (`nso-repo`)."""

__version__ = "0.1.0"

"""Catalog of NSO installers, packages, NEDs and patches."""

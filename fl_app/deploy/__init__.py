"""Operator tooling for a networked deployment: credentials, preflight checks, launchers."""

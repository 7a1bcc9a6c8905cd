"""Worked examples of extending the app (see docs/strategies.md, "Your own strategy")."""

"""Worked examples of extending the app (see README, "Your own strategy")."""

"""Shared by the SuperLink and SuperNode launchers: find Flower's executables, print
the command and replace this process with it."""

import os
import shlex
import sys
from pathlib import Path

from fl_app.deploy.preflight import PreflightError
from fl_app.local_superlink import flower_executable


def executable(name: str) -> str:
    """A Flower console script from this interpreter's environment, else from PATH."""
    try:
        return flower_executable(name)
    except FileNotFoundError as err:
        raise PreflightError(str(err)) from None


def exec_command(command: list[str]) -> None:
    """Print `command` and exec it, with this environment's scripts first on PATH (the
    SuperLink and SuperNode start `flower-superexec` from PATH)."""
    print("$ " + shlex.join(command), flush=True)
    scripts = str(Path(sys.executable).parent)
    env = os.environ | {"PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}
    os.execve(command[0], command, env)


def fail(err: PreflightError) -> None:
    """End the launcher with the preflight message and exit code 2."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(2)

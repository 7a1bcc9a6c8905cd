"""A guardian for a command's process tree: it dies with the process that started it.

    python fl_app/process_guard.py PARENT_PID COMMAND [ARG ...]    (`GUARD_SCRIPT`)

runs COMMAND and stops every process descended from it (those that started their own
session, or whose parent exited, included) when the guardian's parent dies, however it
dies (SIGKILL included), when the guardian is told to stop (SIGTERM, SIGINT), or when
COMMAND exits; it then exits with COMMAND's status. `LocalSuperLink` starts the SuperLink
under it: Flower's SuperLink starts the SuperExec in a session of its own, which starts
the simulation (the ServerApp and Ray), and none of them stops when `run_simulation.py`
is killed.

Linux only: `prctl(PR_SET_PDEATHSIG)` sends the guardian SIGTERM when the thread that
started it exits, and `prctl(PR_SET_CHILD_SUBREAPER)` makes every orphaned descendant
its child, so that it is still found. Run as a script (standard library and psutil
only), it starts quickly and needs no import path.
"""

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

GUARD_SCRIPT = Path(__file__).resolve()  # run as a script: python GUARD_SCRIPT PARENT_PID COMMAND ...
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 5.0  # from SIGTERM to SIGKILL


def stop_processes(procs: list[psutil.Process], timeout: float) -> None:
    """Terminate `procs`; kill those alive `timeout` seconds later."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def stop_process_tree(pid: int, timeout: float = 10.0) -> None:
    """Terminate `pid` and all its descendants; kill what survives `timeout` seconds."""
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    stop_processes(procs, timeout)


def stop_descendants(timeout: float = GRACE_S) -> None:
    """Stop every descendant of this process, again while stopping one started others."""
    for _ in range(10):
        procs = psutil.Process().children(recursive=True)
        if not procs:
            return
        stop_processes(procs, timeout)


def prctl(option: int, value: int) -> None:
    """Linux's prctl(option, value); OSError when it fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl({option}): {os.strerror(error)}")


def stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    """Guard `argv[1:]` for the process `argv[0]`; its exit status."""
    parent, command = int(argv[0]), argv[1:]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was armed
        return 128 + signal.SIGTERM
    try:
        child = subprocess.Popen(command)
        while True:  # reap orphans adopted as the subreaper until the command exits
            pid, status = os.waitpid(-1, 0)
            if pid == child.pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                return child.returncode if child.returncode >= 0 else 128 - child.returncode
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup runs to its end
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_descendants()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The SuperLink's guardian (`fl_app.process_guard`): what a process starts dies with it,
even by SIGKILL; on a small process tree, and (integration) on `run_simulation.py`'s."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fl_app.process_guard import GUARD_SCRIPT
from fl_app.run_dir import RunDir, RunLock

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {  # the guardian's parent, which starts it in a session of its own as LocalSuperLink does
    "parent.py": """
import os, subprocess, sys, time
guard = subprocess.Popen([sys.executable, sys.argv[1], str(os.getpid()), sys.executable, "tree.py"],
                         start_new_session=True)
print(guard.pid, flush=True)
time.sleep(600)
""",  # the guarded command: a child in a session of its own, an orphan too, and itself
    "tree.py": """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "sleep.py"], start_new_session=True)
orphan = subprocess.run([sys.executable, "orphan.py"], capture_output=True, text=True, check=True).stdout.strip()
with open("pids", "w") as f:
    f.write(f"{child.pid} {orphan}")
time.sleep(600)
""",  # exits at once, leaving its child an orphan
    "orphan.py": """
import subprocess, sys
print(subprocess.Popen([sys.executable, "sleep.py"], start_new_session=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL).pid)
""",
    "sleep.py": "import time; time.sleep(600)\n",
}


def running(proc: psutil.Process) -> bool:
    """`proc` runs (a zombie does not)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `procs` still running after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_a_guarded_tree_dies_with_the_guardians_parent(tmp_path):
    """SIGKILL of the parent: the guardian stops the command, its child in another session
    and the orphan it adopted, within its grace period."""
    for name, text in SCRIPTS.items():
        (tmp_path / name).write_text(text)
    pids = tmp_path / "pids"
    parent = subprocess.Popen([sys.executable, "parent.py", str(GUARD_SCRIPT)], stdout=subprocess.PIPE, text=True,
                              cwd=tmp_path)
    tree: list[psutil.Process] = []
    try:
        guard = psutil.Process(int(parent.stdout.readline()))
        tree.append(guard)
        deadline = time.monotonic() + 30
        while not pids.exists() or len(pids.read_text().split()) < 2:
            assert time.monotonic() < deadline, "the guarded command did not start"
            time.sleep(0.05)
        tree += guard.children(recursive=True)
        child, orphan = (psutil.Process(int(pid)) for pid in pids.read_text().split())
        assert {child, orphan} < set(tree) and orphan.ppid() == guard.pid  # adopted by the subreaper
        assert os.getsid(child.pid) != os.getsid(guard.pid) != os.getsid(parent.pid)
        parent.kill()
        parent.wait()
        assert gone(tree, timeout=10) == []
    finally:
        if parent.poll() is None:
            parent.kill()
        for proc in tree:
            if running(proc):
                proc.kill()


def test_the_guardian_exits_with_its_commands_status():
    result = subprocess.run([sys.executable, str(GUARD_SCRIPT), str(os.getpid()), sys.executable, "-c",
                             "raise SystemExit(3)"], timeout=60)
    assert result.returncode == 3


@pytest.mark.integration
def test_sigkill_of_run_simulation_leaves_no_process_and_no_writer(tmp_path, mnist_dir):
    """SIGKILL of `run_simulation.py`'s process group once round 0 is recorded: the
    SuperLink, SuperExec, ServerApp (`flwr-simulation`) and Ray, each started in a session
    of its own, die within 15 s; the run never writes summary.json and its lock is free."""
    out = tmp_path / "outputs"
    log = tmp_path / "run.log"
    with open(log, "w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "run_simulation.py"), "--num-clients", "2", "--rounds", "3", "--run-config",
             f"samples-per-client=200 eval-samples=500 local-epochs=1 data-dir='{mnist_dir}' output-dir='{out}'"],
            stdout=stdout, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 120
        while "round 0/3" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            seen |= {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
            time.sleep(0.2)
        seen |= {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
        names = " ".join(" ".join(p.cmdline()) for p in seen.values() if running(p))
        assert all(name in names for name in ("flower-superlink", "flower-superexec", "flwr-simulation", "raylet"))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        survivors = gone(list(seen.values()), timeout=15)
        assert survivors == [], [" ".join(p.cmdline())[:120] for p in survivors]
    finally:
        for p in seen.values():
            if running(p):
                p.kill()
    (run_dir,) = out.iterdir()
    time.sleep(2)
    assert not RunDir(run_dir).summary.exists() and "round 3/3" not in log.read_text()
    RunLock(run_dir).release()  # no writer holds it

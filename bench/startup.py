"""Where a simulation's start-up goes: the moments from the command to round 1's
training, read from the output of `run_simulation.py --verbose`.

Flower's log lines (simulation process, ServerApp, client keys) carry the time they
were written (`verbose`: DEBUG, timestamped); run_simulation's own lines and `flwr
run`'s are timed as they arrive. Server and clients start side by side: the ServerApp
imports, prepares the run and evaluates round 0 while Ray starts the client actors,
which import the client and load their data at the key query.
"""

import re
import subprocess
import sys
import time

# (event, pattern of the line that marks it, whether the line carries its own time)
EVENTS = (
    ("run_simulation imported, config checked", r"run_simulation: starting a local SuperLink", False),
    ("SuperLink up", r"run_simulation: SuperLink up", False),
    ("run submitted (flwr run)", r"Successfully started run", False),
    ("simulation process started, FAB installed", r"Pre-registering run", True),
    ("ClientApp checked, Ray starting", r"Initialising: RayBackend", True),
    ("ServerApp imported, run prepared", r"Starting Flower ServerApp", True),
    ("Ray up, client actors created", r"Constructed ActorPool", True),
    ("round 0 evaluated", r"round 0/\d+ \|", True),
    ("clients started, keys reported", r"client keys: \d+ clients", True),
    ("round 1 training starts", r"configure_fit: strategy sampled", True),
    ("round 1 done", r"round 1/\d+ \|", True),
)
# (phase, from event, to event): each measured between two of the moments above
PHASES = (
    ("python imports of run_simulation + config check", None, "run_simulation imported, config checked"),
    ("SuperLink start", "run_simulation imported, config checked", "SuperLink up"),
    ("flwr run submit", "SuperLink up", "run submitted (flwr run)"),
    ("SuperExec launch + simulation process imports + FAB install", "run submitted (flwr run)",
     "simulation process started, FAB installed"),
    ("ClientApp check in the simulation process", "simulation process started, FAB installed",
     "ClientApp checked, Ray starting"),
    ("Ray init + actor creation", "ClientApp checked, Ray starting", "Ray up, client actors created"),
    ("ServerApp imports + prepare_run (test set)", "simulation process started, FAB installed",
     "ServerApp imported, run prepared"),
    ("round 0 evaluation", "ServerApp imported, run prepared", "round 0 evaluated"),
    ("actors: client imports + MNIST + key query", "Ray up, client actors created", "clients started, keys reported"),
    ("round 1 training", "round 1 training starts", "round 1 done"),
)
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


def line_time(line: str) -> float | None:
    """The epoch time a timestamped Flower log line was written, if it has one."""
    if not (m := STAMP.search(line)):
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


def timeline(start: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds from `start` (the command) to the first line of each event in `lines`
    (arrival time, text); events not seen are left out."""
    found: dict[str, float] = {}
    for arrival, text in lines:
        for event, pattern, stamped in EVENTS:
            if event not in found and re.search(pattern, text):
                at = line_time(text) if stamped else arrival
                if at is not None:
                    found[event] = at - start
    return found


def phases(events: dict[str, float]) -> dict[str, float]:
    """The seconds of each phase of `PHASES` whose two events were seen."""
    return {name: events[end] - (events[begin] if begin else 0.0) for name, begin, end in PHASES
            if end in events and (begin is None or begin in events)}


CLIENT_ALONE = """
import time
start = time.perf_counter()
import fl_app.client
from fl_app.config import client_config
imported = time.perf_counter()
fl_app.client.load_client_data(client_config({config!r}), {data_dir!r}, 0, {num_clients})
print(imported - start, time.perf_counter() - imported)
"""


def client_alone(config: dict, data_dir: str, num_clients: int) -> dict[str, float]:
    """Seconds a fresh client process takes, alone on the machine, to import the client
    and to load its partition (what each actor does at the key query)."""
    code = CLIENT_ALONE.format(config=config, data_dir=data_dir, num_clients=num_clients)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported, data = map(float, out.stdout.split()[-2:])
    return {"client process: import fl_app.client": imported, "client process: its MNIST partition": data}


def show(events: dict[str, float], spans: dict[str, float]) -> None:
    """Print the moments and the phases."""
    print("\nstart-up, seconds from the command:")
    for event, at in sorted(events.items(), key=lambda item: item[1]):
        print(f"  {at:6.1f}  {event}")
    print("phases (server and clients overlap from the simulation process on):")
    for name, seconds in spans.items():
        print(f"  {seconds:6.1f}  {name}")

"""The wheel, installed (not editable) into a fresh virtual environment and used from a
directory outside the checkout: every command it installs answers `--help`, it puts no
generic top-level package (`examples`, `deploy`) into site-packages, and `fl-app-simulate`
runs a federation from the installed files alone.

The environment gets the dependencies from this interpreter's site-packages (a .pth
file: nothing is downloaded) and Flower's commands as scripts of its own, so that every
process of the run (SuperLink, SuperExec, ServerApp, simulation) runs its interpreter."""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
COMMANDS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def run(command: list[str], check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    assert importlib.util.find_spec("hatchling"), "building the wheel needs hatchling: pip install -e '.[test]'"
    dist = tmp_path_factory.mktemp("dist")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "--quiet", "--wheel-dir", str(dist), str(REPO)], timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = dist.glob("fl_app-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A virtual environment with the wheel installed, the dependencies from this one."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    installed = run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                     "--quiet", str(wheel)], timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    check=True, timeout=60).stdout.strip())
    ours = sysconfig.get_paths()
    (site / "_fl_app_test_dependencies.pth").write_text(f"{ours['purelib']}\n{ours['platlib']}\n")
    for entry in importlib.metadata.distribution("flwr").entry_points.select(group="console_scripts"):
        script = root / "bin" / entry.name
        script.write_text(f"#!{python}\nimport sys\nfrom {entry.module} import {entry.attr.split('.')[0]}\n"
                          f"sys.exit({entry.attr}())\n")
        script.chmod(0o755)
    return root


def environment(venv: Path) -> dict[str, str]:
    """The venv's commands first on PATH, nothing of the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"PATH": os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])}


def test_the_wheel_holds_the_apps_packages_and_its_pyproject_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
        recorded = [line.split(",")[0] for line in archive.read(record).decode().splitlines()]
    assert {n.split("/")[0] for n in recorded} == {"fl_app", "strategies", "data", record.split("/")[0]}
    assert not [n for n in recorded if n.startswith(("examples/", "deploy/", "tests/", "bench/"))]
    for name in ("fl_app/pyproject.toml", "fl_app/simulate.py", "fl_app/examples/norm_bounded_fedavg.py",
                 "fl_app/deploy/supernode.py", "data/mnist.py", "strategies/registry.py"):
        assert name in recorded, name


def test_installed_commands_answer_help_outside_the_checkout(venv, tmp_path):
    assert set(COMMANDS) >= {"fl-app-simulate", "fl-app-audit", "fl-app-report", "fl-app-data",
                             "fl-app-credentials", "fl-app-superlink", "fl-app-supernode"}
    running = {name: subprocess.Popen([str(venv / "bin" / name), "--help"], cwd=tmp_path, env=environment(venv),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name in COMMANDS}
    for name, proc in running.items():
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0 and "usage:" in out, f"{name}: {out[-2000:]}"
    where = run([str(venv / "bin" / "python"), "-c",
                 "import fl_app, fl_app.config as c; print(fl_app.__file__); print(c.APP_DIR)"],
                cwd=tmp_path, env=environment(venv), check=True, timeout=120).stdout.split()
    site = Path(where[0]).parents[1]
    assert site.is_relative_to(venv) and Path(where[1]) == site / "fl_app"  # not the checkout


def test_fl_app_simulate_runs_a_federation_from_the_installed_files(venv, tmp_path, mnist_dir):
    out = tmp_path / "outputs"
    run_config = (f"data-dir='{mnist_dir}' samples-per-client=100 eval-samples=200 local-epochs=1 "
                  f"output-dir='{out}' strategy='fl_app.examples.norm_bounded_fedavg:NormBoundedFedAvg'")
    result = run([str(venv / "bin" / "fl-app-simulate"), "--num-clients", "2", "--rounds", "1",
                  "--run-config", run_config], cwd=tmp_path, env=environment(venv), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 1 and 0.0 <= summary["final_accuracy"] <= 1.0

"""The simulation launcher submits a staged copy of the app: the same FAB, without the
walk over the virtual environment; from a wheel install too."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from fl_app.app_bundle import bundle_candidates, stage_app
from fl_app.config import project_defaults

ROOT = Path(__file__).resolve().parents[1]


def test_the_staged_app_builds_the_projects_fab_byte_for_byte(tmp_path):
    staged = stage_app(ROOT, tmp_path / "app")
    assert build_fab_from_disk(staged) == build_fab_from_disk(ROOT)
    assert (staged / "pyproject.toml").is_file() and (staged / "fl_app" / "server_app.py").is_file()
    assert not (staged / ".venv").exists() and not (staged / ".git").exists()


def test_dropped_directories_are_not_walked(tmp_path):
    project = tmp_path / "project"
    for relative in ("pyproject.toml", ".gitignore", "app/task.py", ".venv/lib/big.py", ".git/hooks/x.py",
                     "outputs/run/history.json", "app/__pycache__/task.cpython-311.py", "notes/readme.md"):
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        (project / relative).write_text("outputs/\n" if relative == ".gitignore" else "x = 1\n")
    assert sorted(bundle_candidates(project)) == [".gitignore", "app/task.py", "notes/readme.md", "pyproject.toml"]


def wheel_layout(site: Path) -> None:
    """`site` laid out as a wheel install of the checkout: its packages' files, the
    pyproject.toml as fl_app/pyproject.toml, bytecode, and another distribution's package."""
    for package in ("fl_app", "strategies", "data"):
        for source in (ROOT / package).rglob("*.py"):
            target = site / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    shutil.copyfile(ROOT / "pyproject.toml", site / "fl_app" / "pyproject.toml")
    (site / "fl_app" / "__pycache__").mkdir(exist_ok=True)
    (site / "fl_app" / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"\\0")
    (site / "other").mkdir()
    (site / "other" / "__init__.py").write_text("x = 1\\n")


def test_an_installed_wheel_stages_the_same_app(tmp_path):
    """From a wheel install (no checkout): fl_app/'s pyproject.toml is the app's, and the
    staged copy of its packages builds the checkout's FAB, byte for byte."""
    site = tmp_path / "site-packages"
    wheel_layout(site)
    staged = stage_app(site / "fl_app", tmp_path / "app")
    assert build_fab_from_disk(staged) == build_fab_from_disk(ROOT)
    assert (staged / "pyproject.toml").read_bytes() == (ROOT / "pyproject.toml").read_bytes()
    assert (staged / "fl_app" / "deploy" / "superlink.py").is_file()  # the FAB build leaves it out
    assert not (staged / "other").exists() and not (staged / "fl_app" / "pyproject.toml").exists()
    assert not list(staged.rglob("__pycache__"))
    # the run-config defaults come from the shipped copy (-P: the checkout is not on sys.path)
    code = "from fl_app.config import APP_DIR, project_defaults as d; print(APP_DIR); print(d(APP_DIR))"
    out = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=os.environ | {"PYTHONPATH": str(site)}, check=True).stdout.splitlines()
    assert out == [str(site / "fl_app"), str(project_defaults(ROOT))]

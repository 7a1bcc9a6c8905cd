"""run_simulation.py submits a staged copy of the app: the same FAB, without the walk
over the virtual environment."""

from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from fl_app.app_bundle import bundle_candidates, stage_app

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

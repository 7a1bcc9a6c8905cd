"""The app bundle (FAB) every SuperNode installs holds only what the apps import."""

import io
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

ROOT = Path(__file__).resolve().parents[1]


def test_the_fab_ships_the_apps_code_and_config_only():
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT))) as fab:
        names = fab.namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"fl_app", "strategies", "data", "pyproject.toml", ".info"}, sorted(top)
    assert "fl_app/server_app.py" in names and "fl_app/client_app.py" in names
    assert "fl_app/examples/norm_bounded_fedavg.py" in names  # a strategy users can name in the run-config
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "bench/", "fl_app/deploy/"))]
    assert (ROOT / "fl_app" / "deploy" / "superlink.py").is_file()  # left out, not missing

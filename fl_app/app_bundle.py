"""The directory the simulation launcher (`fl_app/simulate.py`) hands to `flwr run`: the
files the app bundle (FAB) can hold, without the rest of the checkout.

`flwr run DIR` (flwr 1.42, `flwr/cli/utils.py`, `collect_files`) walks every file under
DIR and resolves each path before it filters them: with the virtual environment inside
the checkout (`make install`) that is about 53,000 files, 5.6 s on the 2-core machine,
at the start of every run. `stage_app` copies what survives the build's first filter
(`filter_paths_for_publish`: Flower's publish rules and the project's `.gitignore`)
into another directory, walking the project without the directories that filter drops
whole (git's own, `.venv`, `.flwr`, `__pycache__` and what `.gitignore` names); the
FAB built from the copy is the FAB built from the project, byte for byte
(`tests/test_app_bundle.py`).

An installed wheel has no project directory: its packages sit in site-packages and the
project's pyproject.toml is shipped as `fl_app/pyproject.toml`. From there the app is
that pyproject.toml and the files of the packages it names
(`[tool.hatch.build.targets.wheel] packages`), and the staged copy builds the same FAB.
"""

import os
import shutil
import tomllib
from pathlib import Path

from flwr.cli.utils import build_pathspec, filter_paths_for_publish, load_gitignore_patterns
from flwr.supercore.constant import APP_PUBLISH_EXCLUDE_PATTERNS

GIT_DIR = ".git"


def bundle_candidates(project: Path) -> dict[str, Path]:
    """{relative POSIX path: file} of the project's regular files outside the directories
    that Flower's FAB build drops whole (see the module)."""
    dropped = build_pathspec((*load_gitignore_patterns(project / ".gitignore"), *APP_PUBLISH_EXCLUDE_PATTERNS))

    def walked(directory: str) -> bool:
        name = directory.rsplit("/", 1)[-1]
        return name != GIT_DIR and not dropped.match_file(f"{directory}/") \
            and not dropped.match_file(f"{directory}/any-file")

    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(project, followlinks=False):
        relative = Path(dirpath).relative_to(project)
        dirnames[:] = [d for d in dirnames if walked((relative / d).as_posix())]
        for filename in filenames:
            path = Path(dirpath) / filename
            if not path.is_symlink():
                files[(relative / filename).as_posix()] = path
    return files


def installed_app_files(package_dir: Path) -> dict[str, Path]:
    """{relative POSIX path: file} of the app installed from a wheel whose `fl_app`
    package is `package_dir`: the pyproject.toml shipped in it, as `pyproject.toml`, and
    the files of the packages that pyproject.toml puts in the wheel."""
    pyproject = package_dir / "pyproject.toml"
    with open(pyproject, "rb") as f:
        packages = tomllib.load(f)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    files = {"pyproject.toml": pyproject}
    for package in packages:
        files |= {f"{package}/{relative}": path
                  for relative, path in bundle_candidates(package_dir.parent / package).items() if path != pyproject}
    return files


def stage_app(project: Path, destination: Path) -> Path:
    """Copy the app's files that the FAB build keeps past its first filter into
    `destination` (created); return it. `project` is the directory holding the app's
    pyproject.toml (`fl_app.config.APP_DIR`): a project directory, or the `fl_app`
    package of a wheel install (a package: it has `__init__.py`)."""
    installed = (project / "__init__.py").is_file()
    files = installed_app_files(project) if installed else bundle_candidates(project)
    for relative, source in filter_paths_for_publish(files).items():
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return destination

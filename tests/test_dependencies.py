"""pyproject.toml declares exactly the distributions the shipped packages import.

The rule: every import (at any depth, inside functions too) of the wheel's packages
resolves to a distribution that is declared, and every declared distribution is
imported. [project.dependencies] holds those the app needs to run at all; each other
extra but `test` (a feature extra: tensorboard, mlflow) holds distributions imported only
inside functions, behind the feature that names it, never in [project.dependencies], and
the `test` extra holds every feature extra so that their tests run.
"""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Modules whose distribution is not the one their top-level name resolves to.
MODULE_DISTRIBUTIONS = {"torch.utils.tensorboard": "tensorboard"}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution a requirement string names (`flwr[simulation]>=1.42` -> flwr)."""
    return normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(module, inside a function) for every absolute import in `tree`."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.append((node.module, in_function))
        in_function = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(tree, False)
    return found


@pytest.fixture(scope="module")
def imported(pyproject) -> list[tuple[str, bool, set[str]]]:
    """(where, inside a function, the distributions it resolves to) for each third-party
    import of the shipped packages; one import may resolve to several installed
    distributions (mlflow: mlflow and mlflow-skinny)."""
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    resolve = importlib.metadata.packages_distributions()
    found = []
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            for module, in_function in imports(ast.parse(path.read_bytes(), str(path))):
                top = module.partition(".")[0]
                if top in packages or top in sys.stdlib_module_names:
                    continue
                explicit = [d for m, d in MODULE_DISTRIBUTIONS.items() if module == m or module.startswith(m + ".")]
                candidates = {normalize(d) for d in explicit or resolve.get(top, [])}
                found.append((f"{path.relative_to(REPO)}: {module}", in_function, candidates))
    unresolved = [where for where, _, candidates in found if not candidates]
    assert not unresolved, f"imports of no installed distribution: {unresolved}"
    return found


def test_the_parser_sees_imports_inside_functions():
    tree = ast.parse("import a.b\nfrom c import d\nfrom . import e\ndef f():\n    from g.h import i\n"
                     "class K:\n    def m(self):\n        import j\n")
    assert imports(tree) == [("a.b", False), ("c", False), ("g.h", True), ("j", True)]


def test_declared_dependencies_are_exactly_the_imported_ones(pyproject, imported):
    project = pyproject["project"]
    required = {requirement_name(r) for r in project["dependencies"]}
    extras = {name: {requirement_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    optional = set().union(*(names for name, names in extras.items() if name != "test"))
    declared = required | optional

    undeclared = [where for where, _, candidates in imported if not candidates & declared]
    assert not undeclared, f"imported but not declared: {undeclared}"
    unused = declared - set().union(*(candidates for _, _, candidates in imported))
    assert not unused, f"declared but never imported: {sorted(unused)}"

    assert not required & optional, f"in [project.dependencies] and an extra: {sorted(required & optional)}"
    eager = [where for where, lazy, candidates in imported if candidates & optional and not lazy]
    assert not eager, f"a feature extra's distribution imported at module level: {eager}"
    assert optional <= extras["test"], f"the test extra lacks {sorted(optional - extras['test'])}"


def test_the_expected_distributions_are_declared(pyproject):
    """The fixed points of the rule above: what the code is known to import (scipy in the
    privacy audit, Pillow for image folders, click for the launcher fl_app/simulate.py) is
    required; test-only and feature-only distributions are not."""
    project = pyproject["project"]
    required = {requirement_name(r) for r in project["dependencies"]}
    assert {"flwr", "torch", "numpy", "opacus", "scipy", "pillow", "click"} <= required
    assert not {"torchvision", "tensorboard", "mlflow-skinny", "hypothesis"} & required
    assert set(project["optional-dependencies"]) == {"tensorboard", "mlflow", "test"}
    opacus = next(r for r in project["dependencies"] if requirement_name(r) == "opacus")
    assert "<1.7" in opacus  # the code uses optimizer.secure_mode and accountant.history

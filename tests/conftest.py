"""Shared fixtures: the real MNIST files, read from ../shared/data (never downloaded)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("FL_APP_MNIST_DIR", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def mnist_dir() -> str:
    """Directory holding MNIST/raw/*-ubyte; the suite fails (not skips) without it."""
    from data.mnist import missing_files

    missing = missing_files(MNIST_DIR)
    assert not missing, f"MNIST files {missing} not found under {MNIST_DIR}/MNIST/raw"
    return str(MNIST_DIR)


@pytest.fixture(scope="session")
def default_run_config() -> dict:
    """The app's [tool.flwr.app.config] defaults."""
    from fl_app.config import project_defaults

    return project_defaults(REPO)


@pytest.fixture(scope="session")
def strategy_args(default_run_config):
    """args(common, **fields) -> StrategyArgs: Flower's keyword arguments `common`, and the
    run-config defaults' value (pyproject) for every field not given."""
    from dataclasses import replace

    from fl_app.assembly import strategy_args as app_strategy_args
    from fl_app.config import AppConfig

    defaults = app_strategy_args(AppConfig.from_run_config(default_run_config), test_set=None)

    def args(common: dict, **fields):
        return replace(defaults, common=common, **fields)

    return args

"""The release gate (strategies/privacy/release.py): a default DP run prints nothing
exact about its clients, on any channel of the server process: our log lines, Flower's
own (sampled, received, failures, SecAgg+ stages) and Flower's end-of-run `[SUMMARY]`
of the `History`. The attacker reads the complete console output; the test knows the
exact figures the strategy computed (spied) and looks for each of them."""

import io
import logging
from contextlib import contextmanager

import numpy as np
import pytest
from federation import run_federation

import strategies.dp_fedavg as dp_fedavg
from strategies.privacy.release import CLIENT_LOG_TEMPLATES, ClientLogFilter, ReleasePolicy

WITHHELD_NAMES = ("median_update_norm", "clip_fraction", "num_rejected", "cohort_size", "train_loss",
                  "train_accuracy", "num_fit_failures", "strategy sampled", "results and",
                  "left out", "client failed")


@pytest.fixture
def central(default_run_config, mnist_dir) -> dict:
    """Central DP over 4 clients sampled at q = 1/2, 2 rounds, 100 samples each."""
    return default_run_config | {
        "data-dir": mnist_dir, "samples-per-client": 100, "eval-samples": 200, "local-epochs": 1,
        "num-server-rounds": 2, "dp-mode": "central", "dp-noise-multiplier": 1.0,
        "dp-clients-per-round": 2.0, "dp-clipping-norm": 0.5, "min-available-clients": 4,
    }


def spy_on_exact_figures(monkeypatch) -> list[float]:
    """Collect every exact per-client figure the strategy computes (norms, statistics)."""
    seen: list[float] = []
    real = dp_fedavg.clipping_statistics

    def spy(norms, clipping_norm, slack):
        statistics = real(norms, clipping_norm, slack)
        seen.extend(float(n) for n in norms)
        seen.extend(v for v in statistics.values() if np.isfinite(v))
        return statistics
    monkeypatch.setattr(dp_fedavg, "clipping_statistics", spy)
    return seen


@contextmanager
def console(capfd):
    """Everything printed meanwhile: stdout, stderr and every record Flower's logger emits
    (its console handler may hold a stream pytest replaced)."""
    from flwr.common.logger import FLOWER_LOGGER

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    FLOWER_LOGGER.addHandler(handler)
    printed: list[str] = []
    try:
        yield printed
    finally:
        FLOWER_LOGGER.removeHandler(handler)
        out = capfd.readouterr()
        printed.append(out.out + out.err + stream.getvalue())


def printed_figures(text: str, figures: list[float]) -> list[str]:
    """The exact figures (as Python prints floats) that appear in `text`."""
    return [repr(f) for f in figures if isinstance(f, float) and f not in (0.0, 1.0) and repr(f) in text]


@pytest.mark.parametrize("clipping", ["server", "client", "adaptive"])
def test_a_default_central_dp_run_prints_no_exact_client_figure(central, mnist_dir, tmp_path, capfd,
                                                                 monkeypatch, clipping):
    figures = spy_on_exact_figures(monkeypatch)
    with console(capfd) as printed:
        run_federation(central | {"dp-clipping": clipping}, 4, mnist_dir, tmp_path / "run")
    text = printed[0]
    assert "[SUMMARY]" in text and "round 2/2" in text  # the channels under test were printed
    assert figures, "the spy saw the round's norms"
    assert printed_figures(text, figures) == []
    assert [name for name in WITHHELD_NAMES if name in text] == []

    figures.clear()
    with console(capfd) as printed:
        run_federation(central | {"dp-clipping": clipping, "dp-release-unprotected-metrics": True}, 4,
                       mnist_dir, tmp_path / "opt-in")
    assert "median_update_norm" in printed[0] and printed_figures(printed[0], figures)  # the test can fail


def test_a_local_dp_run_prints_no_client_metric(default_run_config, mnist_dir, tmp_path, capfd):
    config = default_run_config | {
        "data-dir": mnist_dir, "samples-per-client": 100, "eval-samples": 200, "local-epochs": 1,
        "num-server-rounds": 1, "dp-mode": "local", "dp-target-epsilon": 5.0, "dp-delta": 1e-3,
        "min-available-clients": 3, "batch-size": 20,
    }
    with console(capfd) as printed:
        run_federation(config, 3, mnist_dir, tmp_path)
    assert "[SUMMARY]" in printed[0]
    assert [name for name in ("train_loss", "train_accuracy", "federated_accuracy", "History (loss, distributed)")
            if name in printed[0]] == []


def test_the_log_filter_drops_flowers_client_lines_and_keeps_the_rest():
    policy = ReleasePolicy("central", unprotected=False)
    log_filter = policy.log_filter()
    assert isinstance(log_filter, ClientLogFilter)

    def record(msg: str, module_path: str = "flwr/server/server.py") -> logging.LogRecord:
        return logging.LogRecord("flwr", logging.INFO, module_path, 1, msg, (3, 10), None)

    assert not log_filter.filter(record("configure_fit: strategy sampled %s clients (out of %s)"))
    assert not log_filter.filter(record("aggregate_fit: received %s results and %s failures"))
    assert not log_filter.filter(record("Secure aggregation halted.",
                                        "flwr/server/workflow/secure_aggregation/secaggplus_workflow.py"))
    assert log_filter.filter(record("round %s/%s done"))
    assert ReleasePolicy("central", unprotected=True).log_filter() is None
    assert ReleasePolicy("off", unprotected=False).log_filter() is None
    assert "round %s: a client failed: %s" in CLIENT_LOG_TEMPLATES


def test_history_keeps_only_released_metrics():
    policy = ReleasePolicy("central", unprotected=False)
    metrics = {"epsilon": 1.0, "clipping_norm": 0.4, "median_update_norm": 0.31, "clip_fraction": 0.5,
               "num_rejected": 0, "cohort_size": 7, "noised_unclipped_fraction": 0.6}
    assert policy.metrics(metrics) == {"epsilon": 1.0, "clipping_norm": 0.4, "noised_unclipped_fraction": 0.6}
    assert ReleasePolicy("off", unprotected=False).metrics(metrics) == metrics

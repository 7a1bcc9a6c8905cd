"""`python -m fl_app.audit` end to end on a small federation: no false alarm on a correct
mechanism, and a broken one (noise 10× too small, or none) flagged."""

import json

import numpy as np
import pytest

from fl_app.audit import main, run_audit
from fl_app.run_dir import RunDir


@pytest.fixture
def audited(default_run_config, mnist_dir) -> dict:
    """10 clients × 50 samples, 20 rounds, ε = 1 at δ = 1e-5; with 500 canaries about 250
    join the population and 60 clients are sampled per round. Measured margins: correct
    ε_lower 0.05 (and 0.07–0.09 in 3 runs with 400 canaries over 15 rounds); noise × 0.1
    2.6–3.2 (2 runs, 400 canaries, 15 rounds); no noise 3.6–4.0 (2 runs; 3.4 with 400
    canaries over 15 rounds)."""
    return default_run_config | {
        "data-dir": mnist_dir, "samples-per-client": 50, "eval-samples": 500, "num-server-rounds": 20,
        "dp-mode": "central", "dp-target-epsilon": 1.0, "dp-delta": 1e-5, "dp-clients-per-round": 60.0,
        "min-available-clients": 10,
    }


@pytest.mark.parametrize("noise_scale", [1.0, 0.1, 0.0], ids=["correct", "noise-x0.1", "no-noise"])
def test_the_audit_flags_a_broken_mechanism_and_only_that(audited, tmp_path, noise_scale):
    figures = run_audit(audited, 10, 500, tmp_path, noise_scale=noise_scale, rng=np.random.default_rng(5))
    assert figures["epsilon_reported"] == pytest.approx(1.0, abs=0.02)
    assert json.loads(RunDir(tmp_path).audit.read_text()) == figures
    if noise_scale == 1.0:
        assert figures["epsilon_lower_95"] <= figures["epsilon_reported"]
    else:
        assert figures["epsilon_lower_95"] > figures["epsilon_reported"]
        assert figures["epsilon_estimate"] > 3 * figures["epsilon_reported"]
    if noise_scale == 0.0:
        assert figures["epsilon_lower_95"] >= 3.0


def test_the_audit_refuses_a_run_without_central_dp(capsys):
    local = "dp-mode='local' dp-target-epsilon=1.0"
    assert main(["--num-clients", "3", "--canaries", "10", "--run-config", local]) == 2
    assert capsys.readouterr().err.strip() == ("error: Invalid run-config: dp-mode = 'local' (allowed: 'central'; "
                                               "the audit measures client-level DP-FedAvg)")

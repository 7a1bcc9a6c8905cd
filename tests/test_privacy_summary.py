"""summary.json states every DP run's guarantee in one `privacy` object, equal to the
accountants' figures, with a sentence to paste; a plain run says `"privacy": null`."""

import pytest
import torch
from federation import run_federation

from fl_app.model import build_model
from fl_app.outputs import summary_table
from fl_app.run_dir import RunDir
from strategies.privacy.accounting import ClientLevelAccountant
from strategies.privacy.local_dp import batches_per_epoch, local_noise_multiplier
from strategies.privacy.opacus_compat import create_accountant
from strategies.privacy.statement import PUBLIC_DATASET_SIZE, central_assumptions, round_up


@pytest.fixture
def small(default_run_config, mnist_dir) -> dict:
    return default_run_config | {
        "data-dir": mnist_dir, "samples-per-client": 200, "eval-samples": 300, "local-epochs": 1,
        "num-server-rounds": 2, "min-available-clients": 3, "batch-size": 20,
    }


def summary_of(run_dir) -> dict:
    return RunDir(run_dir).read_summary()


def test_central_dp_summary_states_the_accountants_guarantee(small, mnist_dir, tmp_path):
    config = small | {"dp-mode": "central", "dp-noise-multiplier": 0.0, "dp-target-epsilon": 8.0,
                      "dp-delta": 1e-3, "dp-clients-per-round": 2.0, "dp-clipping": "server",
                      "dp-clipping-norm": 1.0}
    rows = run_federation(config, 3, mnist_dir, tmp_path)
    privacy = summary_of(tmp_path)["privacy"]
    accountant = ClientLevelAccountant("rdp", 1e-3)
    for _ in range(2):
        accountant.step(privacy["noise_multiplier"], 2 / 3)
    assert privacy["epsilon"] == pytest.approx(accountant.epsilon(), rel=1e-12) == rows[-1]["epsilon"]
    assert 0.98 * 8.0 <= privacy["epsilon"] <= 8.0
    assert privacy["mechanisms"] == [{"name": "update_sum", "unit": "client", "sensitivity": "S",
                                      "noise_multiplier": privacy["noise_multiplier"]}]
    assert privacy["effective_noise_multiplier"] == privacy["noise_multiplier"]
    assert {k: privacy[k] for k in ("mode", "level", "target_epsilon", "delta", "sampling_rate",
                                    "rounds_accounted", "accountant", "clipping", "clipping_norm",
                                    "population", "valid_claim", "unprotected_metrics_released")} == {
        "mode": "central", "level": "client", "target_epsilon": 8.0, "delta": 1e-3,
        "sampling_rate": pytest.approx(2 / 3), "rounds_accounted": 2, "accountant": "rdp",
        "clipping": "server", "clipping_norm": 1.0, "population": 3, "valid_claim": True,
        "unprotected_metrics_released": False}
    sentence = (f"(ε = {round_up(privacy['epsilon']):g}, δ = 0.001) client-level DP for 3 clients over 2 rounds, "
                "RDP accountant; trusted server (sees each sampled update)")
    assert privacy["statement"] == sentence
    assert privacy["assumptions"] == central_assumptions(secure_aggregation=False)
    assert "epsilon_against_sampled_clients" not in privacy  # without SecAgg+ no client sees the cohort
    assert f"privacy         {sentence}" in summary_table(summary_of(tmp_path))
    assert RunDir(tmp_path).read_config()["model"] == "tanh-cnn"  # auto: the DP recipe's model
    build_model("tanh-cnn").load_state_dict(torch.load(RunDir(tmp_path).model))


def test_local_dp_summary_states_each_clients_guarantee(small, mnist_dir, tmp_path):
    config = small | {"dp-mode": "local", "dp-target-epsilon": 5.0, "dp-delta": 1e-3}
    run_federation(config, 3, mnist_dir, tmp_path)
    privacy = summary_of(tmp_path)["privacy"]
    n = 180  # 200 samples, 10% held out for validation
    sigma = local_noise_multiplier(target_epsilon=5.0, delta=1e-3, num_samples=n, batch_size=20,
                                   epochs=1, rounds=2, accountant="rdp")
    q = 1 / batches_per_epoch(n, 20)
    expected = create_accountant(mechanism="rdp")
    expected.history = [(sigma, q, 2 * batches_per_epoch(n, 20))]  # every client trained in both rounds
    epsilon = expected.get_epsilon(delta=1e-3)
    assert privacy["epsilon_max"] == pytest.approx(epsilon, rel=1e-9)
    assert privacy["epsilon_mean"] == pytest.approx(epsilon, rel=1e-9) and privacy["epsilon"] == privacy["epsilon_max"]
    assert privacy["epsilon_max"] <= 5.0
    assert (privacy["mode"], privacy["level"], privacy["clients_reported"], privacy["population"]) == (
        "local", "sample", 3, 3)
    assert privacy["noise_multiplier"] == [sigma, sigma] and privacy["sampling_rate"] == [q, q]
    assert privacy["mechanisms"] == [{"name": "dp_sgd_step", "unit": "sample", "sensitivity": 1.0,
                                      "noise_multiplier": sigma}]
    assert privacy["effective_noise_multiplier"] == sigma
    assert (privacy["rounds_accounted"], privacy["target_epsilon"], privacy["delta"], privacy["clipping_norm"]) == (
        2, 5.0, 1e-3, 1.0)
    assert privacy["statement"] == (f"(ε = {round_up(epsilon):g}, δ = 0.001) sample-level DP for each of 3 clients' "
                                    "data (largest ε over clients) over 2 rounds, RDP accountant; "
                                    "each site's record count treated as public")
    assert privacy["assumptions"][0] == PUBLIC_DATASET_SIZE
    assert any(privacy["statement"] in line for line in summary_table(summary_of(tmp_path)))


def test_a_plain_run_says_privacy_null(small, mnist_dir, tmp_path):
    run_federation(small | {"num-server-rounds": 1}, 3, mnist_dir, tmp_path)
    summary = summary_of(tmp_path)
    assert "privacy" in summary and summary["privacy"] is None
    assert not any(line.startswith("privacy") for line in summary_table(summary))


def test_the_stated_epsilon_is_rounded_up():
    assert [round_up(e) for e in (1.9949, 1.99, 0.12301, 4.990165, 12.34)] == [2.0, 1.99, 0.124, 5.0, 12.4]


def test_local_dp_reports_reveal_a_sites_dataset_size_and_the_statement_says_so(small, mnist_dir, tmp_path):
    """The attack: the server (or a reader of summary.json) tells n = 180 from n = 179 at a
    bucket edge of ceil(n/B) through the batch rate and σ a site reports. Sample-level DP
    under add/remove of one record does not cover that, so the statement must declare the
    record count public (the claim on 2f896fe did not)."""
    config = small | {"dp-mode": "local", "dp-target-epsilon": 5.0, "dp-delta": 1e-3, "num-server-rounds": 1,
                      "samples-per-client": 200}
    run_federation(config, 3, mnist_dir, tmp_path)
    privacy = summary_of(tmp_path)["privacy"]
    reported_rate = privacy["sampling_rate"][0]

    def candidates(rate: float) -> set[int]:
        return {n for n in range(100, 260) if 1 / batches_per_epoch(n, 20) == rate}
    assert 180 in candidates(reported_rate) and 181 not in candidates(reported_rate)  # n = 180 vs 181 told apart
    assert PUBLIC_DATASET_SIZE in privacy["assumptions"]
    assert "record count treated as public" in privacy["statement"]

"""The privacy ledger: what a DP-FedAvg round declares it releases, the noise multiplier
the declared mechanisms compose to, and the ε summary.json states from it."""

import math

import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from flwr.common import ndarrays_to_parameters
from test_dp_fedavg import GLOBAL, manager, result, strategy, trained

from strategies.privacy.accounting import calibrate_noise_multiplier, epsilon_after
from strategies.privacy.adaptive_clipping import update_noise_multiplier
from strategies.privacy.ledger import Mechanism, effective_noise_multiplier
from strategies.privacy.statement import round_up


def dp_accounting_rdp_epsilon(sigma: float, q: float, rounds: int, delta: float) -> float:
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), rounds))
    return accountant.get_epsilon(delta)


def test_one_mechanism_keeps_its_noise_multiplier_and_several_compose_by_inverse_squares():
    update = Mechanism("update_sum", "client", "S", 1.3)
    assert effective_noise_multiplier([update]) == 1.3
    count = Mechanism("unclipped_count", "client", 0.5, 4.0)
    assert effective_noise_multiplier([update, count]) == pytest.approx((1.3 ** -2 + 4.0 ** -2) ** -0.5, rel=1e-15)
    assert effective_noise_multiplier([update, update]) == pytest.approx(1.3 / math.sqrt(2), rel=1e-15)
    assert update.sensitivity_value(0.7) == 0.7 and count.sensitivity_value(0.7) == 0.5
    assert count.as_dict() == {"name": "unclipped_count", "unit": "client", "sensitivity": 0.5, "noise_multiplier": 4.0}


def test_the_ledger_refuses_what_it_cannot_compose():
    with pytest.raises(ValueError, match="at least one mechanism"):
        effective_noise_multiplier([])
    with pytest.raises(ValueError, match=r"different units \['client', 'sample'\]"):
        effective_noise_multiplier([Mechanism("a", "client", "S", 1.0), Mechanism("b", "sample", 1.0, 1.0)])
    with pytest.raises(ValueError, match="unit must be one of"):
        Mechanism("a", "user", "S", 1.0)
    with pytest.raises(ValueError, match="sensitivity must be > 0 or 'S', got 'C'"):
        Mechanism("a", "client", "C", 1.0)
    with pytest.raises(ValueError, match="sensitivity must be > 0"):
        Mechanism("a", "client", 0.0, 1.0)
    with pytest.raises(ValueError, match="noise multiplier must be > 0"):
        Mechanism("a", "client", 1.0, 0.0)


@pytest.mark.parametrize("clipping, secure", [("server", False), ("client", True), ("adaptive", False)])
def test_dp_fedavg_declares_what_it_releases_and_accounts_the_sigma_they_compose_to(clipping, secure):
    """The update sum (sensitivity S, σ_Δ) and, with adaptive clipping, the centred count
    (sensitivity ½, noise std σ_b): composed, exactly the σ the run was configured with."""
    sigma, sigma_b = 1.7, 2.0
    s = strategy(clipping=clipping, secure_aggregation=secure, noise_multiplier=sigma, clipped_count_stddev=sigma_b,
                 clients_per_round=2)
    declared = [m.as_dict() for m in s.mechanisms()]
    if clipping == "adaptive":
        assert declared == [
            {"name": "update_sum", "unit": "client", "sensitivity": "S",
             "noise_multiplier": update_noise_multiplier(sigma, sigma_b)},
            {"name": "unclipped_count", "unit": "client", "sensitivity": 0.5, "noise_multiplier": sigma_b / 0.5}]
    else:
        assert declared == [{"name": "update_sum", "unit": "client", "sensitivity": "S", "noise_multiplier": sigma}]
    assert s.round_noise_multiplier == pytest.approx(sigma, rel=1e-12)
    cm = manager(10)
    for r in (1, 2):
        s.configure_fit(r, ndarrays_to_parameters(GLOBAL), cm)
        s.aggregate_fit(r, [result("c0", trained(0, 0.5))] if not secure else [], [])
    assert s.accountant.state_dict()["history"] == [[s.round_noise_multiplier, 0.2, 2]]
    privacy = s.summary()["privacy"]
    assert privacy["mechanisms"] == declared and privacy["secure_aggregation"] is secure
    assert privacy["effective_noise_multiplier"] == s.round_noise_multiplier
    # the stated ε follows from the ledger's σ, q and the rounds alone (Google's dp_accounting, RDP)
    recomputed = dp_accounting_rdp_epsilon(privacy["effective_noise_multiplier"], privacy["sampling_rate"],
                                           privacy["rounds_accounted"], privacy["delta"])
    assert privacy["epsilon"] == pytest.approx(recomputed, rel=1e-3)
    if secure:  # SecAgg+ shows the sampled clients their cohort: against them, the same rounds at q = 1
        against_clients = dp_accounting_rdp_epsilon(privacy["effective_noise_multiplier"], 1.0,
                                                    privacy["rounds_accounted"], privacy["delta"])
        assert privacy["epsilon_against_sampled_clients"] == pytest.approx(against_clients, rel=1e-3)
        assert privacy["epsilon_against_sampled_clients"] > 2 * privacy["epsilon"]  # 3.83 against 1.37
        assert privacy["statement_against_sampled_clients"].startswith(
            f"(ε = {round_up(privacy['epsilon_against_sampled_clients']):g}, δ = {privacy['delta']:g}) client-level DP")
    else:
        assert "epsilon_against_sampled_clients" not in privacy


def test_the_uncentred_count_would_have_cost_more_than_the_stated_epsilon():
    """Issue 28: the uncentred count Σ_k b_k moves by 1, not ½. Declared with that
    sensitivity and the same noise, the ledger composes to (σ⁻² + ¾σ_b⁻²)^(−1/2) < σ, and
    the recipe (q = 0.1, 50 rounds, δ = 1e-5, σ_b = 5) calibrated for ε = 2 really spent
    about 2.15; the centred count declares ½ and spends what is stated."""
    q, rounds, delta, sigma_b = 0.1, 50, 1e-5, 5.0
    sigma = calibrate_noise_multiplier(2.0, delta, q, rounds, "rdp")
    update = Mechanism("update_sum", "client", "S", update_noise_multiplier(sigma, sigma_b))
    centred = Mechanism("unclipped_count", "client", 0.5, sigma_b / 0.5)
    uncentred = Mechanism("unclipped_count", "client", 1.0, sigma_b / 1.0)
    stated = epsilon_after(sigma, q, rounds, delta, "rdp")
    assert effective_noise_multiplier([update, centred]) == pytest.approx(sigma, rel=1e-12)
    old = effective_noise_multiplier([update, uncentred])
    assert old == pytest.approx((sigma ** -2 + 0.75 * sigma_b ** -2) ** -0.5, rel=1e-12)
    assert stated <= 2.0 < 2.1 < epsilon_after(old, q, rounds, delta, "rdp") < 2.2


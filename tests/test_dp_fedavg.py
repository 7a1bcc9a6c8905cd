"""DPFedAvg: sampling, clipping modes, noise, accounting and the budget stop."""

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from opacus.accountants import RDPAccountant

from strategies.dp_fedavg import DPFedAvg
from strategies.fedavg import WeightedFedAvg
from strategies.privacy.accounting import ClientLevelAccountant
from strategies.privacy.mechanism import clip_update, model_delta
from strategies.privacy.randomness import DPRandomness
from strategies.privacy.statement import round_up
from strategies.screening import UpdateScreen
from strategies.tensors import read_arrays
from strategies.wire import CLIENT_CLIP_NORM

OK = Status(code=Code.OK, message="")
SHAPES = [(4, 3), (5,)]
GLOBAL = [np.full(s, 0.5, dtype=np.float32) for s in SHAPES]


class Proxy(ClientProxy):
    """A registered client that is never called: the tests hand results in directly."""

    def get_properties(self, *a, **k): raise AssertionError("not called")
    def get_parameters(self, *a, **k): raise AssertionError("not called")
    def fit(self, *a, **k): raise AssertionError("not called")
    def evaluate(self, *a, **k): raise AssertionError("not called")
    def reconnect(self, *a, **k): raise AssertionError("not called")


def manager(n: int) -> SimpleClientManager:
    cm = SimpleClientManager()
    for i in range(n):
        cm.register(Proxy(f"c{i:03d}"))
    return cm


def strategy(release_unprotected_metrics: bool = False, **kw) -> DPFedAvg:
    """DPFedAvg around the plain step (`WeightedFedAvg`) with these values unless `kw` sets them."""
    initial = ndarrays_to_parameters(GLOBAL)
    args = dict(clipping="server", clipping_norm=1.0, noise_multiplier=1.0, clients_per_round=5,
                accountant=ClientLevelAccountant("rdp", 1e-5), target_epsilon=None, rounds=None,
                server_learning_rate=1.0, target_quantile=0.5, clip_learning_rate=0.2,
                clipped_count_stddev=1.0, secure_aggregation=False,
                randomness=DPRandomness(3, reproducible=True), min_available_clients=2)
    return DPFedAvg(WeightedFedAvg(initial_parameters=initial),
                    UpdateScreen(initial, log_rejections=release_unprotected_metrics), **(args | kw))


def trained(seed: int, scale: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(g + scale * rng.normal(size=g.shape)).astype(np.float32) for g in GLOBAL]


def result(cid: str, arrays, **metrics):
    return Proxy(cid), FitRes(OK, ndarrays_to_parameters(arrays), 100, metrics)


def test_sampling_rate_is_clients_per_round_over_population():
    s = strategy(clients_per_round=5)
    s.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager(20))
    assert s.sampling_rate == 0.25 and len(s.population) == 20


def test_cohorts_are_poisson_with_rate_q():
    s, cm = strategy(clients_per_round=6), manager(30)
    sizes = [len(s.configure_fit(r, ndarrays_to_parameters(GLOBAL), cm)) for r in range(1, 401)]
    q, n = 0.2, 30
    assert abs(np.mean(sizes) - q * n) < 4 * np.sqrt(n * q * (1 - q) / len(sizes))
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.25)


def test_more_clients_per_round_than_population_is_refused():
    with pytest.raises(ValueError, match="dp-clients-per-round = 12 exceeds the population of 10"):
        strategy(clients_per_round=12).configure_fit(1, ndarrays_to_parameters(GLOBAL), manager(10))


def test_large_delta_is_warned_about(caplog):
    strategy(accountant=ClientLevelAccountant("rdp", 0.2)).configure_fit(
        1, ndarrays_to_parameters(GLOBAL), manager(10))
    assert "dp-delta = 0.2 is not below 1/population = 0.1" in caplog.text


def test_client_and_server_clipping_give_identical_aggregates():
    updates = [trained(i, scale) for i, scale in enumerate([0.01, 1.0, 5.0, 0.3])]
    server, client = strategy(clipping="server"), strategy(clipping="client")
    cm = manager(10)
    server.configure_fit(1, ndarrays_to_parameters(GLOBAL), cm)
    ins = client.configure_fit(1, ndarrays_to_parameters(GLOBAL), cm)
    assert all(fit_ins.config[CLIENT_CLIP_NORM] == 1.0 for _, fit_ins in ins)
    server_params, server_metrics = server.aggregate_fit(
        1, [result(f"c{i}", u) for i, u in enumerate(updates)], [])
    client_sent = [clip_update(model_delta(u, GLOBAL), 1.0) for u in updates]
    client_params, client_metrics = client.aggregate_fit(
        1, [result(f"c{i}", c) for i, (c, _) in enumerate(client_sent)], [])
    for a, b in zip(parameters_to_ndarrays(server_params), parameters_to_ndarrays(client_params), strict=True):
        np.testing.assert_array_equal(a, b)
    norms = [n for _, n in client_sent]
    assert 0 < np.mean([n > 1.0 for n in norms]) < 1
    assert server_metrics["clip_fraction"] == client_metrics["clip_fraction"] == np.mean([n > 1.0 for n in norms])
    assert server_metrics["median_update_norm"] == pytest.approx(np.median(norms))
    # client mode: the server sees only clipped updates, so their norms are at most S
    assert client_metrics["median_update_norm"] == pytest.approx(np.median(np.minimum(norms, 1.0)))


def test_aggregate_is_global_plus_noised_sum_over_expected_cohort():
    s = strategy(noise_multiplier=1e-9, clients_per_round=4, server_learning_rate=0.5)
    s.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager(8))
    updates = [trained(i, 0.01) for i in range(2)]  # norms below S: not clipped
    params, metrics = s.aggregate_fit(1, [result(f"c{i}", u) for i, u in enumerate(updates)], [])
    expected = [g + 0.5 * (model_delta(updates[0], GLOBAL)[k] + model_delta(updates[1], GLOBAL)[k]) / 4
                for k, g in enumerate(GLOBAL)]
    for got, want in zip(parameters_to_ndarrays(params), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert metrics["clip_fraction"] == 0.0 and metrics["epsilon"] > 0


def test_the_server_schedule_scales_the_step_not_the_release():
    released = []
    steps = []
    for factor in (1.0, 0.25):
        s = strategy(noise_multiplier=1e-9, clients_per_round=4, server_learning_rate=0.5,
                     server_step_factor=lambda server_round, f=factor: f if server_round == 3 else 1.0)
        s.release_observer = released.append
        s.configure_fit(3, ndarrays_to_parameters(GLOBAL), manager(8))
        params, metrics = s.aggregate_fit(3, [result("c0", trained(0, 0.01))], [])
        steps.append([p - g for p, g in zip(parameters_to_ndarrays(params), GLOBAL, strict=True)])
        assert metrics["epsilon"] > 0
    for noised_a, noised_b in zip(*released, strict=True):
        np.testing.assert_allclose(noised_a, noised_b, atol=1e-6)  # the same noised mean is released
    for full, quarter in zip(*steps, strict=True):
        np.testing.assert_allclose(quarter, 0.25 * full, atol=1e-6)


def test_empty_cohort_releases_noise_and_is_accounted():
    s = strategy(noise_multiplier=2.0, clients_per_round=4, clipping_norm=0.5)
    s.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager(8))
    params, metrics = s.aggregate_fit(1, [], [])
    moved = np.concatenate([(p - g).ravel() for p, g in zip(parameters_to_ndarrays(params), GLOBAL, strict=True)])
    assert np.all(moved != 0) and s.accountant.rounds == 1
    assert np.std(moved) == pytest.approx(2.0 * 0.5 / 4, rel=0.5)
    assert metrics["cohort_size"] >= 0 and metrics["epsilon"] > 0


@pytest.mark.parametrize("release", [False, True], ids=["default", "opt-in"])
def test_too_long_client_clipped_update_never_reaches_the_model(caplog, release):
    """Left out whatever the release setting; the log names the client only with the
    opt-in (which client was left out is a figure outside ε), and never its norm."""
    s = strategy(clipping="client", noise_multiplier=1e-9, clients_per_round=2,
                 release_unprotected_metrics=release)
    s.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager(4))
    honest = clip_update(model_delta(trained(0, 0.001), GLOBAL), 1.0)[0]
    cheat = [np.full(sh, 10.0, dtype=np.float32) for sh in SHAPES]
    params, metrics = s.aggregate_fit(1, [result("h", honest), result("x", cheat)], [])
    for got, g, h in zip(parameters_to_ndarrays(params), GLOBAL, honest, strict=True):
        np.testing.assert_allclose(got, g + h / 2, atol=1e-6)
    assert metrics["num_rejected"] == 1
    assert ("left out client x: client-clipped update is longer than S = 1.0" in caplog.text) == release


def rounds_until_the_budget_stops(s: DPFedAvg, cm: SimpleClientManager) -> int:
    """Run empty rounds until `stop_reason` refuses the next; the rounds that ran."""
    server_round = 1
    while s.stop_reason(server_round, cm) is None:
        s.configure_fit(server_round, ndarrays_to_parameters(GLOBAL), cm)
        s.aggregate_fit(server_round, [], [])
        server_round += 1
    return server_round - 1


def test_budget_stops_before_the_round_that_would_exceed_it():
    sigma, q, delta, target = 2.0, 0.1, 1e-5, 1.0  # 11 rounds fit the budget
    reference = RDPAccountant()
    allowed = 0
    while True:
        reference.step(noise_multiplier=sigma, sample_rate=q)
        if reference.get_epsilon(delta) > target:
            break
        allowed += 1
    assert allowed >= 3
    s = strategy(noise_multiplier=sigma, clients_per_round=1, target_epsilon=target)
    cm = manager(10)
    assert rounds_until_the_budget_stops(s, cm) == s.accountant.rounds == allowed
    assert s.accountant.epsilon() <= target
    assert f"round {allowed + 1} would raise epsilon" in s.stop_reason(allowed + 1, cm)


def test_a_first_round_over_budget_never_runs():
    s = strategy(noise_multiplier=0.5, clients_per_round=10, target_epsilon=0.1)
    assert "round 1 would raise epsilon from 0.0000" in s.stop_reason(1, manager(10))


def test_sigma_is_calibrated_to_the_target_when_not_given():
    s = strategy(noise_multiplier=None, target_epsilon=2.0, rounds=20, clients_per_round=5)
    s.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager(50))
    for r in range(20):
        s.aggregate_fit(r + 1, [], [])
    assert 0.98 * 2.0 <= s.accountant.epsilon() <= 2.0
    privacy = s.summary()["privacy"]
    assert privacy["noise_multiplier"] == s.noise_multiplier > 0
    assert privacy["rounds_accounted"] == 20 and privacy["epsilon"] == s.accountant.epsilon()
    assert privacy["statement"] == (f"(ε = {round_up(s.accountant.epsilon()):g}, δ = 1e-05) client-level DP for "
                                    "50 clients over 20 rounds, RDP accountant; trusted server (sees each sampled "
                                    "update); NOT A VALID CLAIM: "
                                    "dp-reproducible-noise = true makes the noise predictable from the public seed")


def test_adaptive_clipping_moves_s_towards_the_update_norms():
    small = [trained(i, 1e-3) for i in range(10)]  # norms ~0.004: all below S
    s = strategy(clipping="adaptive", clipping_norm=1.0, clients_per_round=10,
                 noise_multiplier=0.5, clipped_count_stddev=1.0)
    cm = manager(10)
    for r in range(1, 6):
        s.configure_fit(r, ndarrays_to_parameters(GLOBAL), cm)
        s.aggregate_fit(r, [result(f"c{i}", u) for i, u in enumerate(small)], [])
    assert s.clipping_norm < 0.95
    large = [trained(i, 10.0) for i in range(10)]  # all clipped
    before = s.clipping_norm
    for r in range(6, 11):
        s.configure_fit(r, ndarrays_to_parameters(GLOBAL), cm)
        _, metrics = s.aggregate_fit(r, [result(f"c{i}", u) for i, u in enumerate(large)], [])
    assert s.clipping_norm > 1.05 * before and metrics["clip_fraction"] == 1.0
    assert s.accountant.rounds == 10


def test_secure_aggregation_recovers_the_sum_from_the_mean_and_refuses_a_bad_mean():
    s = strategy(noise_multiplier=1e-9, clients_per_round=4, clipping="client", secure_aggregation=True)
    s.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager(8))
    mean = [np.full(sh, 0.01, dtype=np.float32) for sh in SHAPES]  # what SecAgg+ hands over
    results = [(Proxy(f"c{i}"), FitRes(OK, ndarrays_to_parameters(mean), 1, {})) for i in range(3)]
    params, metrics = s.aggregate_fit(1, results, [])
    for got, g in zip(parameters_to_ndarrays(params), GLOBAL, strict=True):
        np.testing.assert_allclose(got, g + 3 * 0.01 / 4, atol=1e-6)  # K x mean / m
    assert metrics["num_rejected"] == 0
    too_long = [np.full(sh, 10.0, dtype=np.float32) for sh in SHAPES]  # norm > S = 1
    bad = [(Proxy(f"c{i}"), FitRes(OK, ndarrays_to_parameters(too_long), 1, {})) for i in range(3)]
    params, metrics = s.aggregate_fit(2, bad, [])
    assert metrics["num_rejected"] == 3
    for got, g in zip(parameters_to_ndarrays(params), GLOBAL, strict=True):  # no configure_fit: same start
        np.testing.assert_allclose(got, g, atol=1e-6)  # noise only (σ ≈ 0)


def test_a_target_with_a_fixed_sigma_warns_how_many_rounds_the_budget_allows(caplog):
    """σ and a target together: the target is a budget stop, announced before round 1 with
    the round at which it will stop, which is where the run does stop."""
    s = strategy(noise_multiplier=2.0, clients_per_round=1, target_epsilon=1.0, rounds=30)
    cm = manager(10)
    allowed = rounds_until_the_budget_stops(s, cm)
    assert 3 <= allowed < 30
    assert (f"dp-noise-multiplier = 2 with dp-target-epsilon = 1: the budget allows {allowed} of the 30 "
            f"rounds, so training stops after round {allowed}") in caplog.text


def test_a_target_within_the_rounds_budget_gives_no_warning(caplog):
    s = strategy(noise_multiplier=5.0, clients_per_round=1, target_epsilon=8.0, rounds=5)
    s.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager(10))
    assert "the budget allows" not in caplog.text


@pytest.mark.parametrize("optimizer", [False, True], ids=["plain-step", "fedavgm"])
def test_a_strategy_restored_from_its_state_releases_what_the_original_does(optimizer):
    """state_dict() after round 1 restores accountant, S, population, generators
    (reproducible mode) and the inner strategy's state: round 2 is the same model."""
    from flwr.server.strategy import FedAvgM

    from strategies.state import load_strategy_state, strategy_state

    def build():
        s = strategy(clipping="adaptive", clipped_count_stddev=2.0, clients_per_round=4)
        if optimizer:
            s.inner = FedAvgM(initial_parameters=ndarrays_to_parameters(GLOBAL), server_momentum=0.9)
        return s

    cm, updates = manager(8), [result(f"c{i}", trained(i, 0.5)) for i in range(3)]
    original = build()
    original.configure_fit(1, ndarrays_to_parameters(GLOBAL), cm)
    params, _ = original.aggregate_fit(1, updates, [])
    restored = build()
    load_strategy_state(restored, strategy_state(original))
    assert restored.clipping_norm == original.clipping_norm != 1.0 and restored.accountant.rounds == 1
    released = []
    for s in (original, restored):
        s.configure_fit(2, params, cm)
        released.append(parameters_to_ndarrays(s.aggregate_fit(2, updates, [])[0]))
    for a, b in zip(*released, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("clipping", ["server", "client"])
def test_the_noised_sum_reads_one_update_at_a_time(clipping, monkeypatch):
    """Screening, clipping and summing go through the cohort's replies one at a time: as
    arrays the server holds the update it reads (and the one before), not the round's."""
    import weakref

    import strategies.screening

    s = strategy(clipping=clipping, noise_multiplier=1e-9, clients_per_round=12)
    alive: list[weakref.ref] = []
    most_alive = []

    def tracked(parameters):
        most_alive.append(sum(ref() is not None for ref in alive))
        update = read_arrays(parameters)
        alive.append(weakref.ref(update[0]))
        return update

    monkeypatch.setattr(strategies.screening, "read_arrays", tracked)
    s.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager(12))
    updates = [trained(i, 0.01) for i in range(12)]
    if clipping == "client":
        updates = [clip_update(model_delta(u, GLOBAL), 1.0)[0] for u in updates]
    params, metrics = s.aggregate_fit(1, [result(f"c{i}", u) for i, u in enumerate(updates)], [])
    assert len(most_alive) == 12 and max(most_alive) <= 1
    assert metrics["num_rejected"] == 0 and metrics["clip_fraction"] == 0.0
    deltas = updates if clipping == "client" else [model_delta(u, GLOBAL) for u in updates]
    for k, (got, g) in enumerate(zip(parameters_to_ndarrays(params), GLOBAL, strict=True)):
        np.testing.assert_allclose(got, g + sum(d[k] for d in deltas) / 12, atol=1e-6)

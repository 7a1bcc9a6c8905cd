"""Every declared sensitivity checked against the app's own code on adversarial
neighbouring cohorts (`strategies.privacy.sensitivity`, `python -m fl_app.audit
--mechanisms`), and the check's power: it fails an understated sensitivity and the
uncentred count of issue 28."""

import subprocess
import sys

import numpy as np
import pytest
from test_dp_fedavg import GLOBAL, strategy

from fl_app.audit import fit_results, main, mechanism_audit
from fl_app.config import APP_DIR, project_defaults
from strategies.privacy.sensitivity import (
    Neighbours,
    Reply,
    check_sensitivity,
    direction,
    neighbouring_cohorts,
    scaled,
    sent,
)

S = 0.5  # the project's dp-clipping-norm


def audited(**overrides) -> dict:
    return project_defaults(APP_DIR) | {"dp-mode": "central", "dp-noise-multiplier": 1.0} | overrides


def by_case(checks) -> dict[tuple[str, str], float]:
    return {(c.case, c.mechanism): c.change for c in checks}


@pytest.mark.parametrize("clipping", ["server", "client", "adaptive"])
def test_no_client_moves_a_released_quantity_by_more_than_its_declared_sensitivity(clipping):
    checks, mechanisms = mechanism_audit(audited(**{"dp-clipping": clipping}), rng=np.random.default_rng(1))
    assert mechanisms == (2 if clipping == "adaptive" else 1)
    assert len(checks) == 3 * 11 * mechanisms and all(c.ok for c in checks)
    change = by_case(checks)
    # client clipping: an update longer than S (beyond float32 rounding) is refused, not clipped
    longer = ("far-above-S", "just-above-C")
    refused = ("nan", "inf", "wrong-shape", "wrong-dtype", "failed") + (longer if clipping == "client" else ())
    for others in ("alone", "one-other", "three-others"):
        for client in ("at-S", "huge-example-count") + (() if clipping == "client" else longer):
            assert change[f"{others}+{client}", "update_sum"] == pytest.approx(S, rel=1e-5)  # the bound is reached
        assert change[f"{others}+just-below-C", "update_sum"] == pytest.approx(S * (1 - 1e-4), rel=1e-5)
        assert 0 < change[f"{others}+tiny", "update_sum"] < 1e-5 * S
        for client in refused:
            assert change[f"{others}+{client}", "update_sum"] == 0.0
    if clipping == "adaptive":  # every accepted client moves the centred count by exactly ½
        moved = [c.change for c in checks if c.mechanism == "unclipped_count"]
        assert sorted(set(moved)) == [0.0, 0.5] and moved.count(0.5) == 3 * 6


def test_the_centred_count_moves_down_for_a_clipped_client_and_up_for_an_unclipped_one():
    s = strategy(clipping="adaptive", clipping_norm=S)
    rng = np.random.default_rng(0)
    others = [Reply(sent(GLOBAL, scaled(direction(GLOBAL, rng), f * S), False)) for f in (0.5, 3.0)]
    base = s.unnoised_round(1, fit_results(others)).unclipped_count
    for factor, step in ((1 + 1e-4, -0.5), (1 - 1e-4, 0.5)):
        client = Reply(sent(GLOBAL, scaled(direction(GLOBAL, rng), factor * S), False))
        assert s.unnoised_round(1, fit_results([client, *others])).unclipped_count == base + step


def test_the_check_fails_the_uncentred_count_of_issue_28():
    """Σ_k 1[‖Δ_k‖ ≤ C] over the norms the strategy measures moves by 1 when an unclipped
    client joins: twice the ½ the noise was calibrated for."""
    s = strategy(clipping="adaptive", clipping_norm=S)

    def uncentred(cohort):
        norms = s.unnoised_round(1, fit_results(cohort)).norms
        return {"unclipped_count": float(sum(n <= s.clipping_norm for n in norms))}

    cases = neighbouring_cohorts(GLOBAL, S, sends_deltas=False, foreign_clients=True, rng=np.random.default_rng(2))
    checks = check_sensitivity(uncentred, {"unclipped_count": 0.5}, cases)
    failed = {c.case for c in checks if not c.ok}
    assert {c.change for c in checks if not c.ok} == {1.0}
    assert failed >= {f"{o}+{c}" for o in ("alone", "one-other", "three-others") for c in ("just-below-C", "tiny")}


def test_an_understated_sensitivity_is_flagged():
    checks, _ = mechanism_audit(audited(), sensitivity_scale=0.5, rng=np.random.default_rng(1))
    violations = [c for c in checks if not c.ok]
    # every accepted client moves the count by ½ > ¼; all but the tiny update move the sum by > S/2
    assert len(violations) == 3 * 6 + 3 * 5
    assert all(c.change == pytest.approx(2 * c.bound, rel=1e-3) for c in violations)


def test_a_quantity_the_ledger_does_not_declare_is_refused():
    case = Neighbours("alone+x", (), Reply(None))
    with pytest.raises(ValueError, match=r"alone\+x: the round releases \['a', 'b'\], the ledger declares \['a'\]"):
        check_sensitivity(lambda cohort: {"a": 0.0, "b": 0.0}, {"a": 1.0}, [case])


def test_secure_aggregation_keeps_every_client_within_s():
    """SecAgg+ cannot run with fewer than 2 sampled clients. When a cohort of one released
    noise only (on 2f896fe), a second client added both clients' updates: ‖Δ_A + Δ_X‖ up
    to 2S (the check found it, `one-other+at-S`). A cohort of one now sends its clipped
    update as it is (fl_app/secure_aggregation.py), so no neighbour moves the sum by more
    than S."""
    checks, mechanisms = mechanism_audit(audited(**{"dp-clipping": "client", "secure-aggregation": True}),
                                         rng=np.random.default_rng(1))
    assert mechanisms == 1 and len(checks) == 3 * 9  # no foreign replies: clients clip and refuse non-finite ones
    assert [c.case for c in checks if not c.ok] == []
    change = by_case(checks)
    assert change["one-other+at-S", "update_sum"] == pytest.approx(S, rel=1e-5)
    assert change["three-others+at-S", "update_sum"] == pytest.approx(S, rel=1e-5)
    assert change["alone+at-S", "update_sum"] == pytest.approx(S, rel=1e-5)  # a cohort of one: its update
    assert change["three-others+nan", "update_sum"] == 0.0  # not sent: the other three are summed


def test_distributed_dp_moves_the_integer_sum_by_at_most_its_declared_l2_and_l1():
    """Distributed DP's released quantity is the sum of the survivors' rounded integer
    vectors (the noise does not depend on it): a client at S moves it by its rounded
    vector, S/γ up to rounding's extra (≤ Δ₂), in L1 within Δ₁; a client that sends
    nothing (non-finite, failed) moves it by nothing; 0.99 × the declared Δ₂ is flagged."""
    config = audited(**{"dp-mode": "distributed", "dp-clipping": "client", "secure-aggregation": True})
    checks, mechanisms = mechanism_audit(config, rng=np.random.default_rng(1))
    assert mechanisms == 1 and len(checks) == 3 * 9 * 2
    assert [c.case for c in checks if not c.ok] == []
    change, bound = by_case(checks), {c.mechanism: c.bound for c in checks}
    assert bound["update_sum (L1)"] == pytest.approx(8 * bound["update_sum"])  # √d' Δ₂, d' = 64
    for case in ("alone+at-S", "one-other+far-above-S", "three-others+at-S"):
        assert 0.99 * bound["update_sum"] < change[case, "update_sum"] <= bound["update_sum"]
        assert change[case, "update_sum"] <= change[case, "update_sum (L1)"] <= bound["update_sum (L1)"]
    assert change["three-others+nan", "update_sum"] == change["three-others+failed", "update_sum"] == 0.0
    flagged, _ = mechanism_audit(config, sensitivity_scale=0.99, rng=np.random.default_rng(1))
    assert {c.case for c in flagged if not c.ok} >= {"alone+at-S", "one-other+at-S", "three-others+far-above-S"}


def test_the_cli_prints_one_line_per_check_and_the_count(capsys):
    assert main(["--mechanisms"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "mechanisms=2 violations=0" and len(lines) == 3 * 11 * 2 + 1
    assert lines[0].split()[:3] == ["ok", "alone+at-S", "update_sum"]


def test_the_cli_exits_1_on_an_understated_sensitivity():
    out = subprocess.run([sys.executable, "-m", "fl_app.audit", "--mechanisms", "--run-config", "dp-clipping='server'",
                          "--fault", "sensitivity-scale=0.5"], capture_output=True, text=True, cwd=APP_DIR)
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1] == "mechanisms=1 violations=15"
    assert "VIOLATION  alone+at-S" in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["--mechanisms", "--fault", "noise-scale=0.5"], "--fault noise-scale=F is for the canary audit, not --mechanisms"),
    (["--mechanisms", "--fault", "count-sensitivity=2"],
     "--fault count-sensitivity=F is for the canary audit, not --mechanisms"),
    (["--num-clients", "3", "--fault", "sensitivity-scale=0.5"], "--fault sensitivity-scale=F needs --mechanisms"),
    (["--mechanisms", "--fault", "sensitivity-scale=0"], "allowed: noise-scale=F with 0 <= F < 1"),
    ([], "--num-clients is required (unless --mechanisms)"),
])
def test_the_cli_refuses_a_fault_of_the_other_mode(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_mechanism_audit_refuses_a_run_without_central_dp(capsys):
    assert main(["--mechanisms", "--run-config", "dp-mode='local' dp-target-epsilon=1.0"]) == 2
    assert capsys.readouterr().err.strip() == ("error: Invalid run-config: dp-mode = 'local' (allowed: 'central' or "
                                               "'distributed'; the audit checks client-level DP-FedAvg)")

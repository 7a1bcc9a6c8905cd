import json

import torch

from fl_app.model import Net, seeded_net
from fl_app.outputs import HISTORY_FIELDS, RunRecorder, new_run_dir
from fl_app.task import get_weights

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(r: int, acc: float) -> dict:
    return {"round": r, "centralized_loss": 1.0 / (r + 1), "centralized_accuracy": acc,
            "federated_loss": None if r == 0 else 0.5, "federated_accuracy": None if r == 0 else acc,
            "num_fit_clients": 0 if r == 0 else 3, "seconds": 1.5}


def test_run_directory_holds_every_output(tmp_path, caplog):
    run_dir = new_run_dir(tmp_path / "outs", run_id=123)
    assert run_dir.name.endswith("-run123")
    recorder = RunRecorder(run_dir, {"seed": 1}, num_rounds=2)
    for r, acc in enumerate([0.1, 0.8, 0.7]):
        recorder.record(row(r, acc))
    weights = get_weights(seeded_net(3))
    summary = recorder.finish(weights)

    assert json.loads((run_dir / "config.json").read_text()) == {"seed": 1}
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [0, 1, 2]
    assert all(set(HISTORY_FIELDS) <= set(h) for h in history)
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == summary
    assert (saved["rounds"], saved["final_accuracy"], saved["best_accuracy"], saved["best_round"]) == (2, 0.7, 0.8, 1)
    assert saved["wall_seconds"] >= 0
    net = Net()
    net.load_state_dict(torch.load(run_dir / "model.pt"))
    assert all((a == b).all() for a, b in zip(get_weights(net), weights))
    png = (run_dir / "curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert "round 1/2 | test acc 80.00% loss 0.5000 | clients 3 | 1.5 s" in caplog.text
    assert str(run_dir) in caplog.text


def test_run_directories_never_collide(tmp_path):
    dirs = {new_run_dir(tmp_path, run_id=1) for _ in range(3)}
    assert len(dirs) == 3

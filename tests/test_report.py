"""`python -m fl_app.report`: valid PNGs of sensible size from run directories, and a
clear refusal of a directory that is not a run."""

import struct
import subprocess
import sys
from pathlib import Path

from fl_app.report import main
from fl_app.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def fake_run(path: Path, config: dict, epsilon: bool, rounds: int = 4) -> Path:
    path.mkdir(parents=True)
    run = RunDir(path)
    run.write_config(config)
    rows = []
    for r in range(rounds + 1):
        row = {"round": r, "centralized_accuracy": 0.1 + 0.2 * r, "centralized_loss": 2.3 / (r + 1),
               "federated_accuracy": None if r == 0 else 0.2 * r, "federated_loss": None if r == 0 else 2 / r,
               "num_fit_clients": 0 if r == 0 else 3, "num_fit_failures": int(r == 2), "seconds": 1.0}
        if epsilon and r:
            row["epsilon"] = 0.5 * r
        rows.append(row)
    run.write_history(rows)
    statement = "(ε = 2, δ = 1e-05) client-level DP for 3 clients over 4 rounds, RDP accountant"
    summary = {"num_nodes": 3, "privacy": {"epsilon": 2.0, "statement": statement} if epsilon else None}
    run.write_summary(summary)
    return path


def test_report_overlays_runs_and_writes_every_plot(tmp_path, default_run_config, mnist_dir, capsys):
    config = default_run_config | {"data-dir": mnist_dir, "partitioner": "dirichlet"}
    a = fake_run(tmp_path / "run-a", config, epsilon=True)
    b = fake_run(tmp_path / "run-b", config, epsilon=False)
    assert main([str(a), str(b), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out.splitlines()
    written = {Path(line.removeprefix("wrote ")).name for line in out if line.startswith("wrote ")}
    assert "run-a: (ε = 2, δ = 1e-05) client-level DP for 3 clients over 4 rounds, RDP accountant" in out
    assert written == {"accuracy.png", "loss.png", "epsilon.png", "clients.png", "label_distribution.png"}
    for name in written:
        path = tmp_path / "report" / name
        width, height = png_size(path)
        assert 500 <= width <= 3000 and 300 <= height <= 2000, (name, width, height)
        assert path.stat().st_size > 15_000, name  # a drawn plot, not an empty canvas


def test_report_without_dp_or_data_skips_those_plots(tmp_path, default_run_config, capsys):
    run = fake_run(tmp_path / "run", default_run_config | {"data-dir": str(tmp_path / "nowhere")}, epsilon=False)
    assert main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "label_distribution.png skipped: MNIST not found" in out
    assert sorted(p.name for p in RunDir(run).report.iterdir()) == ["accuracy.png", "clients.png", "loss.png"]


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "fl_app.report", str(tmp_path / "empty")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: '{tmp_path / 'empty'}' is not a run directory (no "
                                     "config.json or history.jsonl); give the directories that runs "
                                     "write under output-dir")
    assert not RunDir(tmp_path / "empty").report.exists()

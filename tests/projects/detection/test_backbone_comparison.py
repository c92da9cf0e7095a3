"""experiments/backbone_comparison.py: commands it runs, results.json layout, resuming, table."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def test_runs_train_then_sweep_per_seed_and_resumes(load_script, tmp_path, monkeypatch, capsys):
    exp = load_script("projects/detection/experiments/backbone_comparison.py")
    calls = []

    def fake_run(cmd, log):
        calls.append(cmd)
        if "tools/sweep_boxes_steps.py" in cmd:
            out = Path(cmd[cmd.index("--output-dir") + 1])
            out.mkdir(parents=True)
            seed = float(cmd[cmd.index("SEED") + 1])
            # tools/sweep_boxes_steps.py exits 2 when --seed and the SEED override disagree
            assert cmd[cmd.index("--seed") + 1] == cmd[cmd.index("SEED") + 1]
            rows = [
                {"boxes": b, "steps": s, "metrics": {"bbox/AP": 10 * seed + b / 100 + s}}
                for b in (100, 300) for s in (1, 4)
            ]  # fmt: skip
            (out / "sweep.json").write_text(json.dumps({"rows": rows}))
        return 1.5

    monkeypatch.setattr(exp, "_run", fake_run)
    argv = ["x", "--recipes", "lite0", "--datasets", "glyphs", "--seeds", "0,1",
            "--output", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    exp.main()
    assert len(calls) == 4  # train + sweep for each seed
    train_cmd = calls[0]
    assert "projects/detection/diffdet_effnetlite0_toy.yaml" in train_cmd
    assert train_cmd[train_cmd.index("MODEL.DiffusionDet.NUM_CLASSES") + 1] == "10"
    results = json.loads((tmp_path / "results.json").read_text())
    entry = results["lite0"]["glyphs"]
    assert entry["100-1"] == [2.0, 12.0] and entry["300-4"] == [7.0, 17.0]
    assert entry["seeds"] == ["0", "1"]
    assert "| lite0 | glyphs | 0,1 | 7.00 ± 7.07 |" in capsys.readouterr().out
    exp.main()  # everything recorded: nothing runs again
    assert len(calls) == 4

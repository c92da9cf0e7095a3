"""A real 2-process DistributedDataParallel run on CPU (gloo) through ``launch``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def test_two_process_gloo_training_keeps_replicas_identical(tmp_path):
    script = tmp_path / "run_ddp.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(REPO)!r})
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            import torch
            import toy_task  # registers ToyRegression in every spawned process
            from diffvision.engine import comm
            from diffvision.engine.defaults import default_setup, load_config
            from diffvision.engine.launch import launch
            from diffvision.engine.run import train

            def main(out):
                cfg = load_config("", ["MODEL.META_ARCHITECTURE", "ToyRegression",
                    "MODEL.DEVICE", "cpu", "OUTPUT_DIR", out, "SEED", "3",
                    "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "0"])
                results = train(default_setup(cfg))  # the toy evaluation runs on every rank
                torch.save({{"world": comm.get_world_size(), "mse": results["mse"]}},
                           out + f"/rank{{comm.get_rank()}}.pt")

            if __name__ == "__main__":
                launch(main, 2, use_cuda=False, args=({str(tmp_path)!r},))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0["world"] == rank1["world"] == 2
    # Each rank draws different batches (seed + rank), yet DDP's gradient averaging keeps the
    # replicas identical, so both evaluate to exactly the same error.
    assert rank0["mse"] == rank1["mse"]
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "log.txt.rank1").is_file()

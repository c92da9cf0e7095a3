"""A real 2-process DistributedDataParallel run on CPU (gloo) through ``launch``, checked against
one process on the same global batch: it fails if the gradients were not averaged (SGD: the
step would double) or if both ranks trained on the same samples."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffvision.modeling.weight_files import safe_torch_load

REPO = Path(__file__).resolve().parents[2]


def test_two_gloo_processes_train_like_one_process_on_the_global_batch(tmp_path):
    script = tmp_path / "run_ddp.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(REPO)!r})
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            import torch
            import toy_task  # registers ToyRegression in every spawned process
            from diffvision.utils import comm
            from diffvision.engine.defaults import default_setup, load_config
            from diffvision.engine.launch import launch
            from diffvision.engine.run import train

            def main(out):
                cfg = load_config("", ["MODEL.META_ARCHITECTURE", "ToyRegression",
                    "MODEL.DEVICE", "cpu", "OUTPUT_DIR", out, "SEED", "3",
                    "SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.05",
                    "SOLVER.WARMUP_ITERS", "0", "SOLVER.IMS_PER_BATCH", "8",
                    "DATALOADER.NUM_WORKERS", "0",
                    "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "0", "LOG_PERIOD", "1"])
                cfg = default_setup(cfg)
                # What each rank reads of global batches 0 and 1.
                loader = iter(toy_task.build_train_loader(cfg, start_iter=0))
                seen = [next(loader)["index"] for _ in range(2)]
                results = train(cfg)  # the toy evaluation runs on every rank
                torch.save({{"world": comm.get_world_size(), "mse": results.get("mse"),
                             "seen": seen}}, out + f"/rank{{comm.get_rank()}}.pt")

            if __name__ == "__main__":
                main({str(tmp_path / "one")!r})
                launch(main, 2, use_cuda=False, args=({str(tmp_path / "two")!r},))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = torch.load(tmp_path / "one" / "rank0.pt")
    rank0, rank1 = (torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1))
    assert one["world"] == 1 and rank0["world"] == rank1["world"] == 2
    # Rank r reads slice r of the global batch: together exactly the 1-process batch.
    for it in range(2):
        assert rank0["seen"][it] + rank1["seen"][it] == one["seen"][it]
        assert rank0["seen"][it] != rank1["seen"][it]
    # Same weights as 1 process (up to float summation order); the evaluation gathers over
    # ranks, so both ranks report the metric of the whole test set.
    a = safe_torch_load(tmp_path / "one" / "model_final.pth")["model"]
    b = safe_torch_load(tmp_path / "two" / "model_final.pth")["model"]
    for key in a:
        if a[key].dtype.is_floating_point:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    losses = [json.loads(x)["loss_mse"] for x in (tmp_path / "one" / "metrics.jsonl").open()
              if "loss_mse" in x]  # fmt: skip
    assert losses[-1] < 0.9 * losses[0]  # the weights moved: equality is not trivial
    # The evaluator gathers over ranks: the main process reports the whole test set's metric.
    assert rank0["mse"] == pytest.approx(one["mse"], rel=1e-5) and rank1["mse"] is None
    assert (tmp_path / "two" / "log.txt.rank1").is_file()

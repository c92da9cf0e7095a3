"""tools/sample.py: flags, files and progress."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffvision.engine.cli import run_main
from tests.tool_helpers import REPO, load_tool, one_line_error

pytestmark = pytest.mark.usefixtures("tool_env")


def test_sample_negative_count_is_one_line(tmp_path, capsys):
    """--num-samples -3 gave torch.cat(): expected a non-empty list."""
    status = run_main(
        load_tool("sample").main,
        ["--checkpoint", str(tmp_path / "m.pth"), "--num-samples", "-3",
         "--output", str(tmp_path / "s")],
    )  # fmt: skip
    one_line_error(capsys, status, "argument --num-samples: expected an integer in [1, ")
    assert not (tmp_path / "s").exists()


def test_sample_output_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "s").write_text("keep")
    status = run_main(
        load_tool("sample").main,
        ["--checkpoint", str(tmp_path / "m.pth"), "--output", str(tmp_path / "s")],
    )
    one_line_error(capsys, status, "is a file; expected a folder")
    assert (tmp_path / "s").read_text() == "keep"


def test_sample_missing_checkpoint_is_one_line(tmp_path, capsys):
    status = run_main(
        load_tool("sample").main, ["--checkpoint", str(tmp_path / "m.pth"), "--output", "x"]
    )
    one_line_error(capsys, status, "m.pth does not exist")


@pytest.fixture()
def ddpm_checkpoint(tmp_path):
    """A random tiny DDPM saved the way the engine saves it (model + config)."""
    from diffvision.engine.defaults import load_config
    from diffvision.generation.build import build_ddpm_model

    cfg = load_config(
        str(REPO / "configs/ddpm/toy_instant.yaml"),
        ["INPUT.IMAGE_SIZE", "8", "MODEL.DDPM.UNET.CHANNEL_MULT", "[1, 2]",
         "MODEL.DDPM.UNET.ATTENTION_RESOLUTIONS", "[]"],
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path / "ddpm.pth"
    torch.save({"model": build_ddpm_model(cfg).state_dict(), "config": cfg.dump()}, path)
    return path


def test_sample_reports_progress_and_keeps_the_single_call_result(
    tmp_path, ddpm_checkpoint, capsys
):
    """Batch by batch with an estimate of the time left, and the same images as one
    generate() call over all samples (the batches draw from one generator in order)."""
    from diffvision.generation.checkpoint import load_ddpm_model
    from diffvision.generation.sampling import generate

    sample = load_tool("sample")
    argv = ["--checkpoint", str(ddpm_checkpoint), "--output", str(tmp_path / "s"),
            "--sampler", "ddim", "--steps", "2", "--num-samples", "3", "--batch-size", "2",
            "--device", "cpu", "--seed", "7"]  # fmt: skip
    assert run_main(sample.main, argv) == 0
    out = capsys.readouterr().out
    assert "3 samples in 2 batches" in out and "[2/3]" in out and "[3/3]" in out
    assert "s left" in out
    model, _ = load_ddpm_model(str(ddpm_checkpoint), use_ema=True, device="cpu")
    expected = generate(model, num_samples=3, sampler="ddim", num_steps=2, batch_size=2,
                        generator=torch.Generator().manual_seed(7))  # fmt: skip
    expected = ((expected + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    got = torch.from_numpy(np.load(tmp_path / "s" / "samples.npz")["arr_0"]).permute(0, 3, 1, 2)
    assert (got.int() - expected.int()).abs().max() <= 1  # uint8 rounding only


def test_sample_interrupted_writes_what_is_finished(tmp_path, ddpm_checkpoint, monkeypatch):
    sample = load_tool("sample")
    real, calls = sample.generate, []

    def interrupted_after_one_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sample, "generate", interrupted_after_one_batch)
    argv = ["--checkpoint", str(ddpm_checkpoint), "--output", str(tmp_path / "s"), "--steps",
            "2", "--num-samples", "6", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    assert run_main(sample.main, argv) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape[0] == 2


def test_sample_checkpoint_that_is_a_folder_says_so(tmp_path, capsys):
    status = run_main(
        load_tool("sample").main,
        ["--checkpoint", str(tmp_path), "--output", str(tmp_path / "s")],
    )
    one_line_error(capsys, status, f"{tmp_path} is a folder, expected a weight file")


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--steps", "100000"], "--steps 100000: the model has 1000 diffusion timesteps"),
        (["--ilvr-reference", "{ref}", "--ilvr-factor", "3"], "--ilvr-factor 3 must divide"),
        (["--num-samples", "1000000000"], "--num-samples: 1000000000 float32 samples"),
    ],
)
def test_sample_limits_that_need_the_model_are_one_line(
    tmp_path, ddpm_checkpoint, capsys, flags, expected
):
    """--steps 100000 and --ilvr-factor 64 reached the user as library tracebacks."""
    ref = tmp_path / "ref.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ref)
    flags = [f.format(ref=ref) for f in flags]
    argv = ["--checkpoint", str(ddpm_checkpoint), "--output", str(tmp_path / "s"), *flags]
    status = run_main(load_tool("sample").main, [*argv, "--device", "cpu"])
    one_line_error(capsys, status, expected)
    assert not (tmp_path / "s").exists()


def test_sample_reports_unet_calls_with_an_estimate(tmp_path, ddpm_checkpoint, capsys):
    """Progress within a batch: one line per UNet call here (interval 0), the last at 4/4."""
    sample = load_tool("sample")
    argv = ["--checkpoint", str(ddpm_checkpoint), "--output", str(tmp_path / "s"), "--steps",
            "2", "--num-samples", "2", "--batch-size", "1", "--device", "cpu"]  # fmt: skip
    real = sample.Progress

    def every_call(total, what, **kwargs):
        return real(total, what, interval=0.0)

    sample.Progress = every_call
    assert run_main(sample.main, argv) == 0
    out = capsys.readouterr().out
    assert "[1/4 UNet calls]" in out and "[4/4 UNet calls]" in out and "s left" in out

"""``tools/visualize_denoising.py``: the drawn boxes are the sampler's, seeded and reproducible.

The starting boxes and the fresh boxes of box renewal are recomputed here from the seed alone
(predict's per-image generator draws x_T, then per step the DDIM noise and the refill), and the
last panel's detections are ``model.predict``'s; the picture is byte-identical on a second run.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from diffvision.data.detection_transforms import resized_shape
from diffvision.data.toy_detection import ensure_toy_detection
from diffvision.engine.cli import run_main
from projects.detection.box_diffusion import diffusion_to_boxes
from tests.tool_helpers import REPO, load_tool

CONFIG = str(REPO / "projects/detection/diffdet_toy.yaml")
OPTS = ["MODEL.DEVICE", "cpu", "MODEL.DiffusionDet.NUM_HEADS", "1", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "160"]  # fmt: skip
STEPS, BOXES, SEED = 3, 12, 5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from projects.detection.build import build_model

    tmp = tmp_path_factory.mktemp("denoise")
    root = ensure_toy_detection(tmp / "toy_detection", sizes={"val": 1})
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, OPTS), with_criterion=False).eval()
    # class biases that put the median best score of the first step at the renewal threshold
    # 0.5: box renewal keeps some boxes and replaces others
    rgb = np.ascontiguousarray(cv2.imread(str(root / "val" / "000001.png"))[:, :, ::-1])
    traj = load_tool("visualize_denoising").denoising_trajectory(
        model, rgb, steps=1, boxes=BOXES, seed=SEED
    )
    with torch.no_grad():
        model.head.head_series[-1].class_logits.bias.sub_(traj["scores"][0].logit().median())
    torch.save({"model": model.state_dict()}, tmp / "model.pth")
    return {"tmp": tmp, "model": model, "image": root / "val" / "000001.png"}


def _run(env, name, *extra):
    out = env["tmp"] / name
    args = ["--config", CONFIG, "--input", str(env["image"]), "--output", str(out),
            "--steps", str(STEPS), "--boxes", str(BOXES), "--seed", str(SEED), *extra,
            *OPTS, "MODEL.WEIGHTS", str(env["tmp"] / "model.pth")]  # fmt: skip
    assert run_main(load_tool("visualize_denoising").main, args) == 0
    return out


def test_trajectory_boxes_are_the_samplers_draws_and_predictions(env):
    tool = load_tool("visualize_denoising")
    model = env["model"]
    rgb = np.ascontiguousarray(cv2.imread(str(env["image"]))[:, :, ::-1])
    traj = tool.denoising_trajectory(model, rgb, steps=STEPS, boxes=BOXES, seed=SEED)
    assert len(traj["inputs"]) == len(traj["predictions"]) == STEPS
    h, w = rgb.shape[:2]
    new_h, new_w = resized_shape(h, w, 96, 160)  # INPUT.MIN/MAX_SIZE_TEST
    g = torch.Generator().manual_seed(SEED)
    x_T = torch.randn(BOXES, 4, generator=g)
    draws = [(torch.randn(BOXES, 4, generator=g), torch.randn(BOXES, 4, generator=g))
             for _ in range(STEPS - 1)]  # fmt: skip
    whwh = torch.tensor([[new_w, new_h, new_w, new_h]], dtype=torch.float32)
    scale = torch.tensor([w / new_w, h / new_h, w / new_w, h / new_h])
    torch.testing.assert_close(traj["inputs"][0], diffusion_to_boxes(x_T[None], whwh)[0] * scale)
    renewed_any = kept_any = False
    for i, (_, refill) in enumerate(draws):
        renewed = traj["renewed"][i]
        assert torch.equal(renewed, traj["scores"][i] <= model.renewal_threshold)
        fresh = diffusion_to_boxes(refill[None], whwh)[0] * scale
        torch.testing.assert_close(traj["inputs"][i + 1][renewed], fresh[renewed])
        assert not torch.allclose(traj["inputs"][i + 1][~renewed], fresh[~renewed])
        renewed_any |= bool(renewed.any())
        kept_any |= bool((~renewed).any())
    assert renewed_any and kept_any, "the test needs both renewed and kept boxes"
    (want,) = model.predict(rgb, num_boxes=BOXES, steps=STEPS, seed=SEED)
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(traj["detections"][key], want[key])


def test_grid_and_gif_are_reproducible_and_show_the_boxes(env):
    first = _run(env, "a.png", "--gif", str(env["tmp"] / "a.gif"))
    second = _run(env, "b.png")
    other = _run(env, "c.png", "--seed", str(SEED + 1))
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    picture = cv2.imread(str(first))[:, :, ::-1]
    tool = load_tool("visualize_denoising")
    rgb = np.ascontiguousarray(cv2.imread(str(env["image"]))[:, :, ::-1])
    traj = tool.denoising_trajectory(env["model"], rgb, steps=STEPS, boxes=BOXES, seed=SEED)
    panels = tool.render_panels(rgb, traj, 0.5)
    assert len(panels) == 1 + STEPS + (STEPS - 1) + 1
    h, w = panels[0].shape[:2]
    assert picture.shape[:2] == (2 * h + 4, 4 * w + 12)  # 8 panels in rows of 4
    # the first panel's starting boxes: every clipped corner has the noise colour
    for x1, y1, _, _ in traj["inputs"][0].tolist():
        x = int(round(min(max(x1, 0), rgb.shape[1] - 1)))
        y = int(round(min(max(y1, 0), rgb.shape[0] - 1)))
        assert tuple(picture[18 + y, x]) == tool.NOISE
    from PIL import Image

    gif = Image.open(env["tmp"] / "a.gif")
    assert gif.n_frames == len(panels)


def test_bad_input_is_one_line(env, capsys):
    tool = load_tool("visualize_denoising")
    base = ["--config", CONFIG, "--input", str(env["image"])]
    assert run_main(tool.main, [*base, "--output", str(env["tmp"] / "no" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_main(tool.main, [*base, "--output", str(env["tmp"] / "x.jpg")]) == 2
    assert "ending in .png" in capsys.readouterr().err
    assert run_main(tool.main, [*base, "--output", str(env["tmp"] / "x.png"), "--steps", "0"]) == 2
    assert "--steps: expected an integer in [1, 1000], got 0" in capsys.readouterr().err
    _run(env, "done.png")
    before = (env["tmp"] / "done.png").read_bytes()
    assert run_main(tool.main, [*base, "--output", str(env["tmp"] / "done.png")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (env["tmp"] / "done.png").read_bytes() == before

"""``tools/demo.py`` with DDeP and pixel-MLP configs on the toy segmentation scenes.

Per image the raw label PNG equals the task's own evaluation inference on the test loader's
item (argmax, at the image's size), the colour PNG shows the palette colour of each label with a
legend beside it, and ``--json`` holds the per-class pixel fractions of that label map.
"""

from __future__ import annotations

import fnmatch
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffvision.engine.cli import run_main
from tests.tool_helpers import REPO, load_tool

SEG_CONFIGS = {
    "DDeP": (str(REPO / "projects/segmentation/configs/ddep_toy_finetune_r18.yaml"),
             ["MODEL.DDEP.DECODER_CHANNELS", "[16, 8, 8, 8, 8]"]),
    "PixelMLP": (str(REPO / "tests/configs/pixel_mlp_tiny.yaml"),
                 ["DATASETS.TEST", "('toy_scenes_val',)", "MODEL.PIXEL_MLP.NORM", "BN"]),
}  # fmt: skip


@pytest.fixture()
def seg_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    return tmp_path


@pytest.mark.parametrize("task_name", list(SEG_CONFIGS))
def test_segmentation_demo_writes_labels_colours_and_fractions(seg_env, task_name):
    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from diffvision.engine.tasks import build_task

    config, opts = SEG_CONFIGS[task_name]
    opts = [*opts, "MODEL.WEIGHTS", ""]
    cfg = load_config(config, opts)
    task = build_task(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg).eval()
    with torch.no_grad():  # a classifier layer of large random weights: varied labels
        for name, tensor in model.state_dict().items():
            if any(fnmatch.fnmatchcase(name, p) for p in model.weights_class_keys):
                tensor.copy_(torch.randn(tensor.shape) * 3 if tensor.ndim > 1 else 0 * tensor)
    torch.save({"model": model.state_dict()}, seg_env / "model.pth")
    items = [batch[0] for batch in task.build_test_loader(cfg, "toy_scenes_val")][:2]
    run = task.build_inference(cfg)
    files = [item["file_name"] for item in items]
    (seg_env / "broken.png").write_bytes(b"not an image")

    out, json_path = seg_env / "out", seg_env / "fractions.json"
    args = ["--config", config, "--input", *files, str(seg_env / "broken.png"), "--output",
            str(out), "--json", str(json_path), *opts[:-1], str(seg_env / "model.pth")]  # fmt: skip
    assert run_main(load_tool("demo").main, args) == 0
    records = json.loads(json_path.read_text())["images"]
    assert "error" in records[-1]
    names = [c["name"] for c in json.loads(json_path.read_text())["categories"]]
    assert len(names) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES and names[0] != "class_0"
    for item, record in zip(items, records):
        original = np.asarray(Image.open(item["file_name"]).convert("RGB"))
        with torch.no_grad():
            want = run(model, [item])[0]["sem_seg"]
        want = want.argmax(0) if want.ndim == 3 else want
        want = torch.nn.functional.interpolate(want[None, None].float(), size=original.shape[:2],
                                               mode="nearest")[0, 0].long().numpy()  # fmt: skip
        stem = item["file_name"].rsplit("/", 1)[-1][:-4]
        label = np.asarray(Image.open(out / f"{stem}_label.png"))
        np.testing.assert_array_equal(label, want)
        fractions = np.bincount(label.ravel(), minlength=len(names)) / label.size
        assert (fractions > 0).sum() >= 2, "a single-class prediction would test little"
        assert [record["class_fractions"][n] for n in names] == pytest.approx(fractions.tolist())
        colour = np.asarray(Image.open(out / f"{stem}_seg.png").convert("RGB"))
        assert colour.shape[1] > label.shape[1]  # the legend to the right
        _, palette = load_tool("demo").segmentation_classes(cfg)
        np.testing.assert_array_equal(colour[: label.shape[0], : label.shape[1]], palette[label])


def test_denoising_ddep_config_is_one_line(seg_env, capsys):
    config = str(REPO / "projects/segmentation/configs/ddep_toy_pretrain_r18.yaml")
    image = seg_env / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    status = run_main(load_tool("demo").main, ["--config", config, "--input", str(image),
                                               "MODEL.WEIGHTS", ""])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "MODEL.DDEP.MODE" in err and "Traceback" not in err

"""ONNX files the runner cannot use (projects/detection/export.py ``OnnxDetector``): one line.

The graphs are written with ``onnx.helper`` in milliseconds (no export): an unrelated model that
carries the detector's metadata keys (it raised ``KeyError``), a graph whose image input has a
fixed size fed an image that resizes to another (onnxruntime's ``InvalidArgument``), metadata
that is not an integer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from diffvision.engine.cli import run_main  # noqa: E402
from diffvision.errors import WeightsError  # noqa: E402
from projects.detection.export import OnnxDetector  # noqa: E402
from tests.tool_helpers import load_tool  # noqa: E402

META = {"num_boxes": 5, "steps": 1, "min_size_test": 64, "max_size_test": 96}


def _write(path, inputs, outputs, nodes, meta=META):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, str(path))
    return path


def _detector_like(path, image_shape, meta=META):
    """Inputs and outputs named as export_onnx names them (the outputs are placeholders)."""
    n = meta["num_boxes"] if isinstance(meta["num_boxes"], int) else 5
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.UINT8, image_shape),
        helper.make_tensor_value_info("init_boxes", TensorProto.FLOAT, [n, 4]),
    ]
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [n, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [n, 4]),
        helper.make_tensor_value_info("labels", TensorProto.UINT8, image_shape),
    ]
    nodes = [
        helper.make_node("Identity", ["init_boxes"], ["boxes"]),
        helper.make_node("Identity", ["init_boxes"], ["scores"]),
        helper.make_node("Identity", ["image"], ["labels"]),
    ]
    return _write(path, inputs, outputs, nodes, meta)


def test_an_unrelated_model_with_the_metadata_keys_is_one_line(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    path = _write(tmp_path / "other.onnx", [x], [y], [helper.make_node("Relu", ["x"], ["y"])])
    with pytest.raises(WeightsError, match=r"graph inputs \['x'\] \(missing \['image', 'init"):
        OnnxDetector(path)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image)
    status = run_main(load_tool("demo").main, ["--onnx", str(path), "--input", str(image)])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and err.count("error:") == 1, err
    assert "expected a DiffusionDet file written by tools/export.py" in err


def test_a_fixed_image_size_fed_another_size_names_both(tmp_path):
    detector = OnnxDetector(_detector_like(tmp_path / "fixed.onnx", [3, 64, 64]))
    assert detector.fixed_hw == (64, 64)
    with pytest.raises(WeightsError, match=r"takes only 64x64 images .* resizes to 48x96"):
        detector.predict(np.zeros((100, 200, 3), np.uint8), seed=0)


def test_a_dynamic_image_size_is_accepted(tmp_path):
    detector = OnnxDetector(_detector_like(tmp_path / "dyn.onnx", [3, "height", "width"]))
    assert detector.fixed_hw is None


@pytest.mark.parametrize("bad", [{"num_boxes": "five"}, {"steps": 0}, {"max_size_test": 1.5}])
def test_metadata_that_is_not_a_positive_integer_is_one_line(tmp_path, bad):
    meta = {**META, **bad}
    key = next(iter(bad))
    path = _detector_like(tmp_path / "m.onnx", [3, "h", "w"], meta)
    with pytest.raises(WeightsError, match=f"metadata {key} is .*expected an integer >= 1"):
        OnnxDetector(path)


def test_draw_inputs_must_match_the_metadata(tmp_path):
    path = _detector_like(tmp_path / "m.onnx", [3, "h", "w"], {**META, "num_boxes": 7})
    meta = {**META, "num_boxes": 9}  # the file says 9 boxes, its init_boxes input holds 7
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=json.dumps(v))
    onnx.save(proto, str(path))
    with pytest.raises(WeightsError, match=r"input 'init_boxes' has shape \[7, 4\].*need \[9, 4\]"):
        OnnxDetector(path)

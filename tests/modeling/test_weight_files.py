"""Malformed weight files always end in one WeightsError naming the file, whatever the bytes.

CI once failed because ``os.urandom`` bytes that happened to start like a pickle reached torch's
legacy weights-only unpickler, which raised ``IndexError: pop from empty list``. These cases are
seeded so that every run tries the same files, including that one.
"""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from diffvision.errors import WeightsError
from diffvision.modeling.weight_files import (
    load_restricted_pickle,
    read_state_dict,
    safe_torch_load,
)


def _junk_files(count: int) -> list[bytes]:
    rng = random.Random(1234)
    files = []
    for index in range(count):
        body = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 7, 64, 300])))
        if index % 2:  # a pickle protocol header, so the bytes reach the unpickler's opcodes
            body = b"\x80" + bytes([rng.choice([2, 3, 4, 5])]) + body
        files.append(body)
    # the CI failure: a protocol-2 header followed by a REDUCE on an empty stack
    files.append(b"\x80\x02R.")
    return files


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on protocols 3-5
@pytest.mark.parametrize("reader", [safe_torch_load, load_restricted_pickle])
def test_random_bytes_raise_weights_error_naming_the_file(tmp_path, reader):
    for index, body in enumerate(_junk_files(120)):
        path = tmp_path / f"junk{index}.pth"
        path.write_bytes(body)
        with pytest.raises(WeightsError, match=f"junk{index}.pth"):
            reader(path)


def test_valid_files_still_load(tmp_path):
    """The broad catch must not turn real files into errors."""
    state = {"w": torch.arange(6.0).view(2, 3)}
    torch.save({"model": state}, tmp_path / "m.pth")
    assert torch.equal(read_state_dict(tmp_path / "m.pth")["w"], state["w"])
    with open(tmp_path / "m.pkl", "wb") as f:
        pickle.dump({"model": {"w": np.ones((2, 2), np.float32)}}, f)
    assert torch.equal(read_state_dict(tmp_path / "m.pkl")["w"], torch.ones(2, 2))

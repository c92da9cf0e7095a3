"""The one error path of the tools (engine/cli.py): one ``error:`` line, exit 2, ``--debug``."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from diffvision.engine.cli import (
    SEED_MAX,
    Device,
    Float,
    Int,
    Seed,
    check_allocation,
    run_main,
)
from diffvision.errors import CLIError, ConfigError, DataError
from tests.tool_helpers import one_line_error

pytestmark = pytest.mark.usefixtures("tool_env")


def test_run_main_one_line_exit_2_and_debug_traceback(capsys, monkeypatch):
    def bad(argv):
        raise ConfigError("SOLVER.BASE_LR must be > 0,\n got -1")

    one_line_error(capsys, run_main(bad, []), "SOLVER.BASE_LR must be > 0, got -1")
    assert run_main(bad, ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error:")
    monkeypatch.setenv("DIFFVISION_DEBUG", "1")
    assert run_main(bad, []) == 2
    assert "Traceback" in capsys.readouterr().err


class _BadImages(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise DataError(f"cannot read image photo_{i}.jpg: truncated")


def test_error_from_a_dataloader_worker_is_still_one_line(capsys):
    """DataLoader workers re-raise with the worker's traceback inside the message."""

    def main(argv):
        loader = torch.utils.data.DataLoader(_BadImages(), num_workers=1, batch_size=None)
        next(iter(loader))

    one_line_error(capsys, run_main(main, []), "error: cannot read image photo_0.jpg: truncated")


def test_unexpected_exceptions_keep_their_traceback():
    def buggy(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_main(buggy, [])


# ------------------------------------------------------------- flags declared once
def test_flag_types_check_type_range_and_finiteness():
    steps = Int(1, 10)
    assert steps("3") == 3
    for bad in ("0", "11", "2.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"an integer in \[1, 10\]"):
            steps(bad)
    eta = Float(0, 1)
    assert eta("0.5") == 0.5
    for bad in ("nan", "inf", "-1e-9", "1.0000001"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"a finite number in \[0, 1\]"):
            eta(bad)
    assert Float(0, allow_inf=True)("inf") == float("inf")
    assert Float(0, 1, lo_open=True).contains(0.0) is False
    threads = Int(1, 8, special={-1: "all"})
    assert threads("-1") == -1 and "(-1: all)" in threads.describe()


def test_seed_bound_is_what_torch_and_numpy_accept():
    seed = Seed()
    assert seed(str(SEED_MAX)) == SEED_MAX
    with pytest.raises(argparse.ArgumentTypeError):
        seed(str(SEED_MAX + 1))
    with pytest.raises(argparse.ArgumentTypeError):
        seed("-1")
    assert Seed(allow_random=True)("-1") == -1
    # the largest seed plus a batch offset still seeds both libraries; 2**70 does not
    torch.Generator().manual_seed(SEED_MAX + 10_000)
    np.random.default_rng(SEED_MAX + 10_000)
    with pytest.raises((RuntimeError, ValueError)):  # torch: "Overflow when unpacking long"
        torch.Generator().manual_seed(2**70)


def test_bad_values_of_a_declaration_are_refused_by_it():
    for flag_type in (Int(1, 100), Float(0, 1), Seed(), Int(0, special={0: "all"})):
        for value in flag_type.bad_values():
            with pytest.raises(argparse.ArgumentTypeError):
                flag_type(value)


def test_device_flag_names_what_exists():
    device = Device()
    assert device("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="cpu, cuda or cuda:0, got 'foo'"):
        device("foo")
    if not torch.cuda.is_available():
        with pytest.raises(argparse.ArgumentTypeError, match="no CUDA device"):
            device("cuda")


def test_allocation_estimate_refuses_what_memory_cannot_hold():
    check_allocation("--boxes", 2**20, "a small tensor")  # passes
    with pytest.raises(CLIError, match=r"--boxes: 2\*\*40 boxes needs about .* GiB, more than"):
        check_allocation("--boxes", 2**40 * 2**20, "2**40 boxes")

"""The one error path of the tools (engine/cli.py): one ``error:`` line, exit 2, ``--debug``.

Every user mistake ends with exit status 2 and ONE line ``error: ...`` on stderr (no traceback)
and leaves the outputs as they were; the tools' ``main`` functions are called in-process.
"""

from __future__ import annotations

import pytest
import torch

from diffvision.engine.cli import run_main
from diffvision.errors import ConfigError, DataError
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

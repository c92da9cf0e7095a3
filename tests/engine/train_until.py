"""Run ``tools/train_net.py`` with its command line, but freeze inside iteration
``$DIFFVISION_TEST_FREEZE_AT`` (after touching ``$DIFFVISION_TEST_FROZEN``), so that a test can
``kill -9`` the process at a known point after a checkpoint was written."""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from diffvision.engine import trainer  # noqa: E402

FREEZE_AT = int(os.environ.get("DIFFVISION_TEST_FREEZE_AT", "-1"))
_original = trainer.Trainer.run_step


def _run_step(self):
    if self.iter == FREEZE_AT:
        Path(os.environ["DIFFVISION_TEST_FROZEN"]).touch()
        time.sleep(600)  # killed here
    _original(self)


trainer.Trainer.run_step = _run_step
sys.argv = [str(REPO / "tools" / "train_net.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")

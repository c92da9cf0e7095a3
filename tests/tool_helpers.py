"""Helpers for tests that call the ``tools/`` scripts in-process."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drop_tool_log_handlers() -> None:
    """Detach the log handlers a tool's ``setup_logging`` added (they write to the stdout that
    pytest captured for one test, closed afterwards)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_diffvision", False):
            root.removeHandler(handler)
            handler.close()

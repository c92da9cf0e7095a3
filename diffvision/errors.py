"""The exceptions that mean "what the user passed is wrong" (config, data, weights, command line).

Every tool prints a :class:`UserInputError` as one line (``error: <message>``) and exits with
code 2; the traceback is shown only with ``--debug`` or ``DIFFVISION_DEBUG=1``. Any other
exception is a bug or an environment failure and keeps its traceback.

Raise them where the problem is found, and name the file / key / record and what was expected::

    raise DataError(f"{json_path}: annotation 17 has bbox [3, 4, -1, 2]; expected w, h > 0")

The subclasses also derive from the built-in type that callers caught before they existed
(``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so existing ``except`` clauses keep
working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CLIError",
    "ConfigError",
    "DataError",
    "InputFileNotFoundError",
    "UnknownNameError",
    "UserInputError",
    "WeightsError",
    "did_you_mean",
]


class UserInputError(Exception):
    """Base class: a problem with the user's input, printed by the tools as one line."""


class ConfigError(UserInputError, ValueError):
    """A config file or override names an unknown key, or a value of the wrong type or range."""


class UnknownNameError(ConfigError, KeyError):
    """A name looked up in a registry (dataset, task) is unknown; also a ``KeyError``."""

    __str__ = BaseException.__str__  # the message as written, not KeyError's repr of it


class DataError(UserInputError, ValueError):
    """A dataset file, record, image or mask is missing, unreadable or inconsistent."""


class WeightsError(UserInputError, RuntimeError):
    """A weight / checkpoint file cannot be read safely, or does not fit the model."""


class CLIError(UserInputError, ValueError):
    """A command-line argument is invalid (value out of range, contradictory flags)."""


class InputFileNotFoundError(UserInputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


def did_you_mean(name: str, known: Iterable[str], cutoff: float = 0.6) -> str:
    """The hint every "unknown name" message ends with: ``" Did you mean: a, b?"`` for up to three
    of ``known`` close to ``name`` (difflib ratio >= ``cutoff``), or ``""`` when none is."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=cutoff)
    return f" Did you mean: {', '.join(close)}?" if close else ""

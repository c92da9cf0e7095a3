"""The command line of every ``tools/`` script: flags declared once, user mistakes as one line.

    from diffvision.engine.cli import Float, Int, IntList, Seed, ToolParser, run_main

    def argument_parser() -> ToolParser:
        parser = ToolParser(description=__doc__)                 # adds --debug
        parser.add_argument("--steps", type=Int(1, 10_000), default=50)
        parser.add_argument("--eta", type=Float(0, 1), default=0.0)   # NaN/inf refused
        parser.add_argument("--seed", type=Seed(), default=0)
        parser.add_argument("--boxes", type=IntList(1, 5000), nargs="+")  # 100 300 or 100,300
        parser.add_argument("opts", nargs="*")                   # optional KEY VALUE overrides
        return parser

    def main(argv=None) -> int:
        args = argument_parser().parse_args(argv)                # every flag checked here
        ...

    if __name__ == "__main__":
        sys.exit(run_main(main))

**Flags.** A flag's ``type=`` is its declaration: :class:`Int`, :class:`IntList`,
:class:`Float` (finite unless ``allow_inf``), :class:`Seed` (what both ``torch.manual_seed`` and
NumPy accept), :class:`Device`; ``choices=`` as usual. ``tests/tools/test_tool_flags.py`` feeds
every declared flag of every tool the values its declaration refuses. :class:`ToolParser` turns
every argparse complaint (bad value, unknown flag, missing required flag) into a
:class:`~diffvision.errors.CLIError`, so it is one line like any other input error, raised
before the tool does any work. Trailing ``KEY VALUE`` config
overrides start at the first config key, so ``--steps 1 4 MODEL.WEIGHTS w.pth`` parses, and a
flag typed after the overrides is named as such. Checks that need a model (``--steps`` at most
the model's timesteps) or an allocation estimate (:func:`check_allocation`) follow right after
the model is built, still before the work. :func:`~diffvision.engine.defaults.load_tool_config`
loads the config of a tool that runs only some tasks (another task's config is refused, keys the
tool ignores are warned).

**Errors.** :func:`run_main` calls ``main(argv)`` and maps what escapes it to an exit status:

- :class:`~diffvision.errors.UserInputError` (bad config, data, weights, command line, missing
  file): ``error: <message>`` on stderr, one line, exit status 2 (:data:`USER_ERROR`);
- ``FloatingPointError`` (a diverged run; the trainer's message names the iteration and the loss
  terms): ``error: <message>``, one line, exit status 1 (:data:`RUN_FAILED`);
- a spawned worker (``--num-gpus N``) reports its error this way and exits with that status
  (rank 0 first; another rank only when rank 0 did not fail) and the launcher's own traceback is
  not repeated;
- anything else is a bug or an environment failure and keeps its full traceback.

``--debug`` anywhere on the command line or ``DIFFVISION_DEBUG=1`` in the environment prints the
traceback before the one-line message (the exit status stays the same).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import torch
from torch.multiprocessing import ProcessExitedException

from diffvision.errors import CLIError, UserInputError
from diffvision.utils import comm

__all__ = [
    "RUN_FAILED",
    "SEED_MAX",
    "USER_ERROR",
    "Device",
    "FlagType",
    "Float",
    "Int",
    "IntList",
    "Seed",
    "ToolParser",
    "add_debug_flag",
    "check_allocation",
    "debug_enabled",
    "format_error",
    "report_error",
    "run_main",
    "worker_entry",
]

USER_ERROR = 2
RUN_FAILED = 1
DEBUG_FLAG = "--debug"
DEBUG_ENV = "DIFFVISION_DEBUG"
# How long a rank other than 0 waits before reporting a user error itself. When rank 0 fails too
# (the usual case: every rank reads the same inputs), the launcher ends this process while it
# waits; the wait only delays the report when rank 0 did not fail. Long enough for rank 0 to
# reach the same error on a heavily loaded machine.
_OTHER_RANKS_WAIT_S = 30.0
SEED_MAX = 2**63 - 1
"""Largest seed: ``torch.manual_seed`` takes < 2**64, NumPy's generators any n >= 0, the seed
derivation hashes 64-bit words; the legacy ``np.random.seed`` gets ``seed % 2**32``."""


class FlagType:
    """The declared value of one flag: a number type, a range and whether it must be finite.

    Passed as argparse's ``type=``: argparse calls it on each token, and the
    ``argparse.ArgumentTypeError`` it raises becomes ``error: argument --flag: <message>``.
    ``special`` values (e.g. ``-1`` for "random") are accepted outside the range.
    """

    def __init__(
        self,
        kind: type,
        lo: float | None = None,
        hi: float | None = None,
        *,
        lo_open: bool = False,
        hi_open: bool = False,
        allow_inf: bool = False,
        special: dict[int | float, str] | None = None,
    ):
        self.kind = kind
        self.lo, self.hi = lo, hi
        self.lo_open, self.hi_open = lo_open, hi_open
        self.allow_inf = allow_inf
        self.special = dict(special or {})

    def describe(self) -> str:
        """``an integer in [1, 10000]``, ``a finite number > 0``, ..."""
        what = "a number" if self.allow_inf else "a finite number"
        what = "an integer" if self.kind is int else what
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            what += f" in {left}{self.lo}, {self.hi}{right}"
        elif self.lo is not None:
            what += f" {'>' if self.lo_open else '>='} {self.lo}"
        elif self.hi is not None:
            what += f" {'<' if self.hi_open else '<='} {self.hi}"
        for value, meaning in self.special.items():
            what += f" ({value}: {meaning})"
        return what

    def contains(self, value: float) -> bool:
        if value in self.special:
            return True
        if isinstance(value, float) and math.isnan(value):
            return False
        if isinstance(value, float) and math.isinf(value) and not self.allow_inf:
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return True

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text}")
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def bad_values(self) -> list[str]:
        """Tokens this flag must refuse (a wrong type, NaN/inf, each side of the range)."""
        bad = ["not-a-number", "1.5e", "nan"]
        if self.kind is int:
            bad.append("2.5")
        if not self.allow_inf:
            bad += ["inf", "-inf"]
        step = 1 if self.kind is int else 1e-3
        if self.lo is not None:
            below = self.lo if self.lo_open else self.lo - step
            if below not in self.special:
                bad.append(str(below))
        if self.hi is not None:
            above = self.hi if self.hi_open else self.hi + step
            bad.append(str(above))
        return bad


class IntList(FlagType):
    """Integers separated by commas in one token (``1,4,8``), each checked like :class:`Int`;
    with ``nargs="+"`` also ``1 4 8``. :class:`ToolParser` flattens the result to one list."""

    def __init__(self, lo: int | None = None, hi: int | None = None, **kwargs):
        super().__init__(int, lo, hi, **kwargs)

    def __call__(self, text: str) -> list[int]:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}")
        return [super(IntList, self).__call__(part) for part in parts]


def Int(lo: int | None = None, hi: int | None = None, **kwargs) -> FlagType:  # noqa: N802
    """An integer flag in ``[lo, hi]`` (``special={0: "default"}`` for values outside it)."""
    return FlagType(int, lo, hi, **kwargs)


def Float(lo: float | None = None, hi: float | None = None, **kwargs) -> FlagType:  # noqa: N802
    """A finite float flag in ``[lo, hi]`` (``lo_open``/``hi_open`` for open ends; ``allow_inf``
    where infinity means something)."""
    return FlagType(float, lo, hi, **kwargs)


def Seed(*, allow_random: bool = False) -> FlagType:  # noqa: N802
    """A seed in ``[0, 2**63 - 1]`` (:data:`SEED_MAX`); ``allow_random``: also -1, a fresh seed."""
    return FlagType(int, 0, SEED_MAX, special={-1: "random"} if allow_random else None)


class Device:
    """A torch device name that exists on this machine (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""

    def __call__(self, text: str) -> str:
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"expected a device such as cpu, cuda or cuda:0, got {text!r}"
            ) from None
        if device.type == "cuda":
            count = torch.cuda.device_count()
            if count == 0:
                raise argparse.ArgumentTypeError(f"{text}: no CUDA device is available; use cpu")
            if device.index is not None and device.index >= count:
                raise argparse.ArgumentTypeError(f"{text}: only {count} CUDA device(s) exist")
        return text

    def __repr__(self) -> str:
        return "Device()"


_KEY_PATTERN = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)*")


def _config_sections() -> frozenset[str]:
    """Top-level config sections (``MODEL``, ``SOLVER``, ``SEED``, ...) of the tasks registered
    now (read at each parse: a task imported later adds its own)."""
    from diffvision.config import get_cfg

    return frozenset(get_cfg().keys())


class ToolParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for the tools: errors are :class:`CLIError` (one line through
    :func:`run_main`), ``--debug`` is declared, and a trailing ``opts`` positional takes the
    ``KEY VALUE`` config overrides from the first config key on."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        add_debug_flag(self)

    def error(self, message: str):
        raise CLIError(message)

    def parse_args(self, args: Sequence[str] | None = None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        if any(action.dest == "opts" for action in self._actions):
            flags, opts = self._split_overrides(argv)
            parsed = super().parse_args(flags, namespace)
            # tokens before the first config key that no flag took stay overrides (the config
            # then names them as unknown keys, with suggestions)
            parsed.opts = [*(parsed.opts or []), *opts]
        else:
            parsed = super().parse_args(argv, namespace)
        for action in self._actions:
            value = getattr(parsed, action.dest, None)
            if isinstance(action.type, IntList) and isinstance(value, list):
                flat = []
                for item in value:
                    flat += item if isinstance(item, list) else [item]
                setattr(parsed, action.dest, flat)
        return parsed

    def _split_overrides(self, argv: list[str]) -> tuple[list[str], list[str]]:
        """(flags, overrides): overrides start at the first config key that is no flag's value."""
        takes_value = {
            option
            for action in self._actions
            for option in action.option_strings
            if action.nargs is None
        }
        sections: frozenset[str] = frozenset()
        for i, token in enumerate(argv):
            previous = argv[i - 1] if i else ""
            if previous in takes_value:
                continue
            if token == "--":
                return argv[:i], argv[i + 1 :]
            if not _KEY_PATTERN.fullmatch(token):
                continue
            sections = sections or _config_sections()
            if token.split(".")[0] in sections:
                flags, opts = argv[:i], argv[i:]
                known = {o for a in self._actions for o in a.option_strings}
                late = [t for t in opts if t.split("=")[0] in known]
                if late:
                    raise CLIError(
                        f"{late[0]} comes after the config overrides ({token} ...); flags go "
                        "first, then KEY VALUE pairs"
                    )
                return flags, opts
        return argv, []


def check_allocation(flag: str, nbytes: float, what: str, *, fraction: float = 0.8) -> None:
    """Refuse a count whose main allocation alone would not fit in this machine's memory.

    Args:
        flag: the flag (or flags) that chose the count, named in the message.
        nbytes: an estimate of the largest allocation the count implies.
        what: what is allocated, e.g. ``"1000000 samples of 3x64x64 float32"``.
        fraction: share of the physical memory that may be asked for.

    Raises:
        CLIError: ``nbytes`` exceeds ``fraction`` of the physical memory.
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no estimate, no refusal
        return
    if nbytes > fraction * total:
        raise CLIError(
            f"{flag}: {what} needs about {nbytes / 2**30:,.1f} GiB, more than this machine's "
            f"{total / 2**30:,.1f} GiB of memory; choose a smaller value"
        )


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Document ``--debug`` in a tool's ``--help`` (:func:`run_main` removes it from argv)."""
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"show the traceback of input errors (also: {DEBUG_ENV}=1)",
    )


def debug_enabled(argv: Sequence[str] = ()) -> bool:
    """True if ``--debug`` is in ``argv`` or ``DIFFVISION_DEBUG`` is set to a true value."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return DEBUG_FLAG in argv or env not in ("", "0", "false", "no", "off")


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def format_error(exc: BaseException) -> str:
    """``error: <message>`` on one line (newlines inside the message become spaces).

    An exception re-raised by a DataLoader worker carries the worker's traceback in its
    message; only the original message (its last line, without the type name) is kept.
    """
    text = str(exc)
    if _WORKER_TRACEBACK in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        for p in (prefix, f"{type(exc).__qualname__}: "):
            last = last[len(p) :] if last.startswith(p) else last
        text = last
    message = " ".join(text.split()) or type(exc).__name__
    return f"error: {message}"


def _exit_status(exc: BaseException) -> int | None:
    """The exit status for an exception reported as one line, None for any other."""
    if isinstance(exc, UserInputError):
        return USER_ERROR
    if isinstance(exc, FloatingPointError):
        return RUN_FAILED
    return None


def report_error(exc: BaseException, *, debug: bool = False) -> int | None:
    """Print a user-facing exception as one line (after its traceback when ``debug``).

    Returns its exit status, or None (nothing printed) for an exception that is not
    user-facing and must propagate.
    """
    status = _exit_status(exc)
    if status is None:
        return None
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(format_error(exc), file=sys.stderr, flush=True)
    return status


def run_main(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` (``--debug`` removed) and return the process exit status.

    ``main`` returning an int returns that status; None or any other value returns 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        result = main(argv)
    except Exception as exc:
        status = report_error(exc, debug=debug)
        if status is not None:
            return status
        worker_status = _reported_worker_status(exc)
        if worker_status is None:
            raise
        return worker_status
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def worker_entry(main_func: Callable[..., object], debug: bool) -> Callable[..., object]:
    """Wrap the per-process function of a ``--num-gpus N`` job for :func:`launch`.

    In a spawned worker a user-facing error is printed as one line and the worker exits with
    its status (2 or 1); :func:`run_main` then returns that status without the launcher's
    traceback. With one process the exception simply propagates to :func:`run_main`.
    The returned callable is picklable (a module-level class instance).
    """
    return _WorkerEntry(main_func, debug)


class _WorkerEntry:
    def __init__(self, main_func: Callable[..., object], debug: bool):
        self.main_func = main_func
        self.debug = debug

    def __call__(self, *args: object) -> object:
        if comm.get_world_size() <= 1:
            return self.main_func(*args)
        try:
            return self.main_func(*args)
        except Exception as exc:
            if _exit_status(exc) is None:
                raise
            if comm.get_rank() != 0:
                # Usually every rank hits the same input error: give rank 0 the time to report
                # it (the launcher then stops this process); report it here only if rank 0 did
                # not fail.
                time.sleep(_OTHER_RANKS_WAIT_S)
            status = report_error(exc, debug=self.debug)
            sys.stderr.flush()
            sys.stdout.flush()
            # SystemExit passes through torch.multiprocessing's wrapper as a plain exit code
            raise SystemExit(status) from None


def _reported_worker_status(exc: BaseException) -> int | None:
    """Exit status of a spawned worker that ended through :class:`_WorkerEntry`, else None."""
    if isinstance(exc, ProcessExitedException) and exc.exit_code in (USER_ERROR, RUN_FAILED):
        return exc.exit_code
    return None

"""The one error path of every ``tools/`` script: user mistakes as one line, bugs as tracebacks.

    from diffvision.engine.cli import add_debug_flag, run_main

    def main(argv=None) -> int:
        parser = argparse.ArgumentParser()
        add_debug_flag(parser)
        ...

    if __name__ == "__main__":
        sys.exit(run_main(main))

:func:`run_main` calls ``main(argv)`` and maps what escapes it to an exit status:

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
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from torch.multiprocessing import ProcessExitedException

from diffvision.errors import UserInputError
from diffvision.utils import comm

__all__ = [
    "RUN_FAILED",
    "USER_ERROR",
    "add_debug_flag",
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
_OTHER_RANKS_WAIT_S = 5.0


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

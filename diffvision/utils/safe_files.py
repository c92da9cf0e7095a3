"""Reading files the user passes without running code they may hold.

``torch.load`` and ``pickle`` can execute arbitrary code while unpickling. Every torch file
diffvision reads (checkpoints, weights) goes through :func:`safe_torch_load`
(``weights_only=True``, NumPy arrays and scalars admitted, as checkpoints store NumPy's RNG
state) and every pickle (detectron2 ``.pkl`` weights, CIFAR-10 batches) through
:func:`load_restricted_pickle` (NumPy arrays, dicts, lists and scalars only). Anything else is
refused with a :class:`~diffvision.errors.WeightsError` naming the file; there is no fallback to
full unpickling.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from diffvision.errors import InputFileNotFoundError, WeightsError

__all__ = ["RestrictedUnpickler", "load_restricted_pickle", "safe_torch_load"]


# (module, name) pairs a weight pickle may reference: NumPy's array/scalar/dtype reconstruction
# (both the NumPy 1 ``numpy.core`` and NumPy 2 ``numpy._core`` spellings), OrderedDict (a dict),
# and ``_codecs.encode`` (how protocol-2 pickles store bytes). Nothing here can run other code.
_PICKLE_ALLOWED = {
    (mod, name)
    for core in ("numpy.core.multiarray", "numpy._core.multiarray")
    for mod, name in ((core, "_reconstruct"), (core, "scalar"))
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


def _numpy_safe_globals() -> list:
    """NumPy reconstruction functions and dtype classes admitted into ``torch.load``."""
    core = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else
                                   "numpy.core.multiarray")  # fmt: skip
    dtype_classes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [core._reconstruct, core.scalar, np.ndarray, np.dtype, *dtype_classes]


def _convert_hint(path: Path) -> str:
    return (
        'If you trust the file, convert it once to plain tensors, e.g. python -c "import torch; '
        f"d = torch.load('{path}', weights_only=False); torch.save(d.get('model', d), "
        f"'{path.with_suffix('')}_weights.pth')\", and pass the new file"
    )


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle reader that builds only NumPy arrays, dicts, lists, tuples, strings and numbers.

    Any other global (a class or function, e.g. ``os.system`` in a ``__reduce__``) raises
    ``pickle.UnpicklingError`` before it is called. Python 2 pickles (detectron2's model zoo)
    are read with ``encoding="latin1"``.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed (only NumPy arrays, dicts, lists and "
                "scalars)"
            )
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # NumPy 2 name, without the deprecation shim
        return getattr(importlib.import_module(module), name)


def load_restricted_pickle(path: str | os.PathLike, *, what: str = "weight file") -> object:
    """Read a pickle with :class:`RestrictedUnpickler`.

    Raises:
        WeightsError: the pickle references anything beyond plain data, or is corrupt; the
            message names the file (``what`` says which kind of file it is).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # a malformed pickle fails with almost any exception type
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, pickle.UnpicklingError):
            reason = str(exc)
        raise WeightsError(
            f"{what} {path} cannot be read as plain data ({reason}); it is refused because "
            "unpickling anything else could run code. Convert it to a dict of NumPy arrays (or "
            "a torch state_dict .pth) first"
        ) from None


def safe_torch_load(path: str | os.PathLike, *, what: str = "weight file") -> object:
    """``torch.load(path, weights_only=True)`` admitting NumPy arrays and scalars.

    Raises:
        InputFileNotFoundError: ``path`` does not exist.
        WeightsError: the file is truncated or not a torch file, or it holds Python objects
            beyond tensors and plain data (never unpickled: that could run code); the message
            names the file and how to convert a trusted one.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"{what} {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = " ".join(str(exc).split())
        reason = text.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
        reason = reason.split(" Please use ")[0].strip(" .") or type(exc).__name__
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise WeightsError(
                f"{what} {path} holds Python objects beyond tensors and plain data (global "
                f"{found.group(1)}); "
                f"it is not loaded because unpickling them could run code. {_convert_hint(path)}"
            ) from None
        raise WeightsError(
            f"{what} {path} is not a PyTorch file ({reason}); expected torch.save output "
            "(.pth) or a detectron2 .pkl"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise WeightsError(
            f"{what} {path} is truncated or corrupt ({type(exc).__name__}: {message})"
        ) from None
    except Exception as exc:
        # Bytes that are neither a zip archive nor a pickle reach torch's legacy weights-only
        # unpickler, which fails on them with IndexError, KeyError, UnicodeDecodeError, ...
        message = " ".join(str(exc).split())[:200]
        raise WeightsError(
            f"{what} {path} is not a PyTorch file ({type(exc).__name__}: {message}); expected "
            "torch.save output (.pth) or a detectron2 .pkl"
        ) from None

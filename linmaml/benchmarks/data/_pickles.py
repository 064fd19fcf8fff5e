"""Reading the pickled arrays that CIFAR-100 and the mini-ImageNet cache are distributed as.

Both formats are Python pickles (CIFAR-100's were written by Python 2), so they are read with
``encoding="latin1"`` — the encoding numpy documents for Python 2 pickles of arrays — and dictionary
keys are normalised to ``str``. Unpickling runs code named in the file: read only archives you got
from their publishers.
"""
from __future__ import annotations

import pickle
import zipfile

from linmaml.benchmarks.data.integrity import DatasetError


def load_pickle(handle, where: str):
    """Unpickle one object from an open binary file; DatasetError naming ``where`` if it is broken."""
    try:
        return pickle.load(handle, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"{where}: not a readable pickle ({type(error).__name__}: {error}); "
                           f"the file is truncated or altered") from None


def str_keys(mapping, where: str) -> dict:
    """The dict with bytes keys decoded (Python 2 pickles read with encoding='bytes' keep them)."""
    if not isinstance(mapping, dict):
        raise DatasetError(f"{where}: expected a pickled dict, found {type(mapping).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in mapping.items()}


def require(mapping: dict, keys, where: str) -> None:
    """DatasetError naming ``where`` and the absent keys unless ``mapping`` has all ``keys``."""
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise DatasetError(f"{where}: lacks the entries {', '.join(missing)}")

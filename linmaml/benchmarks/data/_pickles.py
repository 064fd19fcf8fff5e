"""Reading the pickled arrays that CIFAR-100 and the mini-ImageNet cache are distributed as.

Both formats are Python pickles (CIFAR-100's were written by Python 2), so they are read with
``encoding="latin1"`` — the encoding numpy documents for Python 2 pickles of arrays — and dictionary
keys are normalised to ``str``.

A pickle names the functions that rebuild its objects, and ``pickle.load`` calls them: a crafted file
runs any code it likes. These files are therefore read with :class:`DataUnpickler`, which admits
only what numpy needs to rebuild arrays, dtypes and scalars (see :data:`ALLOWED`); dicts, lists,
tuples, strings, bytes and numbers need no such name. Anything else is refused by its name
(``refused to load os.system from <file>``) before it is called.

Before it is unpickled, a file is scanned opcode by opcode (:func:`linmaml._io.check_pickle`): a
pickle nested more than :data:`linmaml._io.MAX_DEPTH` deep (a 2,000,000-deep tuple crashes CPython's
``hash``) or declaring more bytes than the file holds is refused; after unpickling, an array with
more elements or bytes than the file (a crafted zero-stride or zero-itemsize view) is refused too.
"""
from __future__ import annotations

import os
import pickle
import zipfile

from linmaml import _io

from linmaml.benchmarks.data.integrity import DatasetError
from linmaml.errors import FileContentError


#: The only globals a data pickle may name: numpy's array, dtype and scalar rebuilders (under the
#: numpy 1.x ``numpy.core`` and numpy 2.x ``numpy._core`` module names), and ``_codecs.encode``,
#: which Python 3 pickles of protocol < 3 use to spell ``bytes``. None of them runs code from the
#: file: they build arrays from raw bytes and a dtype.
ALLOWED = frozenset(
    [(f"{core}.multiarray", name) for core in ("numpy.core", "numpy._core") for name in ("_reconstruct", "scalar")]
    + [(f"{core}.numeric", "_frombuffer") for core in ("numpy.core", "numpy._core")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
)


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside :data:`ALLOWED`; ``.name`` is ``module.name``."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"refused to load {name}")


class DataUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain data and numpy arrays (see the module docstring)."""

    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):  # no external references either
        raise pickle.UnpicklingError("persistent references are not data")


def load_pickle(handle, where: str, size: int | None = None):
    """Unpickle one object from an open binary file without running code from it.

    ``size``: the bytes of the pickle from the handle's position (default: the rest of the file).
    DatasetError naming ``where``: ``refused to load <module>.<name> from <where>`` when the file
    names anything but numpy's array rebuilders, "not a readable pickle" when it is broken, and a
    refusal when it nests too deep, declares more bytes than it holds, or holds a crafted view.
    """
    if size is None:
        size = os.fstat(handle.fileno()).st_size - handle.tell()
    try:
        _io.check_pickle(handle, size, where)
        value = DataUnpickler(_io.BoundedReader(handle, size, where), encoding="latin1").load()
        _io.check_sizes(value, size, where)
        return value
    except RefusedGlobal as error:
        raise DatasetError(f"refused to load {error.name} from {where}: data pickles may hold only numpy "
                           f"arrays, dicts, lists, strings and numbers; the file is not the published "
                           f"data (or was altered)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, zipfile.BadZipFile, OSError, RecursionError, MemoryError) as error:
        if isinstance(error, FileContentError) and error.where == where:  # refused by _io's checks
            raise DatasetError(f"{where}: not a readable pickle ({error.detail})") from None
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

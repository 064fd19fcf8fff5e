"""Downloading the official Omniglot zips, verified by md5 before they appear under their name.

Each file is streamed into a temporary file beside its target (``linmaml._io.atomic_path``), hashed
on the way, and renamed over the target only when the md5 matches; on any error (network, wrong
checksum, interruption) the temporary file is removed and an existing good file is left untouched.
Nothing is ever half-written. The loaders read the zips in place, so nothing is extracted.

``timeout`` is a deadline for the whole file, not for one read: a server that trickles a byte
every few seconds is cut off when the deadline passes (each read waits at most for what is left of
it). SIGTERM during a download removes the temporary file before the process ends as the signal
says; a temporary file left by ``kill -9`` is removed by the next download once it is older than
any download may take (:data:`STALE_SECONDS`).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from linmaml._io import atomic_path
from linmaml.benchmarks.data import omniglot
from linmaml.benchmarks.data.integrity import DatasetError, file_digest
from linmaml.benchmarks.data.paths import benchmark_dir

#: Where the official zips live; ``url_base`` replaces it (e.g. a mirror, or a test server).
OMNIGLOT_URL_BASE = "https://github.com/brendenlake/omniglot/raw/master/python"
_CHUNK = 1 << 16
#: A temporary download file older than this (the longest --timeout, a day) belongs to no live download.
STALE_SECONDS = 86400.0


class _Terminated(BaseException):
    """SIGTERM arrived during a download: unwinds through ``atomic_path``, which removes the temporary."""


@contextlib.contextmanager
def _terminate_cleanly():
    """While downloading, SIGTERM unwinds (removing the temporary file) and is then re-delivered with its
    default action, so the process still ends as a SIGTERM says (outside the main thread: nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        with contextlib.suppress(ValueError, TypeError):
            if signal.getsignal(signal.SIGTERM) is handler:
                signal.signal(signal.SIGTERM, previous)


def _limit_next_read(response, seconds: float) -> None:
    """Let the next socket read wait at most ``seconds`` (best effort: the socket under http.client)."""
    sock = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(sock, "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.settimeout(max(seconds, 0.001))


def download_file(url: str, target, md5: str, *, timeout: float = 600.0, progress=None) -> str:
    """Fetch ``url`` to ``target`` atomically and check its md5; return the digest.

    ``timeout``: seconds the whole download may take (module docstring). ``progress(bytes_so_far,
    total_or_None)`` is called as data arrives. A wrong checksum raises :class:`DatasetError` naming
    the file and the expected md5; network failures and a passed deadline raise ``DatasetError``
    naming the URL. ``target``'s folder is created if needed.
    """
    target = Path(target)
    digest = hashlib.md5()
    deadline = time.monotonic() + timeout
    with _terminate_cleanly(), atomic_path(target) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                done = 0
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DatasetError(f"{url}: download not finished after {timeout:g} s (--timeout; "
                                           f"{done:,} bytes arrived); nothing was written")
                    _limit_next_read(response, left)
                    block = response.read1(_CHUNK)  # what has arrived, not a full chunk: the deadline holds
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
                out.flush()
        except urllib.error.HTTPError as error:
            raise DatasetError(f"{url}: download failed (HTTP {error.code} {error.reason})") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            if isinstance(error, (PermissionError, FileNotFoundError)) and error.filename:
                raise
            if isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError):
                if time.monotonic() >= deadline - 0.01:
                    raise DatasetError(f"{url}: download not finished after {timeout:g} s (--timeout); nothing "
                                       f"was written") from None
            reason = getattr(error, "reason", error)
            raise DatasetError(f"{url}: download failed ({reason})") from None
        if total is not None and done != total:
            raise DatasetError(f"{url}: download truncated ({done:,} of {total:,} bytes)")
        actual = digest.hexdigest()
        if actual != md5:
            raise DatasetError(f"{target.name}: md5 {actual} of the download from {url} does not match the "
                               f"expected {md5}; nothing was written")
    return actual


def download_omniglot(data_root=None, *, url_base: str | None = None, force: bool = False,
                      timeout: float = 600.0, log=None) -> dict:
    """Fetch ``images_background.zip`` and ``images_evaluation.zip`` into ``<data root>/omniglot/``.

    A zip already there with the right md5 is kept (unless ``force``); one with a wrong md5 is
    replaced. A set already present as ``.npz`` or as the official folder is left alone (unless
    ``force``), so pointing this at a complete (perhaps shared, read-only) copy writes nothing. ``log(line)`` receives progress lines (default: stderr). Returns
    ``{set name: {"path", "md5", "downloaded"}}``.
    """
    log = log if log is not None else (lambda line: print(line, file=sys.stderr, flush=True))
    base = (url_base or OMNIGLOT_URL_BASE).rstrip("/")
    folder = benchmark_dir(omniglot.FOLDER, data_root)
    _remove_stale_temporaries(folder)
    report = {}
    for spec in omniglot.SETS.values():
        target = folder / spec.zip_name
        other = [p for p in (folder / spec.npz_name, folder / spec.folder_name) if p.exists()]
        if not force and other:
            # the set is already there in another format: do not touch that folder (it may be a shared copy)
            log(f"{other[0]}: the {spec.name} set is present; nothing to download (--force fetches the zip anyway)")
            report[spec.name] = {"path": str(other[0]), "md5": None, "downloaded": False}
            continue
        if not force and target.is_file() and file_digest(target, "md5") == spec.zip_md5:
            log(f"{target}: present, md5 ok")
            report[spec.name] = {"path": str(target), "md5": spec.zip_md5, "downloaded": False}
            continue
        url = f"{base}/{spec.zip_name}"
        _writable_folder(folder)  # fail before announcing a download that could not land
        log(f"downloading {url} -> {target}")
        digest = download_file(url, target, spec.zip_md5, timeout=timeout)
        log(f"{target}: {target.stat().st_size:,} bytes, md5 ok")
        report[spec.name] = {"path": str(target), "md5": digest, "downloaded": True}
    return report


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove temporary download files (``.images_*.zip.<random>.zip``) left by a killed download, once
    they are older than any download may take: a younger one may belong to a live download."""
    now = time.time()
    for spec in omniglot.SETS.values():
        for stale in folder.glob(f".{spec.zip_name}.*"):
            with contextlib.suppress(OSError):
                if stale.is_file() and not stale.is_symlink() and now - stale.stat().st_mtime > STALE_SECONDS:
                    stale.unlink()


def _writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed; raise (naming the root) if files cannot be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"root: cannot create {folder}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"root: {folder} is not writable")

"""``linmaml data download omniglot`` against a local HTTP server on 127.0.0.1 (never the internet)."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import threading
import zipfile
from functools import partial

import numpy as np
import pytest
from PIL import Image

from linmaml.benchmarks.data import DatasetError, omniglot
from linmaml.benchmarks.data.download import download_file, download_omniglot
from linmaml.cli import main


def fixture_zip(set_name: str, first_char_id: int, seed: int) -> bytes:
    """An official-layout zip with one alphabet of two characters, 20 drawings each."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for k in range(2):
            for d in range(20):
                png = io.BytesIO()
                Image.fromarray(rng.random((105, 105)) > 0.1).save(png, format="PNG")
                archive.writestr(f"images_{set_name}/Fixture_Script/character{k + 1:02d}/"
                                 f"{first_char_id + k:04d}_{d + 1:02d}.png", png.getvalue())
    return buffer.getvalue()


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        if self.path.startswith("/short/"):
            # announce the whole file but send half of it, then hang up
            body = (self.server.folder / self.path.rsplit("/", 1)[-1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    zips = {"background": fixture_zip("background", 1, 0), "evaluation": fixture_zip("evaluation", 3, 1)}
    for name, data in zips.items():
        (folder / f"images_{name}.zip").write_bytes(data)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    httpd.folder = folder
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", zips
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def fixture_md5(server, monkeypatch):
    """Make the fixture zips the 'official' ones (md5 and counts) for this test."""
    _, zips = server
    for name, first in (("background", 1), ("evaluation", 3)):
        monkeypatch.setitem(omniglot.SETS, name, dataclasses.replace(
            omniglot.SETS[name], alphabets=1, characters=2, first_char_id=first,
            zip_md5=hashlib.md5(zips[name]).hexdigest()))


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_download_verifies_and_loads(server, fixture_md5, tmp_path):
    url, zips = server
    root = tmp_path / "root"
    lines = []
    report = download_omniglot(root, url_base=url, log=lines.append)
    for name, data in zips.items():
        target = root / "omniglot" / f"images_{name}.zip"
        assert target.read_bytes() == data
        assert report[name] == {"path": str(target), "md5": hashlib.md5(data).hexdigest(), "downloaded": True}
    assert leftovers(root / "omniglot") == []
    # the downloaded zips are a dataset the loader accepts, md5 and counts checked
    sets = omniglot.read_omniglot(root)
    assert {k: (s.format, s.checksum[0]) for k, s in sets.items()} == {"background": ("zip", "md5"),
                                                                       "evaluation": ("zip", "md5")}
    # a second run finds verified copies and fetches nothing
    again = download_omniglot(root, url_base=url + "/nowhere", log=lines.append)
    assert not any(entry["downloaded"] for entry in again.values())


def test_wrong_md5_writes_nothing(server, tmp_path):
    url, _ = server  # the real md5 is expected: the fixture bytes do not match it
    root = tmp_path / "root"
    with pytest.raises(DatasetError) as info:
        download_omniglot(root, url_base=url, log=lambda line: None)
    message = str(info.value)
    assert "images_background.zip" in message and omniglot.SETS["background"].zip_md5 in message
    assert "\n" not in message
    assert list((root / "omniglot").iterdir()) == []


def test_failed_download_keeps_the_previous_file(server, tmp_path):
    url, zips = server
    target = tmp_path / "images_background.zip"
    target.write_bytes(b"previous contents")
    with pytest.raises(DatasetError, match="expected 0123"):
        download_file(f"{url}/images_background.zip", target, "0123" + "0" * 28)
    with pytest.raises(DatasetError, match="truncated"):
        download_file(f"{url}/short/images_background.zip", target, hashlib.md5(zips["background"]).hexdigest())
    with pytest.raises(DatasetError, match="HTTP 404"):
        download_file(f"{url}/missing.zip", target, "0" * 32)
    assert target.read_bytes() == b"previous contents" and leftovers(tmp_path) == []
    digest = download_file(f"{url}/images_background.zip", target, hashlib.md5(zips["background"]).hexdigest())
    assert target.read_bytes() == zips["background"] and digest == hashlib.md5(zips["background"]).hexdigest()


def test_present_npz_is_left_alone(server, tmp_path):
    url, _ = server
    folder = tmp_path / "omniglot"
    folder.mkdir()
    (folder / "omniglot_background.npz").write_bytes(b"x")
    (folder / "images_evaluation").mkdir()
    report = download_omniglot(tmp_path, url_base=url, log=lambda line: None)
    assert not any(entry["downloaded"] for entry in report.values())
    assert sorted(p.name for p in folder.iterdir()) == ["images_evaluation", "omniglot_background.npz"]


def test_cli_download(server, fixture_md5, tmp_path, capsys):
    url, _ = server
    assert main(["data", "download", "omniglot", "--root", str(tmp_path), "--url-base", url]) == 0
    out = capsys.readouterr().out
    assert "background:" in out and "md5" in out and "verified" in out
    assert (tmp_path / "omniglot" / "images_evaluation.zip").is_file()


def test_cli_download_bad_md5_is_one_line(server, tmp_path, capsys):
    url, _ = server
    assert main(["data", "download", "omniglot", "--root", str(tmp_path), "--url-base", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("linmaml data: error:") and "68d2efa1b9178cc56df9314c21c6e718" in err[0]

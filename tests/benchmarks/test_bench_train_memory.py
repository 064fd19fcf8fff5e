"""analysis/train_memory.py in quick mode: the training loop's resident memory stays flat, and the
script's report is consistent (the full mode's 5,000 iterations are what the README quotes)."""
import importlib.util
import json
import pathlib

import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "analysis" / "train_memory.py"


def test_quick_mode_reports_flat_memory(tmp_path):
    spec = importlib.util.spec_from_file_location("train_memory_quick", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        report = module.run(tmp_path, quick=True)
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "train_memory.json").read_text()) == report
    n, s = report["numbers"], report["settings"]
    assert n["status"] == "done" and s["iterations"] == 200 and s["early"] == 20
    rss = {int(k): v for k, v in report["rss_mib_every_100"].items()}
    assert sorted(rss) == [100, 200] and rss[200] == n["rss_mib_at_end"]
    assert 10 < n["rss_mib_at_early"] < 10_000
    assert n["growth"] == n["rss_mib_at_end"] / n["rss_mib_at_early"] - 1
    assert n["growth"] < 0.05 and n["passed"]
    # The reader agrees with the kernel's own count (VmRSS in kB) within a page or so.
    status = pathlib.Path("/proc/self/status")
    if status.exists():
        kb = next(int(x.split()[1]) for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
        assert abs(module.resident_bytes() - kb * 1024) < 8 * 2 ** 20

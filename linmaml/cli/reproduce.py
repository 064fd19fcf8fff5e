"""``linmaml reproduce``: regenerate every figure and ``figures/results.json`` (the main job).

    linmaml reproduce [--out DIR] [--only NAME ...] [--quick] [--list]

Runs each analysis script ``analysis/fig_<name>.py`` of the source tree (the folder beside the
``linmaml`` package; ``$LINMAML_ANALYSIS`` points elsewhere) through its ``run(out_dir, quick)``.
Every script writes into a private staging folder inside DIR; only when all of them have succeeded
are their files moved into DIR and ``results.json`` (one entry per figure: settings and numbers)
rewritten atomically, so an interrupted or failed run leaves the previous results as they were.
With ``--only``, the new entries are merged into the existing ``results.json``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

RESULTS = "results.json"
ENV_ANALYSIS = "LINMAML_ANALYSIS"


def register(subparsers):
    p = subparsers.add_parser(
        "reproduce", help="regenerate every figure and figures/results.json (the main job)",
        description="Regenerate every figure (analysis/fig_*.py) and figures/results.json; files are replaced "
                    "only after every script has succeeded.",
        epilog=f"The analysis scripts are found beside the linmaml package (a source checkout); "
               f"${ENV_ANALYSIS} points to another folder of fig_*.py scripts.")
    p.add_argument("--out", type=pathlib.Path, metavar="DIR",
                   help="output folder (default: figures/ of the source tree)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this figure (repeatable); its entry is merged into DIR/results.json")
    p.add_argument("--quick", action="store_true", help="each script's quick mode (seconds; for smoke tests)")
    p.add_argument("--list", action="store_true", help="list the figures and their scripts, run nothing")
    p.set_defaults(func=run)


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str
    script: pathlib.Path
    module: object


def analysis_dir() -> pathlib.Path:
    """The folder of analysis scripts: ``$LINMAML_ANALYSIS``, else ``analysis/`` beside the package."""
    if os.environ.get(ENV_ANALYSIS):
        folder = pathlib.Path(os.environ[ENV_ANALYSIS]).expanduser()
        where = f"${ENV_ANALYSIS}"
    else:
        import linmaml

        folder = pathlib.Path(linmaml.__file__).resolve().parent.parent / "analysis"
        where = "beside the linmaml package"
    if not folder.is_dir() or not any(folder.glob("fig_*.py")):
        raise FileNotFoundError(
            f"analysis scripts not found: expected {folder}/fig_*.py ({where}); reproduce needs the source "
            f"tree (git checkout with `pip install -e .`) or {ENV_ANALYSIS}=<folder with fig_*.py>")
    return folder


def discover(folder: pathlib.Path) -> list[Figure]:
    """Load every ``fig_*.py`` in ``folder`` (sorted by file name) and check its interface."""
    figures, seen = [], {}
    for script in sorted(folder.glob("fig_*.py")):
        spec = importlib.util.spec_from_file_location(f"linmaml_analysis_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        # Registered like an import, so dataclasses and pickling inside the script can find it.
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        name = getattr(module, "NAME", None)
        if not isinstance(name, str) or not name or not callable(getattr(module, "run", None)):
            raise ValueError(f"{script.name}: expected a module-level NAME string and a run(out_dir, quick) function")
        if name in seen:
            raise ValueError(f"{script.name}: figure name {name!r} is also used by {seen[name].name}")
        seen[name] = script
        figures.append(Figure(name, script, module))
    return figures


def select(figures: list[Figure], only: list[str] | None) -> list[Figure]:
    """The figures named in ``only`` (in discovery order), or all; unknown names raise ValueError."""
    if not only:
        return figures
    known = {f.name: f for f in figures}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ValueError(f"--only: unknown figure {unknown[0]!r} (known: {', '.join(known)})")
    return [f for f in figures if f.name in set(only)]


def _output_folder(out: pathlib.Path | None, folder: pathlib.Path) -> pathlib.Path:
    out = (folder.parent / "figures") if out is None else pathlib.Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out: {out} exists and is not a folder")
    return out


def _read_results(path: pathlib.Path) -> dict:
    if not path.exists():
        return {"generated_by": "linmaml reproduce", "figures": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot merge into an unreadable results file ({error}); move it away first") from None
    if not isinstance(data, dict) or not isinstance(data.get("figures"), dict):
        raise ValueError(f"{path}: not a results file of linmaml reproduce (no 'figures' object); move it away first")
    return data


def reproduce(out: pathlib.Path, figures: list[Figure], *, quick: bool = False, merge: bool = False,
              progress=None) -> dict:
    """Run ``figures`` into ``out`` transactionally; returns the results written to ``out/results.json``."""
    from linmaml._io import atomic_write_json

    say = progress or (lambda message: None)
    results_path = out / RESULTS
    results = _read_results(results_path) if merge else {"generated_by": "linmaml reproduce", "figures": {}}
    out.mkdir(parents=True, exist_ok=True)
    stage = pathlib.Path(tempfile.mkdtemp(prefix=".reproduce-", dir=out))
    began = time.perf_counter()
    try:
        entries = {}
        for i, figure in enumerate(figures, 1):
            say(f"[{i}/{len(figures)}] {figure.name} ({figure.script.name}{', quick' if quick else ''}) ...")
            start = time.perf_counter()
            try:
                record = figure.module.run(stage, quick)
            except BaseException:
                say(f"reproduce: {figure.name} failed; nothing was written to {out}")
                raise
            seconds = time.perf_counter() - start
            _check_record(figure, record, stage)
            entry = dict(record)
            entry["seconds"] = round(seconds, 3)
            entry["script"] = f"analysis/{figure.script.name}"
            entry["files"] = sorted(p.name for p in stage.iterdir() if p.is_file() and p.name.startswith(figure.name + "."))
            entries[figure.name] = entry
            say(f"      done in {seconds:.1f} s")
        # Every script succeeded: publish. Each move is atomic; results.json goes last, so it
        # never names files that are not there yet.
        for path in sorted(stage.iterdir()):
            if path.is_file():
                os.replace(path, out / path.name)
        results["figures"].update(entries)
        results["figures"] = dict(sorted(results["figures"].items()))
        atomic_write_json(results_path, results)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say(f"wrote {len(figures)} figure(s) and {results_path} in {time.perf_counter() - began:.1f} s")
    return results


def _check_record(figure: Figure, record, stage: pathlib.Path) -> None:
    if not isinstance(record, dict) or record.get("figure") != figure.name or not {"settings", "numbers"} <= set(record):
        raise ValueError(f"{figure.script.name}: run() must return {{'figure': {figure.name!r}, 'settings': ..., "
                         f"'numbers': ...}}")
    missing = [f"{figure.name}{ext}" for ext in (".png", ".json") if not (stage / f"{figure.name}{ext}").is_file()]
    if missing:
        raise ValueError(f"{figure.script.name}: run() did not write {', '.join(missing)}")


def run(args) -> int:
    folder = analysis_dir()
    figures = discover(folder)
    if args.list:
        for f in figures:
            print(f"{f.name:<16} {f.script}")
        return 0
    chosen = select(figures, args.only)
    out = _output_folder(args.out, folder)
    reproduce(out, chosen, quick=args.quick, merge=bool(args.only),
              progress=lambda message: print(message, file=sys.stderr, flush=True))
    return 0

"""Keep the summaries of finished run folders in the repository: ``bench/results/runs/<name>/``.

A run folder holds checkpoints and weights (megabytes); the tables of the README need only
``results.json`` and ``config.yaml`` (and ``merc imbalance``'s comparison where it was run).
This script copies those few files, so that ``bench/results_table.py bench/results/runs/*``
rebuilds every table from what the runs wrote, on any machine, after the run folders are
gone. Nothing is edited: the files are byte-for-byte those of the runs.

Run: ``.venv/bin/python bench/keep_runs.py RUN_DIR... [--into bench/results/runs]``
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from merc.evaluation.tables import TUNE_SUMMARY, TUNED_RUN

KEPT = ("results.json", "config.yaml", "unimodal_vs_alone.json", "unimodal_vs_alone.md")
#: What a `merc tune` search folder keeps besides its final run (kept as a run, in best/).
KEPT_SEARCH = (TUNE_SUMMARY, "tune_spec.json", "tune.png")
DEFAULT_INTO = Path(__file__).resolve().parent / "results" / "runs"


def keep(run: Path, into: Path) -> Path | None:
    """Copy ``run``'s summaries into ``into / run.name``; ``None`` if the run has not finished.

    A ``merc tune`` folder (its ``tune.json``) keeps its search summary and plot, and its
    final run ``best/`` as a run (names from :mod:`merc.evaluation.tables`)."""
    if (run / TUNE_SUMMARY).is_file():
        target = into / run.name
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT_SEARCH:
            if (run / name).is_file():
                shutil.copyfile(run / name, target / name)
        keep(run / TUNED_RUN, target)
        return target
    if not (run / "results.json").is_file():
        return None
    target = into / run.name
    target.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (run / name).is_file():
            shutil.copyfile(run / name, target / name)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--into", type=Path, default=DEFAULT_INTO)
    args = parser.parse_args(argv)
    for run in args.runs:
        kept = keep(run, args.into)
        print(f"{run}: {'kept in ' + str(kept) if kept else 'not finished, skipped'}")


if __name__ == "__main__":
    main()

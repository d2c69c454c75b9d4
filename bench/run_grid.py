"""Run a grid of ``merc train`` runs from a spec, a few at a time, skipping the finished ones.

The result grids of the issues (SPCL Table 3's backbone x method x modality cells, a
paper's ablation rows, a baseline on every dataset) are dozens of 3-seed runs. A spec in
``bench/grids/*.yaml`` lists them once; this script expands it, leaves out every run whose
folder already holds ``results.json``, and runs the rest, ``--jobs`` at a time with one
thread each (the development machine has 2 cores: one training job per core). A run that
is interrupted resumes where it stopped the next time (``merc train`` resumes its folder),
so the same command can be repeated across sessions until the grid is complete. With
``--keep`` each finished run's summaries are copied into ``bench/results/runs/``
(``bench/keep_runs.py``), from which the README tables are printed.

Spec::

    runs_root: runs            # run folders (relative to the repository root)
    groups:
      - name: "mmdfn-late-iemocap6-synthav-{modalities}-{balance}"
        model: mmdfn
        dataset: iemocap6-synthav
        modalities: [tav, ta, tv, av]          # a list: one run per value
        balance: [base, rna, ogm-ge, opm, fagm, spcl]   # base: no --balance
        seeds: "0,1,2"
        overrides: ["model.fusion=late"]       # section.key=value, as merc train takes them
        protocol: split                        # or loso
        minutes: 9                             # optional: rough minutes per run on one core
      - name: "cmath-iemocap6-synthav-tav-{variant}"
        model: cmath
        dataset: iemocap6-synthav
        modalities: tav
        variants:                              # named override sets, added to `overrides`
          - {variant: no-mr, overrides: ["model.use_reconstruction=false"]}

Every key but ``name`` and ``minutes`` may be a list; the grid is their product, in the
order written. ``{key}`` in ``name`` is replaced by the run's value.

Run::

    .venv/bin/python bench/run_grid.py bench/grids/issue13-synthav.yaml --dry-run   # what is left, and its cost
    .venv/bin/python bench/run_grid.py bench/grids/issue13-synthav.yaml --jobs 2 --keep

Several processes may work on one grid (a second worker started when a core frees): each
skips, when its turn comes, a run another has finished or holds (its run folder's lock).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from merc.training.run_folder import RunLock

ROOT = Path(__file__).resolve().parent.parent
#: Keys of a group that become ``merc train`` arguments (``name``/``minutes`` are the spec's own).
RUN_KEYS = ("model", "dataset", "modalities", "balance", "seeds", "overrides", "protocol")


@dataclass(frozen=True)
class GridRun:
    """One run of a grid: its folder name and the ``merc train`` arguments."""

    name: str
    model: str
    dataset: str
    modalities: str
    seeds: str
    balance: str = "base"
    overrides: tuple[str, ...] = ()
    protocol: str = "split"
    minutes: float | None = None

    def command(self, runs_root: Path) -> list[str]:
        """The ``merc train`` command line of this run (``merc`` from the running interpreter's environment)."""
        merc = str(Path(sys.executable).with_name("merc"))
        cmd = [merc, "train", "--model", self.model, "--dataset", self.dataset, "--modalities", self.modalities]
        cmd += ["--seeds", self.seeds, "--out", str(runs_root / self.name), "--quiet"]
        if self.protocol != "split":
            cmd += ["--protocol", self.protocol]
        if self.balance != "base":
            cmd += ["--balance", self.balance]
        return cmd + list(self.overrides)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def expand(spec: Mapping[str, Any]) -> list[GridRun]:
    """Every run of a spec, in order; names must be unique.

    >>> runs = expand({"groups": [{"name": "m-{modalities}-{balance}", "model": "mmgcn", "dataset": "synthetic",
    ...                            "modalities": ["tav", "av"], "balance": ["base", "rna"], "seeds": "0"}]})
    >>> [r.name for r in runs]
    ['m-tav-base', 'm-tav-rna', 'm-av-base', 'm-av-rna']
    """
    runs: list[GridRun] = []
    for group in spec.get("groups") or []:
        unknown = set(group) - {"name", "minutes", "variants", *RUN_KEYS}
        if unknown or "name" not in group or "model" not in group or "dataset" not in group:
            raise ValueError(
                f"grid group {group.get('name')!r}: needs name, model, dataset; unknown keys {sorted(unknown)}"
            )
        keys = [k for k in RUN_KEYS if k in group]
        values = []
        for k in keys:
            # overrides: a list of strings is one setting; a list of lists is several.
            v = group[k]
            if k == "overrides":
                v = v if v and isinstance(v[0], list) else [v or []]
            values.append(_as_list(v))
        variants = group.get("variants") or [{"variant": "", "overrides": []}]
        for combo, variant in itertools.product(itertools.product(*values), variants):
            setting = dict(zip(keys, combo, strict=True))
            overrides = tuple(str(o) for o in [*setting.pop("overrides", []), *variant.get("overrides", [])])
            fields = {k: str(v) for k, v in setting.items()}
            fields.setdefault("modalities", "t")
            fields.setdefault("seeds", "0,1,2")
            name = str(group["name"]).format(**fields, variant=variant.get("variant", ""))
            runs.append(GridRun(name=name, overrides=overrides, minutes=group.get("minutes"), **fields))
    names = [r.name for r in runs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"grid run names must be unique, repeated: {duplicated}")
    return runs


#: Where ``bench/keep_runs.py`` keeps finished runs' summaries: a run kept there is finished.
KEPT = ROOT / "bench" / "results" / "runs"


def pending(runs: Sequence[GridRun], runs_root: Path, kept: Path = KEPT) -> list[GridRun]:
    """The runs without ``results.json`` in their folder under ``runs_root`` or among the kept summaries."""
    return [r for r in runs if not any((root / r.name / "results.json").is_file() for root in (runs_root, kept))]


def _launch(run: GridRun, runs_root: Path, logs: Path) -> subprocess.Popen[bytes]:
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with (logs / f"{run.name}.log").open("ab") as log:
        return subprocess.Popen(run.command(runs_root), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_all(todo: Sequence[GridRun], runs_root: Path, jobs: int, keep: bool) -> Iterator[tuple[GridRun, int]]:
    """Run ``todo`` with at most ``jobs`` at once; yields each finished run and its exit code."""
    queue = list(todo)
    active: dict[subprocess.Popen[bytes], GridRun] = {}
    while queue or active:
        while queue and len(active) < jobs:
            run = queue.pop(0)
            # Another grid process on the same spec may have finished it or be running it:
            # several processes can share one grid (e.g. a second worker started later).
            if not pending([run], runs_root):
                print(f"{time.strftime('%H:%M:%S')} skipped (finished meanwhile): {run.name}", flush=True)
                continue
            if RunLock.held(runs_root / run.name):
                print(f"{time.strftime('%H:%M:%S')} skipped (running in another process): {run.name}", flush=True)
                continue
            active[_launch(run, runs_root, runs_root / "_logs")] = run
        time.sleep(2)
        for proc in [p for p in active if p.poll() is not None]:
            run = active.pop(proc)
            if keep and proc.returncode == 0:
                subprocess.run(
                    [sys.executable, str(ROOT / "bench" / "keep_runs.py"), str(runs_root / run.name)], check=False
                )
            yield run, int(proc.returncode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default 2)")
    parser.add_argument("--keep", action="store_true", help="copy each finished run's summaries to bench/results/runs")
    parser.add_argument("--dry-run", action="store_true", help="list the pending runs and their estimated cost")
    parser.add_argument("--only", default="", help="run only the runs whose name contains this text")
    args = parser.parse_args(argv)
    spec = yaml.safe_load(args.spec.read_text(encoding="utf-8"))
    runs_root = ROOT / str(spec.get("runs_root", "runs"))
    runs = [r for r in expand(spec) if args.only in r.name]
    todo = pending(runs, runs_root)
    minutes = sum(r.minutes or 0 for r in todo)
    print(
        f"{args.spec}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} pending"
        + (f" (about {minutes:.0f} core-minutes)" if minutes else "")
    )
    if args.dry_run:
        for r in todo:
            print(" ", " ".join(r.command(runs_root)))
        return 0
    failed = 0
    for run, code in run_all(todo, runs_root, max(1, args.jobs), args.keep):
        print(f"{time.strftime('%H:%M:%S')} {'done' if code == 0 else f'FAILED ({code})'}: {run.name}", flush=True)
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

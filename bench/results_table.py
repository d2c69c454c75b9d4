"""Markdown table of finished runs: test weighted F1 and accuracy, mean ± std over seeds.

Reads ``results.json`` (and ``config.yaml`` for the overrides) of every run folder given,
so the README's numbers come from the runs, never from hand-typed constants.

Run: ``.venv/bin/python bench/results_table.py runs/*``

A leave-one-session-out run (``merc train --protocol loso``) says so in its model cell
(``LOSO K folds``); its scores are the mean ± std pooled over folds x seeds, and its
accuracy cell (WA) adds UA, the metric such runs are compared on.

``--ablation SPEC.yaml [--runs DIR]``: a paper's ablation table (``bench/ablations/*.yaml``:
rows, the row each is compared with, the paper's direction), every effect's direction
checked against the paper with a paired test (:func:`merc.evaluation.tables.ablation_table`);
run folders are looked up under ``DIR`` (default ``bench/results/runs``).

``--balance``: SPCL Table 3's layout instead (backbone x balance method rows, modality-set
columns, paired t-test against each backbone's base run; :func:`merc.evaluation.tables.balance_table`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import yaml

from merc.config import load_recipe
from merc.errors import MercError
from merc.evaluation.aggregate import format_mean_std
from merc.evaluation.tables import is_loso
from merc.training.trainer import TrainConfig


def recipe_changes(cfg: dict, model: str, dataset: str) -> list[str]:
    """``section.key=value`` where the run's model/training settings differ from the recipe's."""
    try:
        recipe = load_recipe(model, dataset)
    except MercError:
        return []
    # Training keys a recipe leaves out are compared with TrainConfig's defaults (e.g. precision "32").
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    changes = []
    for section in ("model", "training"):
        base = recipe.get(section) or {}
        for key, value in (cfg.get(section) or {}).items():
            if key in base:
                if base[key] != value:
                    changes.append(f"{key}={value}")
            elif section == "training" and key in defaults and str(value) != str(defaults[key]):
                changes.append(f"{key}={value}")
    return changes


def row(run: Path) -> str | None:
    res_path = run / "results.json"
    if not res_path.is_file():
        return None
    res = json.loads(res_path.read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    extras = []
    curriculum = (cfg or {}).get("curriculum") or {}
    if curriculum.get("strategy") not in (None, "none"):
        extras.append(f"+CL ({curriculum.get('buckets')} buckets)")
    extras += recipe_changes(cfg or {}, res["model"], res["dataset"])
    test = res["test"]
    seeds = ",".join(str(s) for s in res.get("seeds", []))
    accuracy = format_mean_std(test["accuracy"])
    if is_loso(res):
        extras.insert(0, f"LOSO {len(res['protocol'].get('folds') or [])} folds")
        accuracy += f" (UA {format_mean_std(test['ua'])})" if "ua" in test else ""
        seeds += " (x folds)"
    return (
        f"| {res['model']} {' '.join(extras)} | `{res['dataset']}` | {res['modalities']} | "
        f"{format_mean_std(test['weighted_f1'])} | {accuracy} | {seeds} | "
        f"{res['timing']['epoch_seconds_median']:.1f} |"
    )


def main(paths: list[str]) -> None:
    if paths and paths[0] == "--ablation":
        from merc.evaluation.tables import ablation_table

        parser = argparse.ArgumentParser(prog="results_table.py --ablation")
        parser.add_argument("specs", nargs="+", type=Path)
        parser.add_argument("--runs", type=Path, default=Path(__file__).resolve().parent / "results" / "runs")
        args = parser.parse_args(paths[1:])
        for spec in args.specs:
            print(ablation_table(yaml.safe_load(spec.read_text(encoding="utf-8")), args.runs))
        return
    if paths and paths[0] == "--balance":
        from merc.evaluation.tables import balance_table
        from merc.training.plugins.registry import plugin_groups

        sections = [spec.section for spec in plugin_groups().get("balance", [])]
        print(balance_table(paths[1:], sections))
        return
    print("| model | dataset | modalities | test weighted F1 | test accuracy | seeds | s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for p in paths:
        line = row(Path(p))
        if line:
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])

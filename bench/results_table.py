"""Markdown table of finished runs: test weighted F1 and accuracy, mean ± std over seeds.

Reads ``results.json`` (and ``config.yaml`` for the overrides) of every run folder given,
so the README's numbers come from the runs, never from hand-typed constants.

Run: ``.venv/bin/python bench/results_table.py runs/*``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from merc.evaluation.aggregate import format_mean_std


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
    model_cfg = (cfg or {}).get("model") or {}
    extras += [f"{k}={v}" for k, v in model_cfg.items() if k.startswith("use_") and v is False]
    test = res["test"]
    seeds = ",".join(str(s) for s in res.get("seeds", []))
    return (f"| {res['model']} {' '.join(extras)} | `{res['dataset']}` | {res['modalities']} | "
            f"{format_mean_std(test['weighted_f1'])} | {format_mean_std(test['accuracy'])} | {seeds} | "
            f"{res['timing']['epoch_seconds_median']:.1f} |")


def main(paths: list[str]) -> None:
    print("| model | dataset | modalities | test weighted F1 | test accuracy | seeds | s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for p in paths:
        line = row(Path(p))
        if line:
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])

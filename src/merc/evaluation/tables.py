"""Comparison tables built from run folders (never typed by hand).

:func:`balance_table` lays finished runs out as SPCL's Table 3: one row per backbone and
modality-balance method (``base`` = no balance plug-in), one column pair (w-F1, accuracy)
per modality set, mean ± std over seeds, and per cell a paired t-test against the same
backbone's ``base`` run on the same seeds (two-sided; ``*`` p < 0.05, ``†`` p < 0.10),
with the sign of the mean difference. With three seeds the test has two degrees of
freedom: it flags only large, consistent changes, which is the point.

A leave-one-session-out run (``merc train --protocol loso``) is its own backbone row,
``<model> (loso)``: its cells show the mean ± std pooled over folds x seeds, and its
paired test pairs each seed's cross-validated score (its mean over the folds) with the
base run's.

Reads only ``results.json`` and ``config.yaml`` of each run folder. Which recipe sections
are balance methods is the caller's knowledge (the plug-in registry lives in
:mod:`merc.training`, above this package): ``bench/results_table.py --balance`` passes them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from merc.evaluation.aggregate import format_mean_std

#: Column order of SPCL Table 3.
MODALITY_ORDER = ("tav", "ta", "tv", "av", "t", "a", "v")


def run_method(config: Mapping[str, Any], method_sections: Sequence[str]) -> str:
    """The balance method a run used: the enabled balance sections joined by ``+``, or ``base``."""
    used = []
    for section in method_sections:
        cfg = config.get(section)
        if isinstance(cfg, Mapping) and cfg and cfg.get("enabled", True) not in (False, "false", "False", 0):
            used.append(section)
    return "+".join(used) or "base"


def _load(run: Path, method_sections: Sequence[str]) -> dict[str, Any] | None:
    results_path = run / "results.json"
    if not results_path.is_file():
        return None
    results = json.loads(results_path.read_text(encoding="utf-8"))
    config_path = run / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    fusion = ((config or {}).get("model") or {}).get("fusion")
    loso = is_loso(results)
    return {
        # Late-fusion variants are other backbones (SPCL's four are all late fusion), and
        # so is a cross-validated run: its numbers are not comparable with one split's.
        "model": results["model"] + (f" ({fusion})" if fusion == "late" else "") + (" (loso)" if loso else ""),
        "dataset": results["dataset"],
        "modalities": results["modalities"],
        "method": run_method(config or {}, method_sections),
        "seeds": list(results.get("seeds") or []),
        "test": results["test"],
        # What the paired test pairs by seed: a loso run's per-seed means over its folds.
        "paired": results["seed_means"]["test"] if loso else results["test"],
        "run": str(run),
    }


def is_loso(results: Mapping[str, Any]) -> bool:
    """Whether a ``results.json`` is that of a leave-one-session-out run (``--protocol loso``)."""
    protocol = results.get("protocol")
    return isinstance(protocol, Mapping) and protocol.get("name") == "loso"


def paired_test(values: Sequence[float], base: Sequence[float]) -> tuple[float, float] | None:
    """``(mean difference, two-sided p)`` of a paired t-test, or ``None`` (fewer than 2 pairs).

    >>> diff, p = paired_test([61.0, 61.6, 62.2], [60.0, 60.5, 61.0])
    >>> round(diff, 2), p < 0.05
    (1.1, True)
    """
    from scipy import stats

    pairs = [(v, b) for v, b in zip(values, base, strict=True)]
    if len(pairs) < 2:
        return None
    diffs = [v - b for v, b in pairs]
    mean = sum(diffs) / len(diffs)
    if all(abs(d - diffs[0]) < 1e-12 for d in diffs):
        # No spread: identical runs (p = 1) or a constant shift (t is infinite).
        return mean, 1.0 if abs(mean) < 1e-12 else 0.0
    result = stats.ttest_rel(values, base)
    return mean, float(result.pvalue)


def _mark(test: tuple[float, float] | None) -> str:
    if test is None or math.isnan(test[1]):
        return ""
    diff, p = test
    arrow = "↑" if diff > 0 else "↓"
    if p < 0.05:
        return f" {arrow}*"
    if p < 0.10:
        return f" {arrow}†"
    return ""


def _cell(entry: Mapping[str, Any], base: Mapping[str, Any] | None, metric: str) -> str:
    values = entry["test"][metric]
    text = format_mean_std(values)
    if base is not None and entry is not base:
        per_seed = dict(zip(entry["seeds"], entry["paired"][metric]["per_seed"], strict=True))
        base_seed = dict(zip(base["seeds"], base["paired"][metric]["per_seed"], strict=True))
        common = [s for s in entry["seeds"] if s in base_seed]
        text += _mark(paired_test([per_seed[s] for s in common], [base_seed[s] for s in common]))
    return text


def balance_table(runs: Sequence[str | Path], method_sections: Sequence[str]) -> str:
    """Markdown tables, one per dataset: backbone x method rows, modality-set columns.

    Args:
        runs: Run folders (``merc train --out``); folders without ``results.json`` are skipped.
        method_sections: Recipe sections that are balance methods (e.g. ``rna``, ``ogm-ge``,
            ``opm``, ``fagm``, ``spcl``).

    Returns:
        The tables; a run of the same (dataset, model, method, modalities) given twice
        keeps the later one.
    """
    entries = [e for e in (_load(Path(r), method_sections) for r in runs) if e is not None]
    out: list[str] = []
    for dataset in sorted({e["dataset"] for e in entries}):
        cells: dict[tuple[str, str, str], dict[str, Any]] = {}
        for e in entries:
            if e["dataset"] == dataset:
                cells[(e["model"], e["method"], e["modalities"])] = e
        mods = [m for m in MODALITY_ORDER if any(k[2] == m for k in cells)]
        mods += sorted({k[2] for k in cells} - set(mods))
        order = ["base", *method_sections]
        rows = sorted(
            {(k[0], k[1]) for k in cells},
            key=lambda r: (r[0], order.index(r[1]) if r[1] in order else len(order), r[1]),
        )
        out += [
            f"### `{dataset}`: test weighted F1 / accuracy (%), mean ± std over seeds",
            "",
            "| model | method | " + " | ".join(f"{m.upper()} w-F1 | {m.upper()} acc" for m in mods) + " |",
            "|---|---|" + "---|---|" * len(mods),
        ]
        for model, method in rows:
            parts = []
            for m in mods:
                entry = cells.get((model, method, m))
                base = cells.get((model, "base", m))
                if entry is None:
                    parts += ["", ""]
                    continue
                parts += [_cell(entry, base, "weighted_f1"), _cell(entry, base, "accuracy")]
            out.append(f"| {model} | {'+' + method if method != 'base' else 'base'} | " + " | ".join(parts) + " |")
        out += [
            "",
            "Paired t-test per seed against the same model's base run: ↑/↓ direction, * p < 0.05, † p < 0.10."
            + (
                " (loso) rows: leave-one-session-out, mean ± std over folds x seeds; paired by seed on each "
                "seed's mean over the folds."
                if any(model.endswith("(loso)") for model, _ in rows)
                else ""
            ),
            "",
        ]
    return "\n".join(out)


__all__ = ["balance_table", "is_loso", "paired_test", "run_method"]

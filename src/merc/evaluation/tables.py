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

:func:`ablation_table` lays out a paper's ablation table: one row per ablated variant, each
compared with the row the paper compares it with (the full model, or the same backbone
with the component on), the paper's reported direction beside merc's measured difference,
and a verdict per row (confirmed / same direction, not significant / not confirmed). The
rows come from a small YAML spec per paper (``bench/ablations/<paper>.yaml``).

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
        "method": run_method(config or {}, method_sections) + (" (tuned)" if is_tuned_run(run) else ""),
        "seeds": list(results.get("seeds") or []),
        "test": results["test"],
        # What the paired test pairs by seed: a loso run's per-seed means over its folds.
        "paired": results["seed_means"]["test"] if loso else results["test"],
        "run": str(run),
    }


#: ``merc tune`` writes its search summary here and its final run into ``TUNED_RUN``.
TUNE_SUMMARY = "tune.json"
TUNED_RUN = "best"


def is_tuned_run(run: Path) -> bool:
    """Whether ``run`` is the final run of a ``merc tune`` search (its values searched on
    validation): the balance table labels its method ``+X (tuned)``."""
    return run.name == TUNED_RUN and (run.parent / TUNE_SUMMARY).is_file()


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


#: Directions a paper can report for an ablated row against its reference row.
PAPER_DIRECTIONS = ("down", "up", "same")


def ablation_verdict(diff: float, p: float | None, paper: str, alpha: float = 0.10) -> str:
    """Whether merc's measured difference (ablated - reference) agrees with the paper's direction.

    ``paper`` is ``"down"`` (the paper reports the ablated row lower, i.e. the component
    helps), ``"up"`` or ``"same"``. With a paired test ``p`` (None: fewer than two seeds):
    the same sign and ``p < alpha`` is ``confirmed``; the same sign without significance
    is ``same direction, n.s.``; the opposite sign is ``not confirmed`` (``, significant``
    when ``p < alpha``). ``"same"`` is confirmed when the difference is not significant.

    >>> ablation_verdict(-2.0, 0.01, "down")
    'confirmed'
    >>> ablation_verdict(+4.0, 0.04, "down")
    'not confirmed (opposite, p < 0.10)'
    """
    if paper not in PAPER_DIRECTIONS:
        raise ValueError(f"paper direction must be one of {PAPER_DIRECTIONS}, got {paper!r}")
    significant = p is not None and p < alpha
    if paper == "same":
        return "not confirmed (differs, p < 0.10)" if significant else "confirmed (no significant difference)"
    agrees = (diff < 0) == (paper == "down") and diff != 0
    if agrees:
        return "confirmed" if significant else "same direction, n.s."
    return "not confirmed (opposite, p < 0.10)" if significant else "not confirmed (opposite, n.s.)"


def _paired_metric(entry: Mapping[str, Any], reference: Mapping[str, Any], metric: str) -> tuple[float, float | None]:
    """Mean difference over the seeds both runs share, and the paired test's p (None: < 2 seeds)."""
    values = dict(zip(entry["seeds"], entry["paired"][metric]["per_seed"], strict=True))
    base = dict(zip(reference["seeds"], reference["paired"][metric]["per_seed"], strict=True))
    common = [s for s in entry["seeds"] if s in base]
    if not common:
        raise ValueError(f"{entry['run']} and {reference['run']} share no seed: nothing to pair")
    test = paired_test([values[s] for s in common], [base[s] for s in common])
    if test is None:
        return values[common[0]] - base[common[0]], None
    return test[0], test[1]


def check_ablation_spec(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The rows of an ablation spec, checked: unique names, ``run`` and ``label`` given,
    ``versus`` naming another row, ``paper`` one of :data:`PAPER_DIRECTIONS`.

    Raises:
        ValueError: naming the spec's title and the faulty row.
    """
    title = spec.get("title")
    rows = spec.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"ablation spec {title!r}: expected a non-empty list under 'rows'")
    names = [r.get("name") if isinstance(r, Mapping) else None for r in rows]
    if None in names or len(set(names)) != len(names):
        raise ValueError(f"ablation spec {title!r}: every row needs a unique 'name', got {names}")
    for r in rows:
        for key in ("label", "run"):
            if not isinstance(r.get(key), str) or not r[key]:
                raise ValueError(f"ablation spec {title!r}, row {r['name']!r}: '{key}' must be a non-empty string")
        versus = r.get("versus")
        if versus is not None and (versus not in names or versus == r["name"]):
            raise ValueError(f"ablation spec {title!r}, row {r['name']!r}: versus {versus!r} is no other row")
        if r.get("paper", "down") not in PAPER_DIRECTIONS:
            raise ValueError(
                f"ablation spec {title!r}, row {r['name']!r}: paper must be one of {PAPER_DIRECTIONS}, got {r['paper']!r}"
            )
    return rows


def ablation_table(spec: Mapping[str, Any], runs_root: str | Path) -> str:
    """A paper's ablation table from run folders, with the direction of every effect checked.

    Args:
        spec: ``{"title": str, "rows": [{"name", "label", "run", "versus"?, "paper"?,
            "paper_values"?}, ...]}``: ``run`` is a folder under ``runs_root``; a row with
            ``versus`` (another row's ``name``) is compared with that row, ``paper`` being
            the direction the paper reports for it (:data:`PAPER_DIRECTIONS`) and
            ``paper_values`` the paper's own numbers, shown as text.
        runs_root: Folder holding the run folders.

    Returns:
        A markdown table: label, overrides are the caller's to document; weighted F1 and
        accuracy (mean ± std), the paired difference in weighted F1 (and accuracy) against
        the reference row, the paper's direction and numbers, and the verdict. Rows whose
        run has not finished show ``not run``.
    """
    root = Path(runs_root)
    rows = check_ablation_spec(spec)
    entries = {r["name"]: _load(root / r["run"], ()) for r in rows}
    out = [
        f"### {spec.get('title', 'Ablations')}",
        "",
        "| row | w-F1 | accuracy | vs | Δ w-F1 (p) | Δ acc (p) | paper | verdict (w-F1) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def delta(diff: float, p: float | None) -> str:
        return f"{diff:+.2f}" + (f" ({p:.2f})" if p is not None else "")

    for r in rows:
        entry = entries[r["name"]]
        if entry is None:
            out.append(f"| {r['label']} | not run | | | | | | |")
            continue
        cells = [format_mean_std(entry["test"]["weighted_f1"]), format_mean_std(entry["test"]["accuracy"])]
        versus = r.get("versus")
        if versus is None:
            out.append(f"| {r['label']} | {cells[0]} | {cells[1]} | (reference) | | | {r.get('paper_values', '')} | |")
            continue
        reference = entries[versus]
        if reference is None:
            out.append(f"| {r['label']} | {cells[0]} | {cells[1]} | {versus} (not run) | | | | |")
            continue
        d_f1, p_f1 = _paired_metric(entry, reference, "weighted_f1")
        d_acc, p_acc = _paired_metric(entry, reference, "accuracy")
        paper = r.get("paper", "down")
        arrow = {"down": "↓", "up": "↑", "same": "="}.get(paper, "?")
        shown = f"{arrow} {r.get('paper_values', '')}".strip()
        out.append(
            f"| {r['label']} | {cells[0]} | {cells[1]} | {versus} | {delta(d_f1, p_f1)} | "
            f"{delta(d_acc, p_acc)} | {shown} | {ablation_verdict(d_f1, p_f1, paper)} |"
        )
    out += [
        "",
        "Δ: mean paired difference over seeds against the row named in `vs` (two-sided paired t-test p). "
        "paper: the direction the paper reports for the row against the same reference. Verdict: "
        "confirmed = same direction and p < 0.10; same direction, n.s. = the sign agrees, the test does not; "
        "not confirmed = the opposite sign.",
        "",
    ]
    return "\n".join(out)


__all__ = [
    "PAPER_DIRECTIONS",
    "ablation_table",
    "ablation_verdict",
    "balance_table",
    "check_ablation_spec",
    "is_loso",
    "paired_test",
    "run_method",
]

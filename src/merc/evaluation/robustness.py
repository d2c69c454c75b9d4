"""Robustness to missing modalities: conditions, masks and the report.

The conditions are overall missing rates (Mi-CGA Table 3 grid 0.0 .. 0.7,
:func:`merc.data.missing.apply_missing`) and per-modality drops (a modality or a pair
removed from every utterance, :func:`merc.data.missing.drop_modalities`). This module
evaluates and reports only; the sweeps that load trained weights or retrain
(train-complete and retrain protocols, ``merc robustness``) are experiment drivers in
:mod:`merc.training.robustness_sweep`, beside the runner.

Masks depend only on (mask seed, condition, dialogue id), and every mask used is written
to ``<out>/robustness_masks/`` and read back on later calls, so models evaluated into the
same folder see identical masks. :func:`write_robustness_report` writes
``robustness.json``, ``robustness.md`` (Table 3-style: mean ± std per condition and the
average over rates) and ``robustness.png`` (metric vs missing rate, one curve per model,
error bars = std over training seeds x mask seeds; per-modality drops as grouped bars);
:func:`merge_robustness_reports` combines earlier sweeps into one table and plot.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from merc.data.missing import apply_missing, check_rate, drop_modalities, load_masks, save_masks
from merc.data.schema import MercDataset, parse_modalities
from merc.errors import ConfigError, DataError
from merc.evaluation.aggregate import aggregate_seeds
from merc.evaluation.metrics import HEADLINE_METRICS
from merc.evaluation.report import METRIC_TITLES

# matplotlib is imported inside plot_robustness. Nothing here imports merc.training (or
# merc.models): evaluation does not depend on training (tests/test_import_direction.py).
log = logging.getLogger(__name__)

#: Mi-CGA Table 3 / GCNet missing-rate grid.
DEFAULT_RATES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: Every single modality and every pair.
DEFAULT_DROPS: tuple[str, ...] = ("t", "a", "v", "ta", "tv", "av")
MASK_DIR = "robustness_masks"
REPORT_FILES = {"json": "robustness.json", "markdown": "robustness.md", "plot": "robustness.png"}


@dataclass(frozen=True)
class Condition:
    """One missing-modality condition: an overall rate or a dropped modality set.

    Attributes:
        kind: ``"rate"`` or ``"drop"``.
        value: The rate (float) or the dropped modalities (e.g. ``"av"``).
    """

    kind: str
    value: float | str

    @property
    def name(self) -> str:
        return f"rate={float(self.value):.2f}" if self.kind == "rate" else f"drop={self.value}"

    @property
    def slug(self) -> str:
        """File-name form: ``rate0.30`` / ``drop-av``."""
        return f"rate{float(self.value):.2f}" if self.kind == "rate" else f"drop-{self.value}"


def make_conditions(
    modalities: Sequence[str], rates: Iterable[float] = DEFAULT_RATES, drops: Iterable[str] = DEFAULT_DROPS
) -> tuple[list[Condition], list[str]]:
    """The conditions that make sense for ``modalities``, and the ones skipped (with why).

    A rate above the modalities' bound (e.g. 0.6 with two modalities) and a drop of an
    absent modality, or of every modality, are skipped rather than failing the sweep.

    >>> conds, skipped = make_conditions("ta", [0.0, 0.5, 0.7], ["a", "ta", "v"])
    >>> [c.name for c in conds], len(skipped)
    (['rate=0.00', 'rate=0.50', 'drop=a'], 3)
    """
    mods = parse_modalities(modalities)
    out: list[Condition] = []
    skipped: list[str] = []
    for rate in rates:
        try:
            check_rate(rate, len(mods))
        except DataError as exc:
            skipped.append(f"rate={rate}: {exc}")
            continue
        out.append(Condition("rate", float(rate)))
    for drop in drops:
        dropped = parse_modalities(drop)
        if any(m not in mods for m in dropped) or set(dropped) == set(mods):
            skipped.append(f"drop={drop}: needs a modality outside {''.join(dropped)} among {''.join(mods)}")
            continue
        out.append(Condition("drop", "".join(dropped)))
    return out, skipped


def mask_condition(
    dataset: MercDataset, condition: Condition, seed: int, protocol: str, mask_dir: str | Path | None = None
) -> MercDataset:
    """``dataset`` under ``condition``, reading/writing the masks in ``mask_dir`` if given.

    The file ``<mask_dir>/<protocol>/<modalities>/<slug>_seed<seed>.npz`` is created on
    first use and applied (:func:`merc.data.missing.load_masks`) on every later call;
    masks of ``tav`` and ``ta`` differ (a rate is spread over the attached modalities).
    """
    path = None
    if mask_dir is not None:
        path = Path(mask_dir) / protocol / "".join(dataset.modalities) / f"{condition.slug}_seed{seed}.npz"
    if path is not None and path.is_file():
        return load_masks(dataset, path)
    if condition.kind == "rate":
        masked = apply_missing(dataset, float(condition.value), seed=seed, protocol=protocol)
    else:
        masked = drop_modalities(dataset, str(condition.value), protocol=protocol)
    if path is not None:
        save_masks(masked, path, meta={"condition": condition.name, "seed": seed, "protocol": protocol})
    return masked


def condition_entry(condition: Condition, runs: list[dict[str, Any]], modalities: Sequence[str]) -> dict[str, Any]:
    """One condition of a report: its ``runs`` rows and their ``metrics`` aggregated over seeds.

    Each row of ``runs`` holds ``train_seed``, ``mask_seed``, ``realized_rate`` and the
    headline metrics; a rate also gets its ``effective_rate`` for ``modalities``.
    """
    entry: dict[str, Any] = {"name": condition.name, "kind": condition.kind, "value": condition.value}
    if condition.kind == "rate":
        entry["effective_rate"] = check_rate(float(condition.value), len(modalities))
    entry["metrics"] = aggregate_seeds(runs)
    entry["runs"] = runs
    return entry


def mask_seeds_for(condition: Condition, mask_seeds: Sequence[int]) -> list[int]:
    """The mask seeds to evaluate ``condition`` with: rate 0 masks nothing, so one stands for all.

    >>> mask_seeds_for(Condition("rate", 0.0), [0, 1, 2]), mask_seeds_for(Condition("drop", "a"), [0, 1])
    ([0], [0, 1])
    """
    return [mask_seeds[0]] if condition.kind == "rate" and float(condition.value) == 0.0 else list(mask_seeds)


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The :data:`~merc.evaluation.metrics.HEADLINE_METRICS` of ``metrics``, as floats."""
    return {k: float(metrics[k]) for k in HEADLINE_METRICS if k in metrics}


def model_report(
    protocol: str,
    model: str,
    source: str,
    dataset: str,
    modalities: Sequence[str],
    imputation: str,
    train_seeds: Sequence[int],
    mask_seeds: Sequence[int],
    skipped: Sequence[str],
    conditions: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """One model's report, as :func:`write_robustness_report` and ``robustness.json`` hold it."""
    return {
        "protocol": protocol,
        "model": model,
        "source": source,
        "dataset": dataset,
        "modalities": "".join(modalities),
        "imputation": imputation,
        "train_seeds": list(train_seeds),
        "mask_seeds": list(mask_seeds),
        "skipped": list(skipped),
        "conditions": list(conditions),
    }


# -- report ------------------------------------------------------------------------------------
def _labels(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    """Curve labels: ``label`` or the model name (+ its imputation); repeats get their source folder."""
    names = [
        str(
            r.get("label")
            or (r["model"] if r.get("imputation", "none") == "none" else f"{r['model']} + {r['imputation']} imputation")
        )
        for r in reports
    ]
    return [
        n if names.count(n) == 1 else f"{n} ({Path(str(r['source'])).name}, {r['protocol']})"
        for n, r in zip(names, reports)
    ]


def _cell(entry: Mapping[str, Any] | None, metric: str) -> str:
    if entry is None or metric not in entry["metrics"]:
        return "–"
    m = entry["metrics"][metric]
    return f"{m['mean']:.2f} ± {m['std']:.2f}"


def robustness_markdown(reports: Sequence[Mapping[str, Any]], metric: str = "weighted_f1") -> str:
    """Table 3-style markdown: one row per model, one column per condition (mean ± std)."""
    title = METRIC_TITLES.get(metric, metric)
    labels = _labels(reports)
    lines = [f"# Robustness to missing modalities: {title} (%)", ""]
    for r, label in zip(reports, labels):
        lines.append(
            f"- **{label}**: {r['protocol']} protocol, {r['dataset']} [{r['modalities']}], "
            f"imputation {r['imputation']}, training seeds {r['train_seeds']}, mask seeds {r['mask_seeds']}"
        )
    lines.append("")
    for kind, heading in (("rate", "Overall missing rate"), ("drop", "Modality removed from every utterance")):
        values: dict[str, Any] = {}
        for r in reports:
            values.update({c["name"]: c["value"] for c in r["conditions"] if c["kind"] == kind})
        # Rates in increasing order; drops in the order asked for.
        keys = sorted(values, key=lambda k: float(values[k])) if kind == "rate" else list(values)
        if not keys:
            continue
        cols = [k.split("=", 1)[1] for k in keys]
        extra = ["average"] if kind == "rate" else []
        lines += [
            f"## {heading}",
            "",
            "| model | " + " | ".join(cols + extra) + " |",
            "|---|" + "---:|" * (len(cols) + len(extra)),
        ]
        for r, label in zip(reports, labels):
            by_name = {c["name"]: c for c in r["conditions"]}
            cells = [_cell(by_name.get(k), metric) for k in keys]
            if kind == "rate":
                means = [by_name[k]["metrics"][metric]["mean"] for k in keys if k in by_name]
                cells.append(f"{np.mean(means):.2f}" if means else "–")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    skipped = sorted({s for r in reports for s in r.get("skipped", [])})
    if skipped:
        lines += ["Skipped conditions:", ""] + [f"- {s}" for s in skipped] + [""]
    lines.append(
        "mean ± std over training seeds x mask seeds; rate 0.70 with three modalities keeps one "
        "modality per utterance (effective 2/3, GCNet's convention)."
    )
    return "\n".join(lines) + "\n"


def plot_robustness(reports: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "weighted_f1") -> Path:
    """Metric vs missing rate per model (error bars: std over seeds); drops as grouped bars."""
    # The object-oriented API with an Agg canvas: no pyplot state, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = _labels(reports)
    drop_names: list[str] = []
    for r in reports:
        drop_names += [c["name"] for c in r["conditions"] if c["kind"] == "drop" and c["name"] not in drop_names]
    fig = Figure(figsize=(11 if drop_names else 6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if drop_names else 1, 1)
    title = METRIC_TITLES.get(metric, metric)
    for r, label in zip(reports, labels):
        pts = sorted(
            (
                (float(c["value"]), c["metrics"][metric])
                for c in r["conditions"]
                if c["kind"] == "rate" and metric in c["metrics"]
            ),
            key=lambda p: p[0],
        )
        if pts:
            ax.errorbar(
                [p[0] for p in pts],
                [p[1]["mean"] for p in pts],
                yerr=[p[1]["std"] for p in pts],
                marker="o",
                capsize=3,
                label=label,
            )
    ax.set_xlabel("missing rate")
    ax.set_ylabel(f"{title} (%)")
    ax.set_title("metric vs missing rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if drop_names:
        bx = fig.add_subplot(1, 2, 2)
        width = 0.8 / max(len(reports), 1)
        x = np.arange(len(drop_names))
        for k, (r, label) in enumerate(zip(reports, labels)):
            by_name = {c["name"]: c for c in r["conditions"]}
            means = [by_name[n]["metrics"][metric]["mean"] if n in by_name else np.nan for n in drop_names]
            stds = [by_name[n]["metrics"][metric]["std"] if n in by_name else 0.0 for n in drop_names]
            bx.bar(x + (k - (len(reports) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=label)
        bx.set_xticks(x, [f"-{n.split('=', 1)[1]}" for n in drop_names])
        bx.set_xlabel("modalities removed everywhere")
        bx.set_title("per-modality drops")
        bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def write_robustness_report(
    reports: Sequence[Mapping[str, Any]], out_dir: str | Path, metric: str = "weighted_f1"
) -> dict[str, Path]:
    """Write ``robustness.json``, ``robustness.md`` and ``robustness.png`` into ``out_dir``.

    Each report (one per model) holds ``protocol``, ``model``, ``source``, ``dataset``,
    ``modalities``, ``imputation``, ``train_seeds``, ``mask_seeds``, ``skipped`` and
    ``conditions``: per condition ``name``, ``kind``, ``value`` (+ ``effective_rate``),
    ``metrics`` (``{metric: {mean, std, per_seed}}`` over training x mask seeds) and
    ``runs`` (one row per training seed and mask seed, with the realised test missing rate).
    """
    if metric not in HEADLINE_METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(HEADLINE_METRICS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in REPORT_FILES.items()}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"metric": metric, "reports": list(reports)}, indent=2), encoding="utf-8")
    os.replace(tmp, paths["json"])
    paths["markdown"].write_text(robustness_markdown(reports, metric), encoding="utf-8")
    plot_robustness(reports, paths["plot"], metric)
    return paths


def load_robustness_reports(path: str | Path) -> list[dict[str, Any]]:
    """The reports of a ``robustness.json`` (a file, or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILES["json"]
    try:
        reports = json.loads(path.read_text(encoding="utf-8"))["reports"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a robustness.json written by `merc robustness` ({exc})") from None
    return list(reports)


def merge_robustness_reports(
    paths: Sequence[str | Path], out_dir: str | Path, metric: str = "weighted_f1"
) -> dict[str, Path]:
    """Combine the reports of earlier sweeps (``robustness.json`` files or their folders) in ``out_dir``."""
    reports: list[dict[str, Any]] = []
    for path in paths:
        reports.extend(load_robustness_reports(path))
    return write_robustness_report(reports, out_dir, metric)


__all__ = [
    "DEFAULT_DROPS",
    "DEFAULT_RATES",
    "MASK_DIR",
    "REPORT_FILES",
    "Condition",
    "condition_entry",
    "headline_metrics",
    "load_robustness_reports",
    "make_conditions",
    "mask_condition",
    "mask_seeds_for",
    "merge_robustness_reports",
    "model_report",
    "plot_robustness",
    "robustness_markdown",
    "write_robustness_report",
]

"""Robustness to missing modalities: the metric as a function of the missing rate.

Two protocols, both over the same conditions -- overall missing rates (Mi-CGA Table 3
grid 0.0 .. 0.7, :func:`merc.data.missing.apply_missing`) and per-modality drops (a
modality or a pair removed from every utterance, :func:`merc.data.missing.drop_modalities`):

- **train-complete** (:func:`robustness_from_run`): a finished ``merc train`` run folder;
  every seed's selected weights are reused and the *test* split is masked (train and
  valid stay complete), for several mask seeds.
- **retrain** (:func:`robustness_by_retraining`, the papers' protocol): for every
  condition and mask seed, every split is masked at the same rate and the model is
  trained from scratch with :func:`merc.training.runner.run_experiment`.

Masks depend only on (mask seed, condition, dialogue id), and every mask used is written
to ``<out>/robustness_masks/`` and read back on later calls, so models evaluated into the
same folder see identical masks. :func:`write_robustness_report` writes
``robustness.json``, ``robustness.md`` (Table 3-style: mean ± std per condition and the
average over rates) and ``robustness.png`` (metric vs missing rate, one curve per model,
error bars = std over training seeds x mask seeds; per-modality drops as grouped bars).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from merc.config import load_yaml
from merc.config import recipe_path as find_recipe
from merc.data.missing import (
    IMPUTATION_METHODS,
    apply_missing,
    check_rate,
    drop_modalities,
    impute,
    load_masks,
    realized_missing_rate,
    save_masks,
)
from merc.data.schema import MercDataset, parse_modalities
from merc.errors import ConfigError, DataError, resolve_choice
from merc.evaluation.aggregate import aggregate_seeds
from merc.evaluation.metrics import HEADLINE_METRICS
from merc.evaluation.report import METRIC_TITLES

# torch, the trainer and the models are imported inside the functions that use them: the
# CLI builds this command's parser (add_robustness_arguments) for every `merc` call.
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


def _condition_entry(condition: Condition, runs: list[dict[str, Any]], modalities: Sequence[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": condition.name, "kind": condition.kind, "value": condition.value}
    if condition.kind == "rate":
        entry["effective_rate"] = check_rate(float(condition.value), len(modalities))
    entry["metrics"] = aggregate_seeds(runs)
    entry["runs"] = runs
    return entry


def _mask_seeds_for(condition: Condition, mask_seeds: Sequence[int]) -> list[int]:
    # Rate 0 masks nothing: one evaluation stands for every mask seed.
    return [mask_seeds[0]] if condition.kind == "rate" and float(condition.value) == 0.0 else list(mask_seeds)


def _headline(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in HEADLINE_METRICS if k in metrics}


# -- train-complete protocol -----------------------------------------------------------------
def robustness_from_run(
    run_dir: str | Path,
    rates: Iterable[float] = DEFAULT_RATES,
    drops: Iterable[str] = DEFAULT_DROPS,
    mask_seeds: Sequence[int] = (0, 1, 2),
    imputation: str = "none",
    mask_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str = "cpu",
    dataset: MercDataset | None = None,
) -> dict[str, Any]:
    """Evaluate a finished run's selected weights on a masked test split.

    Args:
        run_dir: A ``merc train`` run folder (``config.yaml``, ``seed_*/best.pt``).
        rates: Overall missing rates of the test split.
        drops: Modalities (or pairs) to remove from every test utterance.
        mask_seeds: Mask seeds per condition (results aggregate training x mask seeds).
        imputation: ``"none"`` (missing entries = training mean after z-scoring, merc's
            default), ``"zero"`` (raw zero), ``"mean"`` (raw training mean) or
            ``"neighbour"`` filling of the missing test features, in the raw feature space
            before the run's standardisation (:func:`merc.data.missing.impute`).
        mask_dir: Mask cache (default ``<run_dir>/robustness_masks``).
        data_root: Folder with the real corpora.
        device: Evaluation device.
        dataset: The dataset the run was trained on, when it is not a registered name
            (e.g. generated in a test); default: the run's ``data.dataset``.

    Returns:
        The model's report (see :func:`write_robustness_report`).
    """
    from merc.data.batching import to_tensors
    from merc.data.transforms import feature_statistics, standardize_features
    from merc.training.runner import prepare_dataset, selected_trainers, standardizes

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} is not a merc run folder (no config.yaml); pass the --out of `merc train`")
    imputation = resolve_choice("imputation method", imputation, list(IMPUTATION_METHODS))
    recipe = load_yaml(run / "config.yaml")
    info = recipe.get("data", {})
    mods = parse_modalities(info["modalities"])
    # Masks and imputation act on the raw features; the run's own transform (z-scoring
    # with the complete training split's statistics) is applied afterwards.
    raw_recipe = {**recipe, "data": {**info, "standardize": False}}
    raw = prepare_dataset(dataset if dataset is not None else info["dataset"], mods, raw_recipe, data_root, False)
    statistics = {m: feature_statistics(raw, m) for m in mods} if standardizes(recipe) else None
    test_view = dataclasses.replace(raw, splits={"test": list(raw.splits["test"])})
    conditions, skipped = make_conditions(mods, rates, drops)
    mask_dir = Path(mask_dir) if mask_dir is not None else run / MASK_DIR

    trainers = selected_trainers(run, recipe, raw, device)

    entries = []
    for cond in conditions:
        runs = []
        for mask_seed in _mask_seeds_for(cond, mask_seeds):
            masked = mask_condition(test_view, cond, mask_seed, "test-only", mask_dir)
            masked = impute(masked, imputation, reference=raw)
            realized = realized_missing_rate(masked, "test")
            if statistics is not None:
                masked = standardize_features(masked, statistics=statistics)
            items = to_tensors(masked)["test"]
            for seed, trainer in trainers.items():
                runs.append({"train_seed": seed, "mask_seed": mask_seed, "realized_rate": realized,
                             **_headline(trainer.evaluate(items))})
        entries.append(_condition_entry(cond, runs, mods))
    return {
        "protocol": "train-complete", "model": info["model_name"], "source": str(run), "dataset": raw.name,
        "modalities": "".join(mods), "imputation": imputation, "train_seeds": list(info["seeds"]),
        "mask_seeds": list(mask_seeds), "skipped": skipped, "conditions": entries,
    }


# -- retrain protocol ----------------------------------------------------------------------------
def robustness_by_retraining(
    model: str,
    dataset: str | MercDataset,
    modalities: str,
    out_dir: str | Path,
    rates: Iterable[float] = DEFAULT_RATES,
    drops: Iterable[str] = (),
    seeds: Sequence[int] = (0,),
    mask_seeds: Sequence[int] = (0,),
    imputation: str = "none",
    overrides: Sequence[str] = (),
    recipe_path: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train ``model`` from scratch on every split masked per condition (the papers' protocol).

    Each (condition, mask seed) is one :func:`run_experiment` over ``seeds`` in
    ``<out_dir>/<model>/<condition>/mask_<seed>`` (resumable: finished seeds are reused).
    Missing raw features are imputed (:func:`merc.data.missing.impute`; ``"none"``
    leaves them to the runner's standardisation, which sets them to the training mean)
    before the runner z-scores the dataset as for any training run.

    Returns:
        The model's report (see :func:`write_robustness_report`).
    """
    from merc.data.registry import load_dataset
    from merc.training.runner import resolve_recipe, run_experiment

    mods = parse_modalities(modalities)
    imputation = resolve_choice("imputation method", imputation, list(IMPUTATION_METHODS))
    out = Path(out_dir)
    name = dataset if isinstance(dataset, str) else dataset.name
    resolve_recipe(model, name, overrides, recipe_path)  # fail before any training on a bad recipe
    raw = (load_dataset(dataset, modalities=mods, data_root=data_root, show_progress=show_progress)
           if isinstance(dataset, str) else dataset.with_modalities(mods))
    conditions, skipped = make_conditions(mods, rates, drops)
    entries = []
    for cond in conditions:
        runs = []
        for mask_seed in _mask_seeds_for(cond, mask_seeds):
            masked = impute(mask_condition(raw, cond, mask_seed, "same-rate", out / MASK_DIR), imputation)
            result = run_experiment(
                model, masked, "".join(mods), list(seeds), out / model / cond.slug / f"mask_{mask_seed}",
                overrides=list(overrides), recipe_path=recipe_path, device=device, show_progress=show_progress,
            )
            realized = realized_missing_rate(masked, "test")
            for i, seed in enumerate(result["seeds"]):
                metrics = {k: result["test"][k]["per_seed"][i] for k in HEADLINE_METRICS if k in result["test"]}
                runs.append({"train_seed": seed, "mask_seed": mask_seed, "realized_rate": realized, **metrics})
        entries.append(_condition_entry(cond, runs, mods))
    return {
        "protocol": "retrain", "model": model, "source": str(recipe_path or find_recipe(model, name) or "built-in defaults"),
        "dataset": name,
        "modalities": "".join(mods), "imputation": imputation, "train_seeds": list(seeds),
        "mask_seeds": list(mask_seeds), "skipped": skipped, "conditions": entries,
    }


# -- report ------------------------------------------------------------------------------------
def _labels(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    """Curve labels: ``label`` or the model name (+ its imputation); repeats get their source folder."""
    names = [str(r.get("label") or (r["model"] if r.get("imputation", "none") == "none"
                                    else f"{r['model']} + {r['imputation']} imputation")) for r in reports]
    return [n if names.count(n) == 1 else f"{n} ({Path(str(r['source'])).name}, {r['protocol']})"
            for n, r in zip(names, reports)]


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
        lines.append(f"- **{label}**: {r['protocol']} protocol, {r['dataset']} [{r['modalities']}], "
                     f"imputation {r['imputation']}, training seeds {r['train_seeds']}, mask seeds {r['mask_seeds']}")
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
        lines += [f"## {heading}", "", "| model | " + " | ".join(cols + extra) + " |",
                  "|---|" + "---:|" * (len(cols) + len(extra))]
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
    lines.append("mean ± std over training seeds x mask seeds; rate 0.70 with three modalities keeps one "
                 "modality per utterance (effective 2/3, GCNet's convention).")
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
        pts = sorted(((float(c["value"]), c["metrics"][metric]) for c in r["conditions"]
                      if c["kind"] == "rate" and metric in c["metrics"]), key=lambda p: p[0])
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["std"] for p in pts],
                        marker="o", capsize=3, label=label)
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


# -- command line --------------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _drops(text: str) -> list[str]:
    return [] if text.strip().lower() in ("", "none") else [x.strip() for x in text.split(",") if x.strip()]


def add_robustness_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``merc robustness`` (for :func:`robustness_main`)."""
    parser.add_argument("runs", nargs="*", help="finished `merc train` run folders: reuse their weights and mask "
                        "the test split (train-complete protocol)")
    parser.add_argument("--model", default=None, help="comma-separated models to retrain on every split masked per "
                        "condition (the papers' protocol); needs --dataset and --out")
    parser.add_argument("--dataset", default=None, help="dataset for --model")
    parser.add_argument("--modalities", default="tav", help="modalities for --model, e.g. tav")
    parser.add_argument("--seeds", type=_ints, default=[0], help="training seeds for --model, e.g. 0,1,2")
    parser.add_argument("--mask-seeds", type=_ints, default=None,
                        help="mask seeds per condition (default 0,1,2 for runs, 0 for --model)")
    parser.add_argument("--rates", type=_floats, default=list(DEFAULT_RATES), help="missing rates, e.g. 0,0.1,0.3")
    parser.add_argument("--drops", type=_drops, default=None,
                        help="modalities to remove everywhere, e.g. a,v,av; 'none' for no drops "
                             "(default t,a,v,ta,tv,av for runs, none for --model)")
    parser.add_argument("--imputation", default="none", choices=list(IMPUTATION_METHODS),
                        help="filling of missing raw features before z-scoring: none (merc default: the "
                             "training mean after z-scoring), zero (ZeroImp), mean (MeanImp), neighbour")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="combine the reports of earlier sweeps (robustness.json files or their folders) "
                             "into one table and plot in --out")
    parser.add_argument("--metric", default="weighted_f1", choices=list(HEADLINE_METRICS))
    parser.add_argument("--out", default=None, help="report folder (default: the first run folder)")
    parser.add_argument("--config", default=None, help="recipe YAML for --model")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for --model, repeatable, e.g. -o training.epochs=50")
    parser.add_argument("--device", default=None, help="cpu (default), cuda ...")
    parser.add_argument("--data-root", default=None, help="folder holding the real corpora")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def robustness_main(args: argparse.Namespace) -> int:
    """``merc robustness``: sweep missing rates / drops and write json, markdown and plot.

    Either run folders (train-complete protocol) or ``--model`` (retrain protocol).
    Raises :class:`merc.errors.MercError` subclasses for bad input (the CLI prints them).
    """
    runs = list(getattr(args, "runs", []) or [])
    merge = list(getattr(args, "merge", None) or [])
    if sum(map(bool, (runs, args.model, merge))) != 1:
        raise ConfigError("give one of: run folders (reuse trained weights), --model (retrain per condition) "
                          "or --merge robustness.json files")
    reports: list[dict[str, Any]] = []
    if merge:
        if not args.out:
            raise ConfigError("--merge needs --out (the folder for the combined table and plot)")
        out = Path(args.out)
        for path in merge:
            reports.extend(load_robustness_reports(path))
    elif runs:
        mask_seeds = args.mask_seeds or [0, 1, 2]
        drops = DEFAULT_DROPS if args.drops is None else args.drops
        out = Path(args.out) if args.out else Path(runs[0])
        for run in runs:
            reports.append(robustness_from_run(run, args.rates, drops, mask_seeds, args.imputation,
                                               mask_dir=out / MASK_DIR, data_root=args.data_root,
                                               device=args.device or "cpu"))
    else:
        if not args.dataset or not args.out:
            raise ConfigError("--model needs --dataset and --out (the folder for the retrained runs)")
        out = Path(args.out)
        for model in [m.strip() for m in args.model.split(",") if m.strip()]:
            reports.append(robustness_by_retraining(
                model, args.dataset, args.modalities, out, args.rates, args.drops or [], args.seeds,
                args.mask_seeds or [0], args.imputation, args.override, args.config, args.data_root,
                args.device, show_progress=not args.quiet,
            ))
    paths = write_robustness_report(reports, out, args.metric)
    print(paths["markdown"].read_text(encoding="utf-8"))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


__all__ = [
    "DEFAULT_DROPS", "DEFAULT_RATES", "Condition", "add_robustness_arguments", "make_conditions",
    "load_robustness_reports", "mask_condition", "plot_robustness", "robustness_by_retraining", "robustness_from_run", "robustness_main",
    "robustness_markdown", "write_robustness_report",
]

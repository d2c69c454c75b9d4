"""``merc robustness``: missing-modality sweeps that load trained weights or retrain.

Two protocols, over the conditions of :mod:`merc.evaluation.robustness` (overall missing
rates and per-modality drops):

- **train-complete** (:func:`robustness_from_run`): a finished ``merc train`` run folder;
  every seed's selected weights are reused and the *test* split is masked (train and
  valid stay complete), for several mask seeds.
- **retrain** (:func:`robustness_by_retraining`, the papers' protocol): for every
  condition and mask seed, every split is masked at the same rate and the model is
  trained from scratch with :func:`merc.training.runner.run_experiment`.

Both return one model's report for :func:`merc.evaluation.robustness.write_robustness_report`;
:func:`robustness_main` is the command (``--merge`` only combines earlier reports).

This module is an experiment driver beside the runner: it depends on training and
evaluation, never the other way round. torch, the runner and the models are imported
inside the functions that use them, because the CLI builds this command's parser
(:func:`add_robustness_arguments`) for every ``merc`` call.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from merc.config import load_yaml
from merc.config import recipe_path as find_recipe
from merc.data.missing import IMPUTATION_METHODS, impute, realized_missing_rate
from merc.data.schema import MercDataset, parse_modalities
from merc.errors import ConfigError, resolve_choice
from merc.evaluation.metrics import HEADLINE_METRICS
from merc.evaluation.robustness import (
    DEFAULT_DROPS,
    DEFAULT_RATES,
    MASK_DIR,
    condition_entry,
    headline_metrics,
    make_conditions,
    mask_condition,
    mask_seeds_for,
    merge_robustness_reports,
    model_report,
    write_robustness_report,
)


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
        The model's report (see :func:`merc.evaluation.robustness.write_robustness_report`).
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
        for mask_seed in mask_seeds_for(cond, mask_seeds):
            masked = mask_condition(test_view, cond, mask_seed, "test-only", mask_dir)
            masked = impute(masked, imputation, reference=raw)
            realized = realized_missing_rate(masked, "test")
            if statistics is not None:
                masked = standardize_features(masked, statistics=statistics)
            items = to_tensors(masked)["test"]
            for seed, trainer in trainers.items():
                runs.append(
                    {
                        "train_seed": seed,
                        "mask_seed": mask_seed,
                        "realized_rate": realized,
                        **headline_metrics(trainer.evaluate(items)),
                    }
                )
        entries.append(condition_entry(cond, runs, mods))
    return model_report(
        "train-complete",
        info["model_name"],
        str(run),
        raw.name,
        mods,
        imputation,
        info["seeds"],
        mask_seeds,
        skipped,
        entries,
    )


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

    Each (condition, mask seed) is one :func:`~merc.training.runner.run_experiment` over
    ``seeds`` in ``<out_dir>/<model>/<condition>/mask_<seed>`` (resumable: finished seeds
    are reused). Missing raw features are imputed (:func:`merc.data.missing.impute`;
    ``"none"`` leaves them to the runner's standardisation, which sets them to the
    training mean) before the runner z-scores the dataset as for any training run.

    Returns:
        The model's report (see :func:`merc.evaluation.robustness.write_robustness_report`).
    """
    from merc.data.registry import load_dataset
    from merc.training.runner import resolve_recipe, run_experiment

    mods = parse_modalities(modalities)
    imputation = resolve_choice("imputation method", imputation, list(IMPUTATION_METHODS))
    out = Path(out_dir)
    name = dataset if isinstance(dataset, str) else dataset.name
    resolve_recipe(model, name, overrides, recipe_path)  # fail before any training on a bad recipe
    raw = (
        load_dataset(dataset, modalities=mods, data_root=data_root, show_progress=show_progress)
        if isinstance(dataset, str)
        else dataset.with_modalities(mods)
    )
    conditions, skipped = make_conditions(mods, rates, drops)
    entries = []
    for cond in conditions:
        runs = []
        for mask_seed in mask_seeds_for(cond, mask_seeds):
            masked = impute(mask_condition(raw, cond, mask_seed, "same-rate", out / MASK_DIR), imputation)
            result = run_experiment(
                model,
                masked,
                "".join(mods),
                list(seeds),
                out / model / cond.slug / f"mask_{mask_seed}",
                overrides=list(overrides),
                recipe_path=recipe_path,
                device=device,
                show_progress=show_progress,
            )
            realized = realized_missing_rate(masked, "test")
            for i, seed in enumerate(result["seeds"]):
                metrics = {k: result["test"][k]["per_seed"][i] for k in HEADLINE_METRICS if k in result["test"]}
                runs.append({"train_seed": seed, "mask_seed": mask_seed, "realized_rate": realized, **metrics})
        entries.append(condition_entry(cond, runs, mods))
    source = str(recipe_path or find_recipe(model, name) or "built-in defaults")
    return model_report("retrain", model, source, name, mods, imputation, seeds, mask_seeds, skipped, entries)


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
    parser.add_argument(
        "runs",
        nargs="*",
        help="finished `merc train` run folders: reuse their weights and mask the test split (train-complete protocol)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="comma-separated models to retrain on every split masked per "
        "condition (the papers' protocol); needs --dataset and --out",
    )
    parser.add_argument("--dataset", default=None, help="dataset for --model")
    parser.add_argument("--modalities", default="tav", help="modalities for --model, e.g. tav")
    parser.add_argument("--seeds", type=_ints, default=[0], help="training seeds for --model, e.g. 0,1,2")
    parser.add_argument(
        "--mask-seeds",
        type=_ints,
        default=None,
        help="mask seeds per condition (default 0,1,2 for runs, 0 for --model)",
    )
    parser.add_argument("--rates", type=_floats, default=list(DEFAULT_RATES), help="missing rates, e.g. 0,0.1,0.3")
    parser.add_argument(
        "--drops",
        type=_drops,
        default=None,
        help="modalities to remove everywhere, e.g. a,v,av; 'none' for no drops "
        "(default t,a,v,ta,tv,av for runs, none for --model)",
    )
    parser.add_argument(
        "--imputation",
        default="none",
        choices=list(IMPUTATION_METHODS),
        help="filling of missing raw features before z-scoring: none (merc default: the "
        "training mean after z-scoring), zero (ZeroImp), mean (MeanImp), neighbour",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="combine the reports of earlier sweeps (robustness.json files or their folders) "
        "into one table and plot in --out",
    )
    parser.add_argument("--metric", default="weighted_f1", choices=list(HEADLINE_METRICS))
    parser.add_argument("--out", default=None, help="report folder (default: the first run folder)")
    parser.add_argument("--config", default=None, help="recipe YAML for --model")
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override for --model, repeatable, e.g. -o training.epochs=50",
    )
    parser.add_argument("--device", default=None, help="cpu (default), cuda ...")
    parser.add_argument("--data-root", default=None, help="folder holding the real corpora")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def robustness_main(args: argparse.Namespace) -> int:
    """``merc robustness``: sweep missing rates / drops and write json, markdown and plot.

    Either run folders (train-complete protocol), ``--model`` (retrain protocol) or
    ``--merge`` of earlier reports (reporting only, no model is loaded).
    Raises :class:`merc.errors.MercError` subclasses for bad input (the CLI prints them).
    """
    runs = list(getattr(args, "runs", []) or [])
    merge = list(getattr(args, "merge", None) or [])
    if sum(map(bool, (runs, args.model, merge))) != 1:
        raise ConfigError(
            "give one of: run folders (reuse trained weights), --model (retrain per condition) "
            "or --merge robustness.json files"
        )
    if merge:
        if not args.out:
            raise ConfigError("--merge needs --out (the folder for the combined table and plot)")
        paths = merge_robustness_reports(merge, args.out, args.metric)
    else:
        reports: list[dict[str, Any]] = []
        if runs:
            mask_seeds = args.mask_seeds or [0, 1, 2]
            drops = DEFAULT_DROPS if args.drops is None else args.drops
            out = Path(args.out) if args.out else Path(runs[0])
            for run in runs:
                reports.append(
                    robustness_from_run(
                        run,
                        args.rates,
                        drops,
                        mask_seeds,
                        args.imputation,
                        mask_dir=out / MASK_DIR,
                        data_root=args.data_root,
                        device=args.device or "cpu",
                    )
                )
        else:
            if not args.dataset or not args.out:
                raise ConfigError("--model needs --dataset and --out (the folder for the retrained runs)")
            out = Path(args.out)
            for model in [m.strip() for m in args.model.split(",") if m.strip()]:
                reports.append(
                    robustness_by_retraining(
                        model,
                        args.dataset,
                        args.modalities,
                        out,
                        args.rates,
                        args.drops or [],
                        args.seeds,
                        args.mask_seeds or [0],
                        args.imputation,
                        args.override,
                        args.config,
                        args.data_root,
                        args.device,
                        show_progress=not args.quiet,
                    )
                )
        paths = write_robustness_report(reports, out, args.metric)
    print(paths["markdown"].read_text(encoding="utf-8"))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


__all__ = ["add_robustness_arguments", "robustness_by_retraining", "robustness_from_run", "robustness_main"]

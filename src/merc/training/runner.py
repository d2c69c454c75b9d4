"""Multi-seed experiments: recipe -> dataset -> model -> Trainer -> results.json.

``run_experiment`` is what ``merc train`` calls. The run folder holds the resolved recipe
(``config.yaml``), one folder per seed (checkpoint, selected weights, history, metrics)
and ``results.json`` with test and validation mean ± std over seeds. Finished seeds are
skipped and unfinished ones resume from their checkpoint, so a killed run is continued
by repeating the command.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from merc.config import apply_overrides, load_recipe, load_yaml, save_yaml
from merc.data.batching import ConversationTensors, to_tensors
from merc.data.registry import dataset_recipe_defaults, load_dataset
from merc.data.schema import MercDataset, class_weights, parse_modalities
from merc.data.transforms import standardize_features
from merc.errors import ConfigError
from merc.evaluation.aggregate import aggregate_seeds
from merc.models.base import MercModel
from merc.models.registry import build_model, check_model_arguments
from merc.training.plugins.registry import build_plugins, fill_dataset_defaults
from merc.training.trainer import BEST_WEIGHTS, TrainConfig, Trainer, seed_everything

log = logging.getLogger(__name__)


def _write_json(data: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def model_for(dataset: MercDataset, model_name: str, model_args: dict[str, Any]) -> MercModel:
    """Build ``model_name`` for ``dataset``'s facts (dims, classes, speakers)."""
    return build_model(
        model_name,
        in_dims=dataset.dims,
        num_classes=dataset.num_classes,
        num_speakers=dataset.num_speakers,
        num_parties=dataset.max_parties,
        **model_args,
    )


def prepare_dataset(
    dataset: str | MercDataset,
    modalities: Sequence[str],
    recipe: dict[str, Any],
    data_root: str | Path | None = None,
    show_progress: bool = True,
) -> MercDataset:
    """Load (or narrow) the dataset and apply the recipe's data transforms.

    ``data.standardize`` (default true): z-score each modality with training-split
    statistics (see :mod:`merc.data.transforms`).
    """
    data = (
        load_dataset(dataset, modalities=modalities, data_root=data_root, show_progress=show_progress)
        if isinstance(dataset, str)
        else dataset.with_modalities(modalities)
    )
    if standardizes(recipe):
        data = standardize_features(data)
    return data


def standardizes(recipe: dict[str, Any]) -> bool:
    """Whether the recipe z-scores features with training statistics (``data.standardize``, default true)."""
    return bool(recipe.get("data", {}).get("standardize", True))


def resolve_recipe(
    model: str, dataset: str, overrides: Sequence[str] = (), recipe_path: str | Path | None = None
) -> dict[str, Any]:
    """The recipe of ``model`` x ``dataset`` with ``overrides``, plug-in sections filled with
    the dataset's defaults (:attr:`merc.data.registry.DatasetSpec.recipe_defaults`), checked
    before any data loads."""
    recipe = apply_overrides(load_recipe(model, dataset, recipe_path), overrides)
    fill_dataset_defaults(recipe, dataset_recipe_defaults(dataset))
    # Fail early on a bad option: types, ranges and choices of both sections.
    TrainConfig.from_dict(recipe.get("training", {}))
    recipe["model"] = check_model_arguments(model, recipe.get("model") or {})
    return recipe


def train_one_seed(
    dataset: MercDataset,
    tensors: dict[str, list[ConversationTensors]],
    model_name: str,
    recipe: dict[str, Any],
    seed: int,
    seed_dir: Path | None,
    device: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train, select on validation, test once; return this seed's metrics."""
    train_cfg = dict(recipe.get("training", {}))
    train_cfg["seed"] = seed
    train_cfg.setdefault("show_progress", show_progress)
    if device is not None:
        train_cfg["device"] = device
    config = TrainConfig.from_dict(train_cfg)
    seed_everything(seed)
    model = model_for(dataset, model_name, dict(recipe.get("model", {})))
    plugins = build_plugins(recipe, dataset)
    trainer = Trainer(
        model,
        tensors,
        dataset.modalities,
        dataset.num_classes,
        config,
        plugins=plugins,
        run_dir=seed_dir,
        label_names=dataset.label_names,
        class_weights=class_weights(dataset),
    )
    fit = trainer.fit()
    trainer.load_best()
    valid = trainer.evaluate(trainer.valid_items)
    test = trainer.test()
    result = {
        "seed": seed,
        **fit,
        "valid": valid,
        "test": test,
        "epoch_seconds": trainer.epoch_seconds,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    if seed_dir is not None:
        _write_json(trainer.history, seed_dir / "history.json")
        _write_json(result, seed_dir / "metrics.json")
    return result


def summarise(per_seed: list[dict[str, Any]], total_seconds: float) -> dict[str, Any]:
    epoch_secs = [s for r in per_seed for s in r.get("epoch_seconds", [])]
    return {
        "test": aggregate_seeds([r["test"] for r in per_seed]),
        "valid": aggregate_seeds([r["valid"] for r in per_seed]),
        "timing": {
            "total_seconds": total_seconds,
            "epoch_seconds_median": statistics.median(epoch_secs) if epoch_secs else None,
        },
        "per_seed": [
            {
                "seed": r["seed"],
                "best_epoch": r["best_epoch"],
                "epochs_run": r["epochs_run"],
                "test_weighted_f1": r["test"]["weighted_f1"],
                "valid_weighted_f1": r["valid"]["weighted_f1"],
            }
            for r in per_seed
        ],
    }


def run_experiment(
    model: str,
    dataset: str | MercDataset,
    modalities: str = "t",
    seeds: Sequence[int] = (0,),
    out_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    overrides: Sequence[str] = (),
    recipe_path: str | Path | None = None,
    device: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` for every seed and aggregate.

    Args:
        model: Registered model name.
        dataset: Registered dataset name, or a loaded :class:`MercDataset`.
        modalities: e.g. ``"tav"``.
        seeds: One run per seed; mean ± std over them.
        out_dir: Run folder (``None``: nothing written).
        data_root: Folder with the real corpora (see ``merc.data.registry``).
        overrides: ``section.key=value`` recipe overrides.
        recipe_path: Explicit recipe instead of ``configs/<model>/<dataset>.yaml``.
        device: Overrides ``training.device``.

    Returns:
        The ``results.json`` content.
    """
    mods = parse_modalities(modalities)
    if not seeds:
        raise ConfigError("no seeds given; e.g. --seeds 0,1,2")
    dataset_name = dataset if isinstance(dataset, str) else dataset.name
    recipe = resolve_recipe(model, dataset_name, overrides, recipe_path)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if (out / "config.yaml").is_file():
            previous = load_yaml(out / "config.yaml")
            if (
                previous.get("model") != recipe.get("model")
                or previous.get("data", {}).get("dataset_arg") != dataset_name
            ):
                raise ConfigError(f"{out} holds a run with another model or dataset; choose another --out")
    data = prepare_dataset(dataset, mods, recipe, data_root, show_progress)
    recipe.setdefault("data", {}).update(
        {
            "dataset": data.name,
            "dataset_arg": dataset_name,
            "modalities": "".join(mods),
            "seeds": list(seeds),
            "model_name": model,
        }
    )
    if out is not None:
        save_yaml(recipe, out / "config.yaml")
    tensors = to_tensors(data)
    start = time.perf_counter()
    per_seed = []
    for seed in seeds:
        seed_dir = out / f"seed_{seed}" if out is not None else None
        if seed_dir is not None and (seed_dir / "metrics.json").is_file():
            per_seed.append(json.loads((seed_dir / "metrics.json").read_text()))
            log.info("seed %d already finished; reusing %s", seed, seed_dir)
            continue
        per_seed.append(train_one_seed(data, tensors, model, recipe, seed, seed_dir, device, show_progress))
    results = {
        "model": model,
        "dataset": data.name,
        "modalities": "".join(mods),
        "seeds": list(seeds),
        **summarise(per_seed, time.perf_counter() - start),
    }
    if out is not None:
        _write_json(results, out / "results.json")
    return results


def selected_trainers(run: Path, recipe: dict[str, Any], data: MercDataset, device: str = "cpu") -> dict[int, Trainer]:
    """An evaluation-only :class:`Trainer` per seed of a finished run, holding the
    weights selected on validation (``best.pt``, loaded with ``weights_only=True``)."""
    info = recipe.get("data", {})
    trainers: dict[int, Trainer] = {}
    for seed in info["seeds"]:
        weights = run / f"seed_{seed}" / BEST_WEIGHTS
        if not weights.is_file():
            raise ConfigError(
                f"{weights} missing: seed {seed} has not finished; rerun `merc train` with the same --out"
            )
        model = model_for(data, info["model_name"], dict(recipe.get("model", {})))
        model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
        empty: dict[str, list[ConversationTensors]] = {"train": [], "valid": [], "test": []}
        trainers[seed] = Trainer(
            model,
            empty,
            data.modalities,
            data.num_classes,
            TrainConfig(device=device, show_progress=False),
            label_names=data.label_names,
        )
    return trainers


def evaluate_run(run_dir: str | Path, data_root: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Re-score a finished run's selected weights on its validation and test splits.

    Rebuilds the dataset and models from ``config.yaml`` and loads each seed's
    ``best.pt`` with ``weights_only=True``. Writes ``evaluation.json``.
    """
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} is not a merc run folder (no config.yaml); pass the --out of `merc train`")
    recipe = load_yaml(run / "config.yaml")
    info = recipe.get("data", {})
    data = prepare_dataset(
        info.get("dataset_arg", info["dataset"]), parse_modalities(info["modalities"]), recipe, data_root, False
    )
    tensors = to_tensors(data)
    per_seed: list[dict[str, Any]] = []
    for seed, trainer in selected_trainers(run, recipe, data, device).items():
        per_seed.append(
            {"seed": seed, "valid": trainer.evaluate(tensors["valid"]), "test": trainer.evaluate(tensors["test"])}
        )
    results = {
        "model": info["model_name"],
        "dataset": data.name,
        "modalities": info["modalities"],
        "seeds": info["seeds"],
        "test": aggregate_seeds([r["test"] for r in per_seed]),
        "valid": aggregate_seeds([r["valid"] for r in per_seed]),
    }
    _write_json(results, run / "evaluation.json")
    return results

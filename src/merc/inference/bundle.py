"""Model bundles: one trained model, self-contained and loadable without unpickling.

``merc bundle RUN_DIR --out model.merc`` writes the weights one seed of a finished run
selected on validation (by default the seed with the best validation score) together
with everything needed to apply them to new conversations:

- ``model``: registered name, resolved constructor arguments and the dataset facts it
  was built for (``in_dims``, ``num_classes``, ``num_speakers``, ``num_parties``);
- ``modalities``, ``label_names``, ``speaker_vocab``;
- ``features``: per modality how its features were made (:mod:`merc.features.spec`),
  e.g. the MiniLM encoder merc computed the text features with;
- ``standardization``: whether inputs are z-scored, ``eps``, and the training split's
  per-modality mean / std as tensors ``statistics.<m>.mean`` / ``statistics.<m>.std``;
- ``training``: where it came from (run folder, seed, dataset and its hash, validation
  and test scores).

Layouts. A **file** (any name not ending in ``/``; ``.merc`` by convention) is a
safetensors file: tensors ``model.<state-dict key>`` and ``statistics.*``, the manifest
as JSON under the header metadata key ``merc_bundle``. A **folder** (``--out DIR/`` or an
existing folder) holds ``bundle.json`` (the manifest) and ``model.safetensors`` (the
same tensors). Both are read with :func:`load_bundle`: JSON and safetensors only, so
loading a bundle never runs code.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

import merc
from merc.data.registry import split_sequence_request
from merc.data.schema import parse_modalities
from merc.errors import CheckpointError, ConfigError, DataError, MercError
from merc.evaluation.metrics import HEADLINE_METRICS
from merc.features.spec import check_spec
from merc.models.base import MercModel
from merc.models.registry import build_model, check_model_arguments

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "merc-bundle"
#: Version of the bundle layout; a bundle of another version is refused.
BUNDLE_VERSION = 1
#: safetensors header metadata key holding the manifest (file layout).
MANIFEST_KEY = "merc_bundle"
#: Folder layout: the manifest and the tensors.
MANIFEST_FILE = "bundle.json"
TENSORS_FILE = "model.safetensors"
_MODEL_PREFIX = "model."
_STATS_PREFIX = "statistics."


@dataclass
class Bundle:
    """A loaded bundle (see the module docstring).

    Attributes:
        manifest: The JSON manifest.
        state_dict: The model's weights.
        statistics: ``{modality: (mean [d], std [d])}``, or ``None`` without standardisation.
        source: Where it was read from (a bundle path or a run folder).
    """

    manifest: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    statistics: dict[str, tuple[np.ndarray, np.ndarray]] | None
    source: str

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.manifest["modalities"])

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def speaker_vocab(self) -> list[str]:
        return list(self.manifest["speaker_vocab"])

    @property
    def feature_specs(self) -> dict[str, dict[str, Any]]:
        return {m: dict(v) for m, v in self.manifest["features"].items()}

    @property
    def eps(self) -> float:
        return float(self.manifest["standardization"]["eps"])

    @property
    def seed(self) -> int | None:
        seed = self.manifest.get("training", {}).get("seed")
        return int(seed) if isinstance(seed, int) else None

    def build(self, device: str = "cpu") -> MercModel:
        """The model with the bundle's weights, in evaluation mode.

        Raises:
            CheckpointError: The weights do not fit the model the manifest describes.
        """
        from merc.training.trainer import check_state_dict

        spec = self.manifest["model"]
        try:
            model = build_model(
                spec["name"],
                in_dims=spec["in_dims"],
                num_classes=spec["num_classes"],
                num_speakers=spec["num_speakers"],
                num_parties=spec["num_parties"],
                **spec["args"],
            )
        except MercError:
            raise
        except (ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{self.source}: the model its manifest describes cannot be built ({exc})") from None
        try:
            check_state_dict(model, self.state_dict)
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or ["?"])[0][:200]
            raise CheckpointError(
                f"{self.source}: its weights do not fit {spec['name']} as its manifest describes it ({first}); "
                "the bundle is corrupt: write it again with `merc bundle`"
            ) from None
        return model.to(device).eval()


# -- from a run folder ---------------------------------------------------------------------------
def finished_seeds(run: Path, seeds: list[int]) -> dict[int, dict[str, Any]]:
    """``{seed: metrics.json}`` of the seeds of ``run`` that finished (``best.pt`` and readable metrics)."""
    from merc.training.trainer import BEST_WEIGHTS

    done: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        folder = run / f"seed_{seed}"
        if not (folder / BEST_WEIGHTS).is_file() or not (folder / "metrics.json").is_file():
            continue
        try:
            metrics = json.loads((folder / "metrics.json").read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, OSError):
            continue
        if isinstance(metrics, dict) and isinstance(metrics.get("valid"), dict):
            done[seed] = metrics
    return done


def _score(metrics: Mapping[str, Any], split: str, metric: str) -> float:
    value = (metrics.get(split) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def bundle_from_run(run_dir: str | Path, seed: int | None = None, data_root: str | Path | None = None) -> Bundle:
    """The bundle of one finished seed of a run folder (``merc train --out``).

    Args:
        run_dir: The run folder.
        seed: Which seed's selected weights; ``None``: the finished seed with the best
            validation score (the run's ``training.selection_metric``; ties: the lowest seed).
        data_root: Only for runs trained before merc recorded their inputs
            (``inputs.json``): their training data is loaded to rebuild them.

    Raises:
        ConfigError: Not a run folder, no finished seed, or ``seed`` not finished.
        CheckpointError: The selected weights are unreadable or do not fit the model.
    """
    from merc.training.run_folder import load_torch_file, read_fingerprint
    from merc.training.runner import open_run_folder, recorded_inputs
    from merc.training.trainer import BEST_WEIGHTS, TrainConfig

    run, recipe, info = open_run_folder(run_dir, bundle_hint=True)
    dataset_arg = str((recipe.get("data") or {}).get("dataset_arg") or "")
    if split_sequence_request(dataset_arg)[1]:
        raise ConfigError(
            f"{run} was trained on token/frame sequences ({dataset_arg!r}); bundles and merc predict feed "
            "utterance-level features only, so they would not give the model what it was trained on. "
            "Evaluate such a run with `merc evaluate`, or train without the @ request to bundle it"
        )
    model_args = check_model_arguments(info["model_name"], recipe.get("model") or {})
    metric = TrainConfig.from_dict(recipe.get("training") or {}).selection_metric
    done = finished_seeds(run, info["seeds"])
    if not done:
        raise ConfigError(
            f"{run} has no finished seed (no seed_<k>/{BEST_WEIGHTS} with metrics.json); "
            "finish it by rerunning the same `merc train` command"
        )
    if seed is None:
        seed = max(sorted(done), key=lambda s: _score(done[s], "valid", metric))
    elif seed not in info["seeds"]:
        raise ConfigError(f"--seed {seed}: {run} has seeds {', '.join(str(s) for s in info['seeds'])}")
    elif seed not in done:
        raise ConfigError(
            f"--seed {seed}: seed {seed} of {run} has not finished; choose one of "
            f"{', '.join(str(s) for s in sorted(done))} or finish it with the same `merc train` command"
        )
    record, statistics = recorded_inputs(run, recipe, data_root)
    facts = record["dataset"]
    mods = parse_modalities(info["modalities"])
    fingerprint = read_fingerprint(run) or {}
    metrics = done[seed]
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "merc_version": getattr(merc, "__version__", None),
        "model": {
            "name": info["model_name"],
            "args": model_args,
            "in_dims": {m: int(facts["dims"][m]) for m in mods},
            "num_classes": len(facts["label_names"]),
            "num_speakers": len(facts["speaker_vocab"]),
            "num_parties": int(facts["num_parties"]),
        },
        "modalities": list(mods),
        "label_names": list(facts["label_names"]),
        "speaker_vocab": list(facts["speaker_vocab"]),
        "features": {m: record["specs"][m] for m in mods},
        "standardization": {"enabled": statistics is not None, "eps": float(record["eps"]), "split": "train"},
        "training": {
            "run_dir": str(run.resolve()),
            "seed": seed,
            "finished_seeds": sorted(done),
            "dataset": facts["name"],
            "dataset_sha256": (fingerprint.get("dataset") or {}).get("sha256"),
            "selection_metric": metric,
            "best_epoch": metrics.get("best_epoch"),
            "valid": {k: metrics["valid"].get(k) for k in HEADLINE_METRICS},
            "test": {k: (metrics.get("test") or {}).get(k) for k in HEADLINE_METRICS},
        },
    }
    state = load_torch_file(run / f"seed_{seed}" / BEST_WEIGHTS, "selected weights")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{run / f'seed_{seed}' / BEST_WEIGHTS}: not a state dict of tensors")
    bundle = Bundle(manifest, dict(state), statistics, str(run))
    _check_manifest(bundle.manifest, bundle.source)
    bundle.build()  # the weights must fit before anything is written
    return bundle


# -- writing and reading ---------------------------------------------------------------------------
def _tensors(bundle: Bundle) -> dict[str, torch.Tensor]:
    out = {_MODEL_PREFIX + k: v.detach().cpu().contiguous().clone() for k, v in bundle.state_dict.items()}
    for m, (mean, std) in (bundle.statistics or {}).items():
        out[f"{_STATS_PREFIX}{m}.mean"] = torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32))
        out[f"{_STATS_PREFIX}{m}.std"] = torch.from_numpy(np.ascontiguousarray(std, dtype=np.float32))
    return out


def is_folder_destination(out: str | Path) -> bool:
    """Whether ``--out`` asks for the folder layout (an existing folder, or a path ending in ``/``)."""
    return str(out).endswith(("/", "\\")) or Path(out).is_dir()


def save_bundle(bundle: Bundle, out: str | Path) -> Path:
    """Write ``bundle`` to ``out`` (file or folder layout, module docstring), all or nothing.

    Raises:
        ConfigError: ``out`` holds something that is not a merc bundle (never replaced).
    """
    from merc.training.run_folder import atomic_write_bytes, atomic_write_text

    manifest_text = json.dumps(bundle.manifest, allow_nan=False, sort_keys=True)
    path = Path(out)
    if is_folder_destination(out):
        if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST_FILE).is_file():
            raise ConfigError(f"--out {path} is a folder that holds other files; choose an empty or new folder")
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path / TENSORS_FILE, save_tensors(_tensors(bundle), metadata={"format": BUNDLE_FORMAT}))
        # The manifest last: its presence marks a complete bundle folder.
        atomic_write_text(path / MANIFEST_FILE, json.dumps(bundle.manifest, indent=2, allow_nan=False) + "\n")
        for name in (TENSORS_FILE, MANIFEST_FILE):
            readable_by_umask(path / name)
        return path
    if path.exists() and not _is_bundle_file(path):
        raise ConfigError(f"--out {path} exists and is not a merc bundle; refusing to replace it, choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save_tensors(_tensors(bundle), metadata={MANIFEST_KEY: manifest_text}))
    readable_by_umask(path)
    return path


def readable_by_umask(path: Path) -> None:
    """Give a file merc wrote atomically (a private temporary file renamed) the user's umask, like any new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    path.chmod(0o666 & ~mask)


def _is_bundle_file(path: Path) -> bool:
    try:
        return MANIFEST_KEY in (_header(path.read_bytes()[: 1 << 20], path).get("__metadata__") or {})
    except (MercError, OSError):
        return False


def _header(data: bytes, path: Path) -> dict[str, Any]:
    """The safetensors JSON header of ``data`` (8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        raise CheckpointError(f"{path}: not a merc bundle (too short to be a safetensors file)")
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or size > 100 * 2**20 or 8 + size > len(data):
        raise CheckpointError(f"{path}: not a merc bundle (not a safetensors file, or truncated)")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path}: not a merc bundle (its header is not JSON: corrupt?)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a merc bundle (its header is not a JSON object)")
    return header


def _read_tensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_tensors(data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable merc bundle ({exc}); it may be truncated or corrupt") from None
    except BaseException as exc:  # the Rust reader's panics derive from BaseException
        raise CheckpointError(f"{path}: not a readable merc bundle ({type(exc).__name__}); corrupt?") from None


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle written by :func:`save_bundle` (JSON and safetensors only: nothing is unpickled).

    Raises:
        CheckpointError: Not a bundle, a bundle of another version, a truncated or
            corrupt file, or a manifest whose parts do not agree.
    """
    path = Path(path)
    try:
        if path.is_dir():
            if not (path / MANIFEST_FILE).is_file():
                raise CheckpointError(f"{path}: not a merc bundle folder (no {MANIFEST_FILE}) nor a run folder")
            try:
                manifest = json.loads((path / MANIFEST_FILE).read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise CheckpointError(f"{path / MANIFEST_FILE}: not valid JSON; the bundle is corrupt") from None
            data = (path / TENSORS_FILE).read_bytes() if (path / TENSORS_FILE).is_file() else b""
            if not data:
                raise CheckpointError(f"{path}: the bundle folder has no {TENSORS_FILE}")
            _header(data, path / TENSORS_FILE)
        else:
            data = path.read_bytes()
            meta = _header(data, path).get("__metadata__") or {}
            if MANIFEST_KEY not in meta:
                raise CheckpointError(
                    f"{path}: not a merc bundle (a safetensors file without a merc manifest); "
                    "write one with `merc bundle RUN_DIR --out FILE`"
                )
            try:
                manifest = json.loads(meta[MANIFEST_KEY])
            except ValueError:
                raise CheckpointError(f"{path}: its merc manifest is not valid JSON; the bundle is corrupt") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the bundle ({exc.strerror or exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{path}: not a merc bundle (its manifest has no format {BUNDLE_FORMAT!r})")
    if manifest.get("version") != BUNDLE_VERSION:
        raise CheckpointError(
            f"{path}: merc bundle version {manifest.get('version')!r}; this merc reads version {BUNDLE_VERSION} "
            "(write the bundle again with this merc, or use the merc that wrote it)"
        )
    tensors = _read_tensors(data, path)
    _check_manifest(manifest, str(path))
    state = {k[len(_MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_MODEL_PREFIX)}
    statistics = None
    if manifest["standardization"]["enabled"]:
        statistics = {}
        for m in manifest["modalities"]:
            try:
                mean = tensors[f"{_STATS_PREFIX}{m}.mean"].numpy()
                std = tensors[f"{_STATS_PREFIX}{m}.std"].numpy()
            except KeyError:
                raise CheckpointError(f"{path}: the bundle lacks the standardisation statistics of {m!r}") from None
            statistics[m] = (mean, std)
    bundle = Bundle(manifest, state, statistics, str(path))
    _check_statistics(bundle)
    return bundle


def _check_manifest(manifest: Mapping[str, Any], where: str) -> None:
    """Raise :class:`CheckpointError` unless the manifest's parts are present and agree."""

    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: bad merc bundle manifest: {what}; write the bundle again with `merc bundle`")

    model = manifest.get("model")
    if not isinstance(model, dict) or not all(
        k in model for k in ("name", "args", "in_dims", "num_classes", "num_speakers", "num_parties")
    ):
        raise fail("no complete 'model' section")
    labels = manifest.get("label_names")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise fail("'label_names' must list at least 2 class names")
    if len(set(labels)) != len(labels):
        raise fail(f"label names repeat ({labels!r})")
    if model["num_classes"] != len(labels):
        raise fail(f"{len(labels)} label names for a model of {model['num_classes']} classes")
    vocab = manifest.get("speaker_vocab")
    if not isinstance(vocab, list) or not all(isinstance(x, str) for x in vocab):
        raise fail("'speaker_vocab' must be a list of strings")
    try:
        mods = parse_modalities(manifest.get("modalities") or [])
    except DataError as exc:
        raise fail(str(exc)) from None
    if not isinstance(model["in_dims"], dict) or set(model["in_dims"]) != set(mods):
        raise fail("model.in_dims and modalities disagree")
    features = manifest.get("features")
    if not isinstance(features, dict) or set(features) != set(mods):
        raise fail("'features' must describe each modality")
    for m in mods:
        try:
            spec = check_spec(m, features[m], where)
        except DataError as exc:
            raise fail(str(exc)) from None
        if spec["dim"] != model["in_dims"][m]:
            raise fail(f"features[{m!r}] is {spec['dim']}-d, the model's input {model['in_dims'][m]}-d")
    std = manifest.get("standardization")
    if not isinstance(std, dict) or not isinstance(std.get("enabled"), bool) or not isinstance(std.get("eps"), float):
        raise fail("no valid 'standardization' section")


def _check_statistics(bundle: Bundle) -> None:
    for m, (mean, std) in (bundle.statistics or {}).items():
        d = bundle.manifest["model"]["in_dims"][m]
        if mean.shape != (d,) or std.shape != (d,):
            raise CheckpointError(
                f"{bundle.source}: standardisation statistics of {m!r} have shape {tuple(mean.shape)}, expected ({d},)"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std >= 0).all()):
            raise CheckpointError(f"{bundle.source}: standardisation statistics of {m!r} are not finite; corrupt")


def load_model_source(path: str | Path, seed: int | None = None, data_root: str | Path | None = None) -> Bundle:
    """A run folder (``merc train --out``) or a bundle file / folder, as a :class:`Bundle`.

    Args:
        path: Run folder or bundle.
        seed: For a run folder, which seed (default: best validation); a bundle holds one.

    Raises:
        ConfigError: ``--seed`` given for a bundle, or nothing at ``path``.
        CheckpointError: See :func:`load_bundle` and :func:`bundle_from_run`.
    """
    p = Path(path)
    if p.is_dir() and (p / "config.yaml").is_file():
        return bundle_from_run(p, seed, data_root)
    if not p.exists():
        raise ConfigError(f"{p} not found; pass a run folder (merc train --out) or a bundle (merc bundle --out)")
    bundle = load_bundle(p)
    if seed is not None and seed != bundle.seed:
        raise ConfigError(f"--seed {seed}: the bundle {p} holds seed {bundle.seed} only")
    return bundle


def describe_bundle(bundle: Bundle) -> str:
    """One line: model, modalities, classes, seed and its validation score."""
    training = bundle.manifest.get("training") or {}
    valid = (training.get("valid") or {}).get("weighted_f1")
    score = f", valid w-F1 {valid:.2f}" if isinstance(valid, (int, float)) else ""
    return (
        f"{bundle.model_name} [{''.join(bundle.modalities)}] on {training.get('dataset', '?')}, "
        f"{len(bundle.label_names)} classes ({', '.join(bundle.label_names)}), seed {training.get('seed', '?')}{score}"
    )

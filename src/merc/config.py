"""YAML recipes and ``key=value`` overrides.

A recipe has two sections, ``model`` (constructor arguments) and ``training``
(:class:`merc.training.trainer.TrainConfig` fields), plus optional plug-in sections
(``curriculum``) and ``data``. ``configs/<model>/default.yaml`` is a model's base recipe;
``configs/<model>/<dataset>.yaml`` states only what differs for that dataset and is
deep-merged over the default (:func:`deep_merge`). A dataset without its own file gets
the default. An explicit recipe file (``merc train --config``) is read as a full recipe,
without the default under it. Command-line overrides use dotted keys
(``training.lr=3e-4``, ``model.dropout=0.5``) and are applied last; values are parsed as
YAML scalars. The fully resolved recipe is written into the run folder, with the files
it came from in ``data.recipe_file`` (and ``data.recipe_base``, the default it
inherited from).
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from merc.errors import ConfigError

#: Top-level recipe sections.
CORE_SECTIONS = ("model", "training", "data")


def recipe_sections() -> tuple[str, ...]:
    """The core sections and every registered plug-in's (:mod:`merc.training.plugins.registry`)."""
    from merc.training.plugins.registry import plugin_sections  # torch-free; plug-ins register there

    return CORE_SECTIONS + plugin_sections()


def configs_dir() -> Path:
    """``$MERC_CONFIG_DIR`` or the ``configs/`` folder of the checkout."""
    if os.environ.get("MERC_CONFIG_DIR"):
        return Path(os.environ["MERC_CONFIG_DIR"])
    return Path(__file__).resolve().parents[2] / "configs"


#: ``configs/`` folders that hold no model's recipes: ``merc tune``'s search presets.
NON_MODEL_CONFIG_FOLDERS = ("tune",)


def recipe_files(root: Path | None = None) -> list[Path]:
    """Every model recipe under ``root`` (default :func:`configs_dir`): ``<model>/<name>.yaml``,
    search presets (:data:`NON_MODEL_CONFIG_FOLDERS`) left out."""
    root = configs_dir() if root is None else root
    return sorted(p for p in root.glob("*/*.yaml") if p.parent.name not in NON_MODEL_CONFIG_FOLDERS)


def recipe_path(model: str, dataset: str) -> Path | None:
    """The most specific recipe file for ``model`` x ``dataset``.

    ``configs/<model>/<dataset>.yaml`` if it exists (it inherits from ``default.yaml``,
    see :func:`load_recipe`), else ``configs/<model>/default.yaml``, else ``None``.
    """
    folder = configs_dir() / model
    for name in (f"{dataset}.yaml", "default.yaml"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """One recipe file as written (no inheritance), its sections checked.

    Args:
        path: A recipe YAML file (or a run folder's ``config.yaml``).

    Returns:
        The file's mapping; a section left empty (``model:``) stays ``None``.

    Raises:
        ConfigError: The file is missing, not YAML, not a mapping, has an unknown
            section, or a section that is not a mapping of options.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()
        raise ConfigError(f"{path}: not valid YAML ({' '.join(line.strip() for line in first[:3])})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a recipe") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with sections {', '.join(recipe_sections())}")
    sections = recipe_sections()
    unknown = [k for k in data if k not in sections]
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; sections are {', '.join(sections)}")
    for section, value in data.items():
        # A list or a scalar here (say "model: corect") would otherwise surface much
        # later as a confusing TypeError in the model or trainer constructor.
        if value is not None and not isinstance(value, dict):
            raise ConfigError(
                f"{path}: section {section!r} must be a mapping of option: value, not a {type(value).__name__} "
                f"({value!r})"
            )
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged over ``base``, without changing either.

    Mappings present on both sides are merged key by key (recursively); any other value
    of ``override`` (scalar, list, ``None``) replaces the base value as a whole.

    Args:
        base: The inherited mapping (e.g. ``default.yaml``).
        override: The more specific mapping (e.g. ``<dataset>.yaml``).

    Returns:
        A new dict: ``base``'s keys in their order, then keys only ``override`` has.

    >>> deep_merge({"model": {"a": 1, "b": [1]}}, {"model": {"b": [2], "c": 3}})
    {'model': {'a': 1, 'b': [2], 'c': 3}}
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _sections(data: Mapping[str, Any]) -> dict[str, Any]:
    # An empty section in YAML ("model:") reads as None; it means "no options".
    return {key: value or {} for key, value in data.items()}


def load_recipe(model: str, dataset: str, path: str | Path | None = None) -> dict[str, Any]:
    """The recipe for ``model`` x ``dataset``, before command-line overrides.

    Without ``path``: ``configs/<model>/default.yaml`` with
    ``configs/<model>/<dataset>.yaml`` deep-merged over it (either may be missing).
    ``data.recipe_file`` records the most specific file read and ``data.recipe_base``
    the default under it, when both were read.

    Args:
        model: Registered model name (the ``configs/`` sub-folder).
        dataset: Dataset name (the recipe file's stem; a sequence request ``name@letters``
            reads ``name``'s recipe).
        path: An explicit recipe file, read as a full recipe: no default is merged
            under it (a pruned ``configs/<model>/<dataset>.yaml`` passed here loses the
            default's values).

    Returns:
        A new dict with at least the ``model`` and ``training`` sections (empty if no
        recipe exists).

    Raises:
        ConfigError: A recipe file is missing (explicit ``path``) or malformed.
    """
    recipe: dict[str, Any] = {s: {} for s in ("model", "training")}
    files: dict[str, Path] = {}
    if path is not None:
        recipe.update(_sections(load_yaml(path)))
        files["recipe_file"] = Path(path)
    else:
        if "@" in dataset:  # "iemocap4@t" (token-level text) reads iemocap4's recipe
            from merc.data.registry import split_sequence_request

            dataset = split_sequence_request(dataset)[0]
        folder = configs_dir() / model
        base, own = folder / "default.yaml", folder / f"{dataset}.yaml"
        if base.is_file():
            recipe.update(_sections(load_yaml(base)))
        if own.is_file() and own != base:
            recipe = deep_merge(recipe, _sections(load_yaml(own)))
            files["recipe_file"] = own
            if base.is_file():
                files["recipe_base"] = base
        elif base.is_file():
            files["recipe_file"] = base
    if files:
        recipe.setdefault("data", {}).update({key: str(value) for key, value in files.items()})
    return recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.lr=3e-4"`` -> ``(["training", "lr"], 0.0003)``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. training.lr=3e-4)")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    sections = recipe_sections()
    if len(parts) < 2 or parts[0] not in sections:
        raise ConfigError(
            f"override key {key!r} must start with a section: {', '.join(sections)} (e.g. model.dropout=0.5)"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    # YAML reads 3e-4 as a string (it wants 3.0e-4); numbers are what people mean.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return parts, value


def apply_overrides(recipe: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``recipe`` with dotted ``key=value`` overrides applied."""
    out = copy.deepcopy(dict(recipe))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def save_yaml(data: Mapping[str, Any], path: str | Path) -> None:
    """Write ``data`` as YAML, all or nothing (a kill or a full disk leaves the old file)."""
    from merc.training.run_folder import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dict(data), sort_keys=False))


#: Ranges of model options, by naming convention (the types come from each constructor's
#: annotations, :func:`merc.models.registry.check_model_arguments`): ``(applies to the
#: option name?, valid?, what is valid)``. Every registered model's defaults pass
#: (``tests/test_config.py``); a constraint that depends on the data's dims is the
#: model's own and is reported when it is built.
MODEL_OPTION_RANGES: tuple[tuple[Callable[[str], bool], Callable[[float], bool], str], ...] = (
    (lambda k: "dropout" in k or k.endswith("_mask_rate"), lambda v: 0 <= v < 1, "a number in [0, 1)"),
    (lambda k: k == "sparsity", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    # Upper bounds: a size of 10**30 would otherwise ask the allocator for it.
    (lambda k: k.endswith(("_size", "_hidden", "_dim")), lambda v: 1 <= v <= 2**16, "an integer in [1, 65536]"),
    (lambda k: k.endswith(("_layers", "_heads")), lambda v: 0 <= v <= 1024, "an integer in [0, 1024]"),
    (lambda k: k.endswith(("_weight", "_ratio", "_weights")), lambda v: v >= 0, "a number >= 0"),
    (lambda k: k.endswith("_window") or k.startswith("window_"), lambda v: v >= -1, "an integer >= -1"),
)


def check_model_ranges(section: Mapping[str, Any], prefix: str = "model") -> None:
    """Check the numbers of a (type-checked) ``model`` section against :data:`MODEL_OPTION_RANGES`.

    Nested mappings (per-modality options) are checked under their own key's rule.

    Raises:
        ConfigError: Naming ``model.<key>`` and what is valid.
    """
    for key, value in section.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            for inner, inner_value in value.items():
                _check_model_number(str(key), f"{name}.{inner}", inner_value)
        else:
            _check_model_number(str(key), name, value)


def _check_model_number(key: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return
    for applies, valid, expected in MODEL_OPTION_RANGES:
        if applies(key) and not (math.isfinite(float(value)) and valid(float(value))):
            raise ConfigError(f"{name}={value!r}: expected {expected}")

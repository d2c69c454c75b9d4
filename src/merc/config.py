"""YAML recipes and ``key=value`` overrides.

A recipe is ``configs/<model>/<dataset>.yaml`` (falling back to
``configs/<model>/default.yaml``) with two sections, ``model`` (constructor arguments)
and ``training`` (:class:`merc.training.trainer.TrainConfig` fields), plus optional
plug-in sections. Command-line overrides use dotted keys (``training.lr=3e-4``,
``model.dropout=0.5``); values are parsed as YAML scalars. The fully resolved recipe is
written into the run folder.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from merc.errors import ConfigError

#: Top-level recipe sections.
SECTIONS = ("model", "training", "curriculum", "data")


def configs_dir() -> Path:
    """``$MERC_CONFIG_DIR`` or the ``configs/`` folder of the checkout."""
    if os.environ.get("MERC_CONFIG_DIR"):
        return Path(os.environ["MERC_CONFIG_DIR"])
    return Path(__file__).resolve().parents[2] / "configs"


def recipe_path(model: str, dataset: str) -> Path | None:
    folder = configs_dir() / model
    for name in (f"{dataset}.yaml", "default.yaml"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with sections {', '.join(SECTIONS)}")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; sections are {', '.join(SECTIONS)}")
    return data


def load_recipe(model: str, dataset: str, path: str | Path | None = None) -> dict[str, Any]:
    """The recipe for ``model`` x ``dataset`` (empty sections if none exists)."""
    found = Path(path) if path is not None else recipe_path(model, dataset)
    recipe: dict[str, Any] = {s: {} for s in ("model", "training")}
    if found is not None:
        for key, value in load_yaml(found).items():
            recipe[key] = value or {}
        recipe.setdefault("data", {})["recipe_file"] = str(found)
    return recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.lr=3e-4"`` -> ``(["training", "lr"], 0.0003)``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. training.lr=3e-4)")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"override key {key!r} must start with a section: {', '.join(SECTIONS)} (e.g. model.dropout=0.5)")
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
    Path(path).write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")

"""Training plug-ins and the builder that reads them from a recipe.

A plug-in is registered by the recipe section that configures it
(``register_plugin("curriculum")``); :func:`build_plugins` builds one per section present
in the recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from merc.data.schema import MercDataset
from merc.training.plugins.base import TrainerPlugin

PluginBuilder = Callable[[dict[str, Any], MercDataset], TrainerPlugin | None]
_PLUGINS: dict[str, PluginBuilder] = {}


def register_plugin(section: str) -> Callable[[PluginBuilder], PluginBuilder]:
    """Register a builder ``(section_config, dataset) -> plugin or None`` for a recipe section."""

    def deco(fn: PluginBuilder) -> PluginBuilder:
        _PLUGINS[section] = fn
        return fn

    return deco


def build_plugins(recipe: dict[str, Any], dataset: MercDataset) -> list[TrainerPlugin]:
    """One plug-in per recipe section that has a registered builder."""
    plugins = []
    for section, builder in _PLUGINS.items():
        cfg = recipe.get(section)
        if cfg:
            plugin = builder(dict(cfg), dataset)
            if plugin is not None:
                plugins.append(plugin)
    return plugins


__all__ = ["TrainerPlugin", "build_plugins", "register_plugin"]

from merc.training.plugins import curriculum  # noqa: E402,F401

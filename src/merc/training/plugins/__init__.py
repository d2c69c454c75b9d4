"""Training plug-ins: the hook interface and the one registry of plug-ins.

:mod:`merc.training.plugins.registry` lists every plug-in with its recipe section and
command-line switch; :func:`build_plugins` builds those a recipe configures.
"""

from __future__ import annotations

from merc.training.plugins.base import TrainerPlugin
from merc.training.plugins.registry import (
    PluginOption,
    PluginSpec,
    build_plugins,
    plugin_sections,
    plugin_specs,
    register_plugin,
)

__all__ = [
    "PluginOption",
    "PluginSpec",
    "TrainerPlugin",
    "build_plugins",
    "plugin_sections",
    "plugin_specs",
    "register_plugin",
]

"""The plug-in registry: the one list of training plug-ins and of their recipe sections.

A plug-in module registers a builder with :func:`register_plugin`, naming the recipe
section that configures it and, optionally, its command-line switch. Everything else is
derived from this list: the recipe sections :mod:`merc.config` accepts, the switches of
``merc train`` (a new plug-in adds its own without editing ``cli.py``), and
:func:`build_plugins`, which builds one plug-in per section present in a recipe.

A switch comes in one of two forms:

- its own flag, ``--<switch> CHOICE`` setting ``<section>.<switch_key>=CHOICE``
  (``--curriculum emotion-shift`` sets ``curriculum.strategy``), with extra flags for
  some keys (``--buckets 5`` sets ``curriculum.buckets``);
- a member of a group, ``--<group> <section>`` setting ``<section>.enabled=true``, so
  that mutually exclusive methods share one flag (``--balance ogm-ge``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from merc.errors import ConfigError

if TYPE_CHECKING:
    from merc.data.schema import MercDataset
    from merc.training.plugins.base import TrainerPlugin

PluginBuilder = Callable[[dict[str, Any], "MercDataset"], "TrainerPlugin | None"]
#: Checks a plug-in section's options without data (raises :class:`~merc.errors.ConfigError`).
PluginCheck = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class PluginOption:
    """A command-line flag that sets one key of a plug-in's section.

    Attributes:
        flag: e.g. ``"buckets"`` for ``--buckets``.
        key: The section key it sets.
        type: Parses the flag's text (``int``, ``float``, ``str``).
        help: One line for ``merc train --help``.
    """

    flag: str
    key: str
    type: Callable[[str], Any]
    help: str


@dataclass(frozen=True)
class PluginSpec:
    """One registered plug-in (see the module docstring for the switch forms).

    Attributes:
        section: Recipe section that configures it, e.g. ``"curriculum"``.
        build: ``(section_config, dataset) -> plugin`` (``None`` when the section turns it off).
        help: One line: what it does, from which paper.
        switch: Flag name of its own switch (``None``: no own flag).
        switch_key: Section key the own switch sets.
        choices: Values of the own switch.
        options: Further flags setting single keys.
        group: Name of a shared flag (``"balance"``) whose value selects this plug-in.
        check: Validates the section's options (types, ranges, choices, unknown keys)
            before any data loads (:func:`check_plugin_sections`); the builder runs the
            same check, so a plug-in states its constraints once.
    """

    section: str
    build: PluginBuilder
    help: str
    switch: str | None = None
    switch_key: str = "strategy"
    choices: tuple[str, ...] = ()
    options: tuple[PluginOption, ...] = ()
    group: str | None = None
    check: PluginCheck | None = None


_PLUGINS: dict[str, PluginSpec] = {}


def register_plugin(
    section: str,
    *,
    help: str,
    switch: str | None = None,
    switch_key: str = "strategy",
    choices: tuple[str, ...] = (),
    options: tuple[PluginOption, ...] = (),
    group: str | None = None,
    check: PluginCheck | None = None,
) -> Callable[[PluginBuilder], PluginBuilder]:
    """Register a builder for a recipe section (arguments: :class:`PluginSpec`)."""

    def deco(fn: PluginBuilder) -> PluginBuilder:
        if section in _PLUGINS:
            raise ValueError(f"plug-in section {section!r} registered twice")
        if section in ("model", "training", "data"):
            raise ValueError(f"{section!r} is a core recipe section, not a plug-in")
        _PLUGINS[section] = PluginSpec(
            section, fn, help, switch, switch_key, tuple(choices), tuple(options), group, check
        )
        return fn

    return deco


def unregister_plugin(section: str) -> None:
    """Remove a registration (tests that register a plug-in of their own)."""
    _PLUGINS.pop(section, None)


def _import_builtin_plugins() -> None:
    # Importing the modules runs their @register_plugin decorators.
    from merc.training.plugins import curriculum, modality_balance, pgm, spcl  # noqa: F401


def plugin_specs() -> list[PluginSpec]:
    """Every registered plug-in, in registration order."""
    _import_builtin_plugins()
    return list(_PLUGINS.values())


def plugin_sections() -> tuple[str, ...]:
    """The recipe sections plug-ins own."""
    return tuple(spec.section for spec in plugin_specs())


def plugin_groups() -> dict[str, list[PluginSpec]]:
    """Shared switches: group name -> its plug-ins."""
    groups: dict[str, list[PluginSpec]] = {}
    for spec in plugin_specs():
        if spec.group:
            groups.setdefault(spec.group, []).append(spec)
    return groups


def switch_overrides(values: Mapping[str, Any]) -> list[str]:
    """The recipe overrides that command-line plug-in switches stand for.

    Args:
        values: Flag name (``"curriculum"``, ``"buckets"``, ``"balance"``) -> the value
            given, ``None`` for flags not given.

    Raises:
        ConfigError: an option flag without its plug-in's switch.

    >>> switch_overrides({"curriculum": "emotion-shift", "buckets": 3})
    ['curriculum.strategy=emotion-shift', 'curriculum.buckets=3']
    """
    out: list[str] = []
    for group, members in plugin_groups().items():
        chosen = values.get(group)
        if chosen is not None:
            if chosen not in {m.section for m in members}:
                raise ConfigError(f"--{group} {chosen}: choose one of {', '.join(m.section for m in members)}")
            out.append(f"{chosen}.enabled=true")
    for spec in plugin_specs():
        switch_value = values.get(spec.switch) if spec.switch is not None else None
        on = switch_value is not None
        if on:
            out.append(f"{spec.section}.{spec.switch_key}={switch_value}")
        for opt in spec.options:
            if values.get(opt.flag) is None:
                continue
            selected = on or (spec.group is not None and values.get(spec.group) == spec.section)
            if not selected:
                needs = f"--{spec.switch}" if spec.switch else f"--{spec.group} {spec.section}"
                raise ConfigError(f"--{opt.flag} needs {needs}")
            out.append(f"{spec.section}.{opt.key}={values[opt.flag]}")
    return out


def fill_dataset_defaults(recipe: dict[str, Any], defaults: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Fill the plug-in sections present in ``recipe`` with a dataset's defaults.

    Only keys the recipe (and the command line) left unset are filled, and only in
    sections the recipe has: a dataset default never switches a plug-in on.
    """
    for section, values in defaults.items():
        if section in recipe and isinstance(recipe[section], dict) and recipe[section]:
            for key, value in values.items():
                recipe[section].setdefault(key, value)
    return recipe


def _section(recipe: Mapping[str, Any], spec: PluginSpec) -> dict[str, Any] | None:
    cfg = recipe.get(spec.section)
    if not cfg:
        return None
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"recipe section {spec.section!r} must be a mapping of options, got {cfg!r}")
    return dict(cfg)


def check_plugin_sections(recipe: Mapping[str, Any]) -> None:
    """Check every plug-in section of ``recipe`` with its plug-in's ``check``, before data loads.

    Raises:
        ConfigError: A section that is not a mapping, or an option its plug-in refuses.
    """
    for spec in plugin_specs():
        cfg = _section(recipe, spec)
        if cfg is not None and spec.check is not None:
            spec.check(cfg)


def build_plugins(recipe: Mapping[str, Any], dataset: MercDataset) -> list[TrainerPlugin]:
    """One plug-in per recipe section that has a registered builder (and does not turn it off)."""
    plugins = []
    for spec in plugin_specs():
        cfg = _section(recipe, spec)
        if cfg is not None:
            plugin = spec.build(cfg, dataset)
            if plugin is not None:
                plugins.append(plugin)
    return plugins


__all__ = [
    "PluginBuilder",
    "PluginOption",
    "PluginSpec",
    "PluginCheck",
    "build_plugins",
    "check_plugin_sections",
    "fill_dataset_defaults",
    "plugin_groups",
    "plugin_sections",
    "plugin_specs",
    "register_plugin",
    "switch_overrides",
    "unregister_plugin",
]

"""Imports go one way: training depends on data, models and evaluation, never the reverse.

Experiment drivers that need trained weights or retraining (e.g. the robustness sweep)
live beside the runner in merc.training. Checked on the source with ``ast``, so imports
inside functions count as much as top-level ones.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import merc

PACKAGE = Path(merc.__file__).resolve().parent
#: Packages that must not import merc.training (anywhere, not even inside a function).
BELOW_TRAINING = ("data", "evaluation", "models")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``: absolute, relative (resolved) or ``import_module("...")``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from merc import training` imports merc.training too.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def imports_of(module: str, subpackage: str) -> list[str]:
    offenders = []
    for path in sorted((PACKAGE / subpackage).rglob("*.py")):
        for line, name in imported_modules(path):
            if name == module or name.startswith(module + "."):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    return offenders


def test_the_checker_sees_every_kind_of_import(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "merc"
    (fake / "evaluation").mkdir(parents=True)
    (fake / "evaluation" / "probe.py").write_text(
        "import merc.training.runner\n"
        "def f():\n    from merc.training import trainer\n"
        "def g():\n    from ..training.runner import run_experiment\n"
        "def h():\n    from merc import training\n"
        "def i():\n    import importlib\n    return importlib.import_module('merc.training.trainer')\n"
        "import merc.trainingish\n"
    )
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    lines = {int(o.split(" imports ")[0].rsplit(":", 1)[1]) for o in imports_of("merc.training", "evaluation")}
    assert sorted(lines) == [1, 3, 5, 7, 10]  # not line 11: merc.trainingish is another module


@pytest.mark.parametrize("subpackage", BELOW_TRAINING)
def test_no_import_of_training(subpackage: str) -> None:
    assert (PACKAGE / subpackage).is_dir()
    assert imports_of("merc.training", subpackage) == []


def test_cli_parser_stays_light() -> None:
    """``merc --help`` builds every parser (robustness's included) without torch, the models or the trainer."""
    code = (
        "import sys, merc.cli; merc.cli.build_parser(); heavy = ('torch', 'matplotlib', 'merc.models', "
        "'merc.training.trainer', 'merc.training.runner'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

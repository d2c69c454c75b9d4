"""Shared set-up of the bad-input suites: a tiny native dataset, a trained run, and the checks.

Every case runs ``merc`` in-process (:func:`merc.cli.main`) and must end in one line
``merc: error: ...`` with exit status 2, without a traceback, and without changing any
file (nothing written, nothing half-written: :func:`snapshot` before and after).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import make_dataset
from merc.cli import main
from merc.data.formats.native import write_native

#: Overrides that keep every training a fraction of a second.
CHEAP = ("model.hidden_size=4", "model.dense_size=4", "training.epochs=1", "training.batch_size=2")


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> content hash (``"dir"`` for folders)."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def one_error_line(capsys: pytest.CaptureFixture[str], argv: Sequence[str]) -> str:
    """Run ``merc argv``; assert exit 2 and exactly one ``merc: error:`` line; return it."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}: {err}"
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("merc: error: "), err
    return lines[0]


@dataclass
class Shared:
    """Built once per test module: a dataset folder and two finished runs on it."""

    dataset: Path
    run: Path
    other_dims_run: Path


def build_shared(root: Path) -> Shared:
    dataset = root / "ds"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), dataset)
    run = root / "run"
    assert main(train_argv(dataset, run)) == 0
    other = root / "other"
    assert main(train_argv(dataset, other, "model.hidden_size=6")) == 0
    return Shared(dataset, run, other)


def train_argv(dataset: Path, out: Path, *extra: str, modalities: str = "ta") -> list[str]:
    return [
        "train",
        "--model",
        "bclstm",
        "--dataset",
        str(dataset),
        "--modalities",
        modalities,
        "--seeds",
        "0",
        "--out",
        str(out),
        "--quiet",
        *CHEAP,
        *extra,
    ]


class Env:
    """What one case builds its input in: a fresh ``tmp`` folder with copies of the shared data."""

    def __init__(self, tmp: Path, shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.shared = shared
        self.monkeypatch = monkeypatch

    def dataset(self, mutate: Callable[[Path], None] | None = None) -> Path:
        """A copy of the shared dataset, changed by ``mutate(folder)``."""
        folder = self.tmp / "ds"
        if not folder.exists():
            shutil.copytree(self.shared.dataset, folder)
        if mutate is not None:
            mutate(folder)
        return folder

    def run(self, mutate: Callable[[Path], None] | None = None) -> Path:
        """A copy of the shared finished run, changed by ``mutate(folder)``."""
        folder = self.tmp / "run"
        if not folder.exists():
            shutil.copytree(self.shared.run, folder)
        if mutate is not None:
            mutate(folder)
        return folder

    def train(self, *extra: str, dataset: Path | None = None, out: Path | None = None) -> list[str]:
        return train_argv(dataset or self.dataset(), out or self.tmp / "out", *extra)

    def rerun(self, *extra: str, modalities: str = "ta", dataset: Path | None = None) -> list[str]:
        """The shared run's command into a copy of its folder, with ``extra`` appended."""
        return train_argv(dataset or self.dataset(), self.run(), *extra, modalities=modalities)


# -- editing a native dataset ---------------------------------------------------------------------
def edit_metadata(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        meta = json.loads((folder / "metadata.json").read_text())
        change(meta)
        (folder / "metadata.json").write_text(json.dumps(meta))

    return mutate


def edit_record(change: Callable[[dict[str, Any]], None], line: int = 0) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / "conversations.jsonl"
        lines = path.read_text().splitlines()
        record = json.loads(lines[line])
        change(record)
        lines[line] = json.dumps(record)
        path.write_text("\n".join(lines) + "\n")

    return mutate


def edit_records(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """``change`` applied to every record."""

    def mutate(folder: Path) -> None:
        path = folder / "conversations.jsonl"
        records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        for r in records:
            change(r)
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")

    return mutate


def write_bytes(relative: str, data: bytes) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)

    return mutate


def truncate(relative: str, keep: float = 0.5) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        data = (folder / relative).read_bytes()
        (folder / relative).write_bytes(data[: int(len(data) * keep)])

    return mutate


def remove(relative: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / relative
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()

    return mutate


def both(*mutations: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        for m in mutations:
            m(folder)

    return mutate

"""Fixtures of the inference tests: finished runs on tiny native datasets (built once per module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_dataset
from merc.data.formats.native import write_native
from predict_helpers import train, write_text_dataset


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset folder with provided t/a features, finished 2-seed bc-LSTM run on ta)."""
    root = tmp_path_factory.mktemp("feature_run")
    folder = root / "ds"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), folder)
    return folder, train(folder, root / "run", "ta")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(transcripts-only dataset declared with modalities ["t"], finished bc-LSTM text run)."""
    root = tmp_path_factory.mktemp("text_run")
    folder = write_text_dataset(root / "ds", ["t"])
    return folder, train(folder, root / "run", "t", seeds="0")

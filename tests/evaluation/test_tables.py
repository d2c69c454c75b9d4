"""SPCL Table 3 layout from run folders: methods, modality columns, paired tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from merc.evaluation.tables import balance_table, paired_test, run_method

SECTIONS = ["rna", "ogm-ge", "spcl"]


def _run(root: Path, name: str, model: str, mods: str, f1: list[float], config: dict) -> Path:
    run = root / name
    run.mkdir()
    stat = lambda v: {"mean": sum(v) / len(v), "std": 0.5, "per_seed": v}  # noqa: E731
    results = {
        "model": model,
        "dataset": "synthetic",
        "modalities": mods,
        "seeds": [0, 1, 2],
        "test": {"weighted_f1": stat(f1), "accuracy": stat([x + 1 for x in f1])},
    }
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_run_method_reads_enabled_sections() -> None:
    assert run_method({"model": {}}, SECTIONS) == "base"
    assert run_method({"ogm-ge": {"alpha": 0.1}}, SECTIONS) == "ogm-ge"
    assert run_method({"ogm-ge": {"enabled": False}}, SECTIONS) == "base"
    assert run_method({"rna": {"enabled": True}, "spcl": {}}, SECTIONS) == "rna"
    assert run_method({"rna": {"enabled": True}, "spcl": {"epsilon": 1}}, SECTIONS) == "rna+spcl"


def test_paired_test() -> None:
    diff, p = paired_test([61.0, 61.6, 62.2], [60.0, 60.5, 61.0])
    assert diff == pytest.approx(1.1) and 0 < p < 0.05
    _, p_weaker = paired_test([61.0, 62.0, 63.5], [60.0, 60.5, 61.0])
    assert 0.05 < p_weaker < 0.10
    assert paired_test([1.0], [0.0]) is None
    assert paired_test([1.0, 2.0], [1.0, 2.0]) == (0.0, 1.0)
    _, p_noisy = paired_test([60.0, 65.0, 58.0], [61.0, 60.0, 62.0])
    assert p_noisy > 0.1


def test_balance_table_layout_and_marks(tmp_path) -> None:
    runs = [
        _run(tmp_path, "base-tav", "mmgcn", "tav", [60.0, 60.5, 61.0], {}),
        _run(tmp_path, "base-av", "mmgcn", "av", [40.0, 41.0, 42.0], {}),
        _run(tmp_path, "ogm-tav", "mmgcn", "tav", [61.0, 61.6, 62.2], {"ogm-ge": {"enabled": True}}),
        _run(tmp_path, "rna-tav", "mmgcn", "tav", [61.0, 62.0, 63.5], {"rna": {"enabled": True}}),
        _run(tmp_path, "spcl-av", "mmgcn", "av", [39.0, 45.0, 40.0], {"spcl": {"enabled": True}}),
        _run(tmp_path, "late-tav", "mmgcn", "tav", [50.0, 51.0, 52.0], {"model": {"fusion": "late"}}),
        tmp_path / "unfinished",
    ]
    (tmp_path / "unfinished").mkdir()
    table = balance_table(runs, SECTIONS)
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert header.index("TAV w-F1") < header.index("AV w-F1")
    rows = {line.split("|")[2].strip(): line for line in lines if line.startswith("| mmgcn |")}
    assert list(rows) == ["base", "+rna", "+ogm-ge", "+spcl"]
    ogm = rows["+ogm-ge"].split("|")
    assert "61.60 ± 0.50 ↑*" in ogm[3]  # significant gain on TAV
    assert "62.17 ± 0.50 ↑†" in rows["+rna"].split("|")[3]  # p = 0.06
    assert ogm[5].strip() == ""  # no AV run of ogm-ge
    assert "↑" not in rows["+spcl"] and "↓" not in rows["+spcl"]  # noisy: not marked
    assert "*" not in rows["base"]
    late = [line for line in lines if line.startswith("| mmgcn (late) | base |")]
    assert len(late) == 1 and "51.00 ± 0.50" in late[0]  # its own backbone, not mmgcn's base

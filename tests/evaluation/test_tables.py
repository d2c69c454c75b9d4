"""SPCL Table 3 layout from run folders: methods, modality columns, paired tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from merc.evaluation.tables import (
    ablation_table,
    ablation_verdict,
    balance_table,
    check_ablation_spec,
    paired_test,
    run_method,
)

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


def test_the_final_run_of_a_search_is_its_own_tuned_row(tmp_path) -> None:
    base = _run(tmp_path, "base-tav", "mmgcn", "tav", [60.0, 60.5, 61.0], {})
    spcl = _run(tmp_path, "spcl-tav", "mmgcn", "tav", [59.0, 60.0, 61.0], {"spcl": {"enabled": True}})
    search = tmp_path / "tune-spcl"
    search.mkdir()
    (search / "tune.json").write_text("{}")  # what merc tune writes beside its final run best/
    tuned = _run(search, "best", "mmgcn", "tav", [61.0, 61.6, 62.2], {"spcl": {"enabled": True, "epsilon": 0.3}})
    rows = {
        line.split("|")[2].strip(): line
        for line in balance_table([base, spcl, tuned], SECTIONS).splitlines()
        if line.startswith("| mmgcn |")
    }
    assert list(rows) == ["base", "+spcl", "+spcl (tuned)"]
    assert "61.60 ± 0.50 ↑*" in rows["+spcl (tuned)"]  # its own row, not merged with +spcl
    (search / "tune.json").unlink()
    assert "(tuned)" not in balance_table([base, spcl, tuned], SECTIONS)  # a folder named best alone is not


def test_ablation_verdict_follows_sign_and_significance() -> None:
    assert ablation_verdict(-2.0, 0.01, "down") == "confirmed"
    assert ablation_verdict(-2.0, 0.30, "down") == "same direction, n.s."
    assert ablation_verdict(+4.0, 0.01, "down") == "not confirmed (opposite, p < 0.10)"
    assert ablation_verdict(+0.5, 0.60, "down") == "not confirmed (opposite, n.s.)"
    assert ablation_verdict(+1.0, 0.02, "up") == "confirmed"
    assert ablation_verdict(0.0, None, "down") == "not confirmed (opposite, n.s.)"  # no change is no effect
    assert ablation_verdict(+0.3, 0.70, "same").startswith("confirmed")
    assert ablation_verdict(+3.0, 0.01, "same").startswith("not confirmed")
    with pytest.raises(ValueError, match="paper direction"):
        ablation_verdict(1.0, 0.1, "better")


def test_ablation_table_compares_each_row_with_its_reference(tmp_path) -> None:
    _run(tmp_path, "full", "rsm", "tav", [60.0, 60.5, 61.0], {})
    _run(tmp_path, "no-a", "rsm", "tav", [58.0, 58.6, 59.1], {})  # -1.93 on every seed: confirmed
    _run(tmp_path, "no-a-no-b", "rsm", "tav", [62.0, 59.0, 63.0], {})  # noisy, up against no-a
    spec = {
        "title": "T",
        "rows": [
            {"name": "full", "label": "full model", "run": "full", "paper_values": "85.9"},
            {"name": "a", "label": "w/o A", "run": "no-a", "versus": "full", "paper": "down"},
            {"name": "ab", "label": "w/o A, B", "run": "no-a-no-b", "versus": "a", "paper": "down"},
            {"name": "c", "label": "w/o C", "run": "missing", "versus": "full"},
        ],
    }
    rows = {line.split("|")[1].strip(): line.split("|") for line in ablation_table(spec, tmp_path).splitlines()[4:8]}
    assert rows["full model"][4].strip() == "(reference)" and "85.9" in rows["full model"][7]
    assert rows["w/o A"][5].strip().startswith("-1.93 (") and rows["w/o A"][8].strip() == "confirmed"
    assert rows["w/o A, B"][4].strip() == "a" and rows["w/o A, B"][8].strip() == "not confirmed (opposite, n.s.)"
    assert rows["w/o C"][2].strip() == "not run"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "non-empty list"),
        ([{"name": "x", "label": "x", "run": "r"}, {"name": "x", "label": "y", "run": "s"}], "unique 'name'"),
        ([{"name": "x", "label": "x"}], "'run' must be"),
        ([{"name": "x", "label": "x", "run": "r", "versus": "y"}], "no other row"),
        ([{"name": "x", "label": "x", "run": "r", "versus": "x"}], "no other row"),
        ([{"name": "x", "label": "x", "run": "r", "paper": "better"}], "paper must be one of"),
    ],
)
def test_check_ablation_spec_refuses_bad_specs(rows, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_ablation_spec({"title": "bad", "rows": rows})


def test_every_ablation_spec_in_bench_is_valid() -> None:
    specs = sorted((Path(__file__).resolve().parents[2] / "bench" / "ablations").glob("*.yaml"))
    assert specs, "bench/ablations holds the papers' ablation specs"
    for spec in specs:
        check_ablation_spec(yaml.safe_load(spec.read_text(encoding="utf-8")))

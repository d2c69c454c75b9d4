"""bench/run_grid.py: grid specs expand to the right merc train commands; finished runs are skipped."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("run_grid", BENCH / "run_grid.py")
assert _spec is not None and _spec.loader is not None
run_grid = importlib.util.module_from_spec(_spec)
sys.modules["run_grid"] = run_grid
_spec.loader.exec_module(run_grid)


def test_expand_is_the_product_in_order_with_variants() -> None:
    spec = {
        "groups": [
            {
                "name": "{model}-late-{modalities}-{balance}",
                "model": ["mmgcn", "biddin"],
                "dataset": "synthetic",
                "modalities": ["tav", "av"],
                "balance": ["base", "rna"],
                "overrides": ["model.fusion=late"],
                "minutes": 3,
            },
            {
                "name": "cmath-{variant}",
                "model": "cmath",
                "dataset": "iemocap4",
                "variants": [{"variant": "no-mr", "overrides": ["model.use_reconstruction=false"]}],
                "protocol": "loso",
            },
        ]
    }
    runs = run_grid.expand(spec)
    assert [r.name for r in runs[:3]] == ["mmgcn-late-tav-base", "mmgcn-late-tav-rna", "mmgcn-late-av-base"]
    assert len(runs) == 9 and runs[7].name == "biddin-late-av-rna" and runs[0].minutes == 3
    root = Path("/runs")
    base, rna, cmath = runs[0].command(root), runs[1].command(root), runs[8].command(root)
    assert "--balance" not in base and base[-1] == "model.fusion=late" and "--protocol" not in base
    assert rna[rna.index("--balance") + 1] == "rna" and rna[rna.index("--out") + 1] == "/runs/mmgcn-late-tav-rna"
    assert cmath[-1] == "model.use_reconstruction=false" and cmath[cmath.index("--protocol") + 1] == "loso"
    assert cmath[cmath.index("--modalities") + 1] == "t" and cmath[cmath.index("--seeds") + 1] == "0,1,2"


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"name": "x", "model": "m", "dataset": "d", "epochs": 3}, "unknown keys"),
        ({"name": "x", "model": "m"}, "needs name, model, dataset"),
        ({"name": "x", "model": "m", "dataset": "d", "balance": ["base", "rna"]}, "must be unique"),
    ],
)
def test_bad_groups_are_refused(group: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_grid.expand({"groups": [group]})


def test_pending_skips_runs_finished_in_the_run_folder_or_among_the_kept(tmp_path: Path) -> None:
    runs = run_grid.expand(
        {"groups": [{"name": "r-{modalities}", "model": "m", "dataset": "d", "modalities": ["t", "a", "v"]}]}
    )
    root, kept = tmp_path / "runs", tmp_path / "kept"
    (root / "r-t").mkdir(parents=True)
    (root / "r-t" / "results.json").write_text("{}")
    (root / "r-a").mkdir()  # started, not finished
    (kept / "r-v").mkdir(parents=True)
    (kept / "r-v" / "results.json").write_text("{}")
    assert [r.name for r in run_grid.pending(runs, root, kept)] == ["r-a"]


def three_runs_of(monkeypatch: pytest.MonkeyPatch, script: str) -> list:
    """Runs r-t, r-a, r-v whose command is ``python -c script RUN_FOLDER`` (a stand-in for merc train)."""
    monkeypatch.setattr(
        run_grid.GridRun, "command", lambda self, root: [sys.executable, "-c", script, str(root / self.name)]
    )
    monkeypatch.setattr(run_grid.time, "sleep", lambda _: None)
    return run_grid.expand(
        {"groups": [{"name": "r-{modalities}", "model": "m", "dataset": "d", "modalities": ["t", "a", "v"]}]}
    )


def test_run_all_runs_each_command_at_most_jobs_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for merc train: writes the run folder's results.json, fails for "a".
    runs = three_runs_of(
        monkeypatch,
        "import json, pathlib, sys; out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True);"
        "sys.exit(3) if out.name == 'r-a' else (out / 'results.json').write_text(json.dumps({}))",
    )
    done = dict((run.name, code) for run, code in run_grid.run_all(runs, tmp_path, jobs=2, keep=False))
    assert done == {"r-t": 0, "r-a": 3, "r-v": 0}
    assert json.loads((tmp_path / "r-v" / "results.json").read_text()) == {}


def test_run_all_skips_runs_another_worker_finished_or_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from merc.training.run_folder import RunLock

    runs = three_runs_of(
        monkeypatch,
        "import pathlib, sys; out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True);"
        "(out / 'results.json').write_text('{}')",
    )
    (tmp_path / "r-t").mkdir()
    (tmp_path / "r-t" / "results.json").write_text("{}")  # finished by another worker after the list was made
    (tmp_path / "r-a").mkdir()
    with RunLock(tmp_path / "r-a"):  # being run by another worker
        assert RunLock.held(tmp_path / "r-a")
        done = [run.name for run, _ in run_grid.run_all(runs, tmp_path, jobs=1, keep=False)]
    assert done == ["r-v"]
    printed = capsys.readouterr().out
    assert "skipped (finished meanwhile): r-t" in printed and "skipped (running in another process): r-a" in printed
    assert not RunLock.held(tmp_path / "r-a") and not RunLock.held(tmp_path / "r-v")
    (tmp_path / "r-a" / "merc.lock").write_text('{"pid": 1}')  # a stale lock file: nobody holds it
    assert not RunLock.held(tmp_path / "r-a")


def test_every_grid_in_bench_expands() -> None:
    specs = sorted((BENCH / "grids").glob("*.yaml"))
    assert specs
    for path in specs:
        assert run_grid.expand(yaml.safe_load(path.read_text(encoding="utf-8")))

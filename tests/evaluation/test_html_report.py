"""``merc report``: the self-contained HTML page of finished runs.

A tiny run (synthetic data, 2 seeds, 3 epochs) is trained once; the page is parsed with
``html.parser`` and checked against the run's JSON files, and opened in headless Chromium
(Debian's ``chromium``; skipped with the install command where it is absent).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from merc.cli import main
from merc.evaluation.aggregate import format_mean_std
from merc.evaluation.html_report import load_run, render_report, summed_confusion, write_report
from merc.evaluation.robustness import write_robustness_report

#: The figures every run gets: per-class F1, confusion, validation curves, the train loss terms.
RUN_FIGURES = ["per_class_f1", "confusion", "validation", "train_loss_terms", "imbalance"]


class Page(HTMLParser):
    """Tables (cell texts per row), figures (``data-kind``), images (``src``) and tags of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.figures: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "table":
            self._table = a.get("class") or ""
            self.tables.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "figure":
            self.figures.append(a.get("data-kind") or "")
        elif tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def decode_png(src: str | None) -> Image.Image:
    assert src is not None and src.startswith("data:image/png;base64,"), (src or "")[:60]
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
    image.load()
    return image


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    argv = ["train", "--model", "bclstm", "--dataset", "synthetic", "--seeds", "0,1", "--out", str(out), "--quiet"]
    assert main([*argv, "training.epochs=3"]) == 0
    return out


def _robustness(folder: Path) -> None:
    """A robustness.json as `merc robustness` writes it (by its own writer), two rates and one drop."""

    def cond(kind: str, value: float | str, mean: float) -> dict[str, Any]:
        name = f"rate={float(value):.2f}" if kind == "rate" else f"drop={value}"
        metrics = {"weighted_f1": {"mean": mean, "std": 1.0, "per_seed": [mean - 1, mean + 1]}}
        return {"name": name, "kind": kind, "value": value, "metrics": metrics, "runs": []}

    report = {
        "protocol": "train-complete",
        "model": "bclstm",
        "source": str(folder),
        "dataset": "synthetic",
        "modalities": "tav",
        "imputation": "none",
        "train_seeds": [0, 1],
        "mask_seeds": [0],
        "skipped": [],
        "conditions": [cond("rate", 0.0, 50.0), cond("rate", 0.3, 41.5), cond("drop", "a", 44.0)],
    }
    write_robustness_report([report], folder)


def test_page_holds_the_runs_numbers_and_one_figure_per_plot(run_dir: Path) -> None:
    text = render_report([run_dir])
    page = Page(text)
    results = json.loads((run_dir / "results.json").read_text())

    (row,) = page.tables["results"][1:]
    assert row[:4] == [run_dir.name, "bclstm", "synthetic", "t"]
    assert format_mean_std(results["test"]["weighted_f1"]) in row
    assert format_mean_std(results["test"]["accuracy"]) in row
    assert format_mean_std(results["valid"]["weighted_f1"]) in row
    assert row[-1] == "0,1"

    # Per-class F1 table: each seed's numbers from its metrics.json.
    per_class = {r[0]: r[1:] for r in page.tables["per-class"][1:]}
    for k, seed in enumerate((0, 1)):
        metrics = json.loads((run_dir / f"seed_{seed}" / "metrics.json").read_text())
        for name, f1 in metrics["test"]["per_class_f1"].items():
            assert per_class[name][1 + k] == f"{f1:.2f}"

    assert page.figures == RUN_FIGURES
    assert len(page.images) == len(RUN_FIGURES)
    for img in page.images:
        assert img.get("alt")
        image = decode_png(img["src"])
        assert image.width >= 900, "figures are drawn about the page's width, readable without zooming"
        assert np.asarray(image.convert("L")).std() > 5, "a blank figure"
    assert not re.search(r"https?://", text, re.IGNORECASE), "the page must not reference the network"
    assert "script" not in page.tags and "link" not in page.tags


def test_imbalance_section_shows_the_heads_and_the_alone_comparison(run_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    results = json.loads((folder / "results.json").read_text())
    heads = results["unimodal"]["test"]
    page = Page(render_report([folder]))
    (row,) = page.tables["unimodal"][1:]
    assert row[0] == "t" and row[1] == format_mean_std(heads["t"]["weighted_f1"])
    assert "alone" not in page.tables
    comparison = {
        "rows": {
            "t": {
                "joint": {"weighted_f1": heads["t"]["weighted_f1"]},
                "alone": {"weighted_f1": {"mean": 50.0, "std": 1.0, "per_seed": [49.0, 51.0]}},
                "gap_weighted_f1": {"mean": 3.25, "per_seed": [3.0, 3.5]},
            }
        }
    }
    (folder / "unimodal_vs_alone.json").write_text(json.dumps(comparison))
    page = Page(render_report([folder]))
    assert page.tables["alone"][1] == ["t", format_mean_std(heads["t"]["weighted_f1"]), "50.00 ± 1.00", "+3.25"]


def test_confusion_is_the_sum_of_the_seeds_test_matrices(run_dir: Path) -> None:
    run = load_run(run_dir)
    expected = sum(
        np.asarray(json.loads((run_dir / f"seed_{s}" / "metrics.json").read_text())["test"]["confusion"])
        for s in (0, 1)
    )
    np.testing.assert_array_equal(summed_confusion(run), expected)
    assert (
        summed_confusion(run).sum()
        == 2 * json.loads((run_dir / "seed_0" / "metrics.json").read_text())["test"]["num_utterances"]
    )


def test_robustness_curves_in_the_run_folder_and_on_their_own(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    _robustness(run)
    page = Page(render_report([run]))
    assert page.figures == [*RUN_FIGURES, "robustness"]
    rows = page.tables["robustness"][1:]
    assert rows == [["rate=0.00", "50.00 ± 1.00"], ["rate=0.30", "41.50 ± 1.00"], ["drop=a", "44.00 ± 1.00"]]
    decode_png(page.images[-1]["src"])

    sweep = tmp_path / "sweep"
    _robustness(sweep)
    page = Page(render_report([run_dir, sweep]))
    assert page.figures == [*RUN_FIGURES, "robustness"]
    assert len(page.tables["results"]) == 2


def test_other_recorded_curves_are_drawn(run_dir: Path, tmp_path: Path) -> None:
    """Per-modality scores (a mapping per epoch) and scalar extras in history.json get figures of their own."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for seed in (0, 1):
        path = run / f"seed_{seed}" / "history.json"
        history = json.loads(path.read_text())
        for h in history:
            h["valid_unimodal_weighted_f1"] = {"t": 40.0 + h["epoch"], "a": 30.0}
            h["modality_ratio"] = 1.0 + 0.1 * h["epoch"]
        path.write_text(json.dumps(history))
    page = Page(render_report([run]))
    assert page.figures == [*RUN_FIGURES[:-1], "valid_unimodal_weighted_f1", "other", "imbalance"]
    for img in page.images:
        decode_png(img["src"])


def test_cli_writes_the_page_atomically(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "report.html"
    assert main(["report", str(run_dir), "--out", str(out), "--title", "my runs"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert "<title>my runs</title>" in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda f: (f / "results.json").write_text("{"), "results.json is not valid JSON"),
        (lambda f: (f / "seed_1" / "history.json").write_text('{"a": 1}'), "is not a list of per-epoch records"),
        (lambda f: (f / "seed_1" / "metrics.json").write_text('{"best_epoch": 0, "test": {}}'), "not what"),
        (lambda f: shutil.rmtree(f / "seed_1"), "has not finished"),
    ],
)
def test_bad_run_is_one_line_and_writes_nothing(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any, fragment: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    mutate(run)
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("merc: error: ") and len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "out").exists()


# -- headless Chromium ----------------------------------------------------------------------------

#: Appended to a copy of the page (the page itself has no JavaScript): after load, every image must
#: be decoded and laid out with a non-zero size; the verdict goes into the DOM that --dump-dom prints.
_PROBE = """<script>
window.addEventListener("load", () => {
  const bad = [];
  const imgs = Array.from(document.images);
  for (const img of imgs) {
    const r = img.getBoundingClientRect();
    const style = getComputedStyle(img);
    if (!img.complete || img.naturalWidth === 0 || r.width < 300 || r.height < 100 ||
        style.visibility === "hidden" || style.display === "none") bad.push(img.alt);
  }
  document.body.setAttribute("data-probe", bad.length ? "bad:" + bad.join("|") : "ok:" + imgs.length);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Debian's chromium is not installed: apt-get install chromium")


def _open(browser: str, page: Path, tmp_path: Path) -> tuple[str, str]:
    """``(dom, stderr)`` of ``page`` loaded in headless Chromium."""
    argv = [
        browser,
        "--headless=new",
        "--no-sandbox",  # as root (CI containers) Chromium refuses to start with its sandbox
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1200,900",
        "--virtual-time-budget=10000",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        page.as_uri(),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def _console_errors(stderr: str) -> list[str]:
    # Console messages are logged as 'CONSOLE(line)] "message"' / 'Uncaught ...'; Chromium's own
    # complaints about the container (no D-Bus, no GPU) are not the page's.
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_page_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    browser = _chromium()
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    _robustness(run)
    page = write_report([run], tmp_path / "report.html")
    expected = len(Page(page.read_text()).images)
    assert expected == len(RUN_FIGURES) + 1

    dom, stderr = _open(browser, page, tmp_path)
    assert _console_errors(stderr) == [], stderr[-2000:]
    assert Page(dom).figures == [*RUN_FIGURES, "robustness"]

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom, stderr = _open(browser, probed, tmp_path)
    assert _console_errors(stderr) == [], stderr[-2000:]
    verdict = re.search(r'data-probe="([^"]*)"', dom)
    assert verdict is not None, "the probe did not run: " + dom[:500]
    assert verdict.group(1) == f"ok:{expected}", verdict.group(1)

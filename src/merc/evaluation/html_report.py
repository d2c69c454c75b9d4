"""One self-contained HTML page for a set of finished runs (``merc report RUN... --out report.html``).

The page holds the results table (mean ± std over seeds) and, per run, the test split's
per-class F1 and confusion matrix of the selected weights, the validation curves of every
seed with the selected epoch marked, the training loss and its named terms per epoch, any
other per-epoch values the history records (e.g. per-modality scores or modality ratios),
and the robustness curves and per-modality drops of a ``robustness.json`` in the run
folder. A folder passed that holds only a ``robustness.json`` (``merc robustness --out``)
adds its curves on their own.

A leave-one-session-out run (``merc train --protocol loso``) is read with every (fold,
seed) run of its ``fold_K/seed_S`` folders: the table row says ``loso`` and shows the mean
± std pooled over folds x seeds, the run's section adds a per-fold table, and its figures
draw one curve per (fold, seed). ``merc report RUN/fold_K`` reports one fold alone.

Only JSON is read (``results.json``, ``fingerprint.json``, ``seed_K/metrics.json``,
``seed_K/history.json``, ``robustness.json``): nothing is unpickled, no weights are loaded,
and nothing here imports :mod:`merc.training` (tests/test_import_direction.py). Figures are
matplotlib PNGs embedded as base64 ``data:`` URIs and the style sheet is inline, so the
page needs no network and no other file; it has no JavaScript.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import html
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from merc.errors import ConfigError, DataError
from merc.evaluation.aggregate import aggregate_seeds, format_mean_std
from merc.evaluation.imbalance import ALONE_REPORT_STEM, imbalance_png
from merc.evaluation.report import METRIC_TITLES
from merc.evaluation.robustness import REPORT_FILES, load_robustness_reports, plot_robustness

#: Per-epoch history keys drawn by the validation / loss figures (the rest are "other values").
_KNOWN_HISTORY_KEYS = frozenset(
    {"epoch", "train_loss", "valid_loss", "train_loss_terms", "valid_weighted_f1", "valid_accuracy", "lr", "seconds"}
)
#: Figure width in inches at :data:`_DPI`: about 1000 pixels, the page's width, so text is read unzoomed.
_WIDTH = 10.0
_DPI = 100
_STYLE: dict[Any, Any] = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1060px; padding: 1.2em; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td.text, th.text { text-align: left; }
figure { margin: 1em 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #444; margin-top: 0.3em; }
.meta { color: #555; font-size: 0.92em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


@dataclass
class SeedRun:
    """One seed of a run: its ``metrics.json`` and ``history.json``.

    ``fold``: the held-out session of a leave-one-session-out run's seed (``None`` otherwise).
    """

    seed: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    fold: int | None = None

    @property
    def name(self) -> str:
        """How figures and tables name it: ``seed 0``, or ``fold 2 seed 0``."""
        return f"seed {self.seed}" if self.fold is None else f"fold {self.fold} seed {self.seed}"


@dataclass
class RunRecord:
    """A finished run folder as the report reads it."""

    path: Path
    results: dict[str, Any]
    seeds: list[SeedRun]
    selection_metric: str = "weighted_f1"
    robustness: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_loso(self) -> bool:
        """Whether this is a ``--protocol loso`` run (its scores pooled over folds x seeds)."""
        return is_loso_results(self.results)

    @property
    def title(self) -> str:
        r = self.results
        return f"{r.get('model')} on {r.get('dataset')} [{r.get('modalities')}] ({self.path.name})"


def is_loso_results(results: Mapping[str, Any]) -> bool:
    """Whether a ``results.json`` is that of a leave-one-session-out run."""
    protocol = results.get("protocol")
    return isinstance(protocol, Mapping) and protocol.get("name") == "loso"


def _loso_runs(results: Mapping[str, Any], path: Path) -> list[tuple[int, int]]:
    runs = results.get("runs")
    if not isinstance(runs, list) or not runs:
        raise DataError(f"{path}: a leave-one-session-out results.json needs its list of runs (fold, seed)")
    pairs = []
    for r in runs:
        if not (isinstance(r, dict) and isinstance(r.get("fold"), int) and isinstance(r.get("seed"), int)):
            raise DataError(f"{path}: runs must be a list of {{fold, seed}} integers, not {r!r}")
        pairs.append((int(r["fold"]), int(r["seed"])))
    return pairs


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a :class:`DataError` naming the file if it is missing, not UTF-8 or not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} is missing") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None


def _mapping(value: Any, path: Path, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or any(k not in value for k in keys):
        raise DataError(f"{path} is not what `merc train` writes (expected a mapping with {', '.join(keys)})")
    return value


def load_run(folder: str | Path) -> RunRecord:
    """Read a finished run folder (the ``--out`` of ``merc train``), JSON files only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass the --out of `merc train`")
    results_path = folder / "results.json"
    if not results_path.is_file():
        what = "has not finished (no results.json)" if (folder / "config.yaml").is_file() else "is not a merc run"
        raise DataError(f"{folder} {what}; pass the --out of a finished `merc train`")
    results = _mapping(read_json(results_path), results_path, ("model", "dataset", "modalities", "seeds", "test"))
    if not isinstance(results["seeds"], list) or not all(isinstance(s, int) for s in results["seeds"]):
        raise DataError(f"{results_path}: seeds must be a list of integers")
    selection = "weighted_f1"
    if (folder / "fingerprint.json").is_file():
        training = (read_json(folder / "fingerprint.json").get("config") or {}).get("training") or {}
        selection = str(training.get("selection_metric", selection))
    seeds = []
    where: list[tuple[int | None, int, Path]] = [(None, seed, folder / f"seed_{seed}") for seed in results["seeds"]]
    if is_loso_results(results):
        where = [(k, seed, folder / f"fold_{k}" / f"seed_{seed}") for k, seed in _loso_runs(results, results_path)]
    for fold, seed, seed_dir in where:
        if not (seed_dir / "metrics.json").is_file():
            raise DataError(f"{seed_dir} has not finished (no metrics.json); rerun its `merc train` to finish it")
        metrics = _mapping(read_json(seed_dir / "metrics.json"), seed_dir / "metrics.json", ("best_epoch", "test"))
        history = read_json(seed_dir / "history.json")
        if not isinstance(history, list) or not all(isinstance(h, dict) and "epoch" in h for h in history):
            raise DataError(f"{seed_dir / 'history.json'} is not a list of per-epoch records")
        seeds.append(SeedRun(seed, metrics, history, fold))
    robustness = folder / REPORT_FILES["json"]
    reports = load_robustness_reports(robustness) if robustness.is_file() else []
    return RunRecord(folder, results, seeds, selection, reports)


def _is_robustness_only(path: Path) -> bool:
    if path.is_file():
        return path.name == REPORT_FILES["json"]
    return path.is_dir() and not (path / "results.json").exists() and (path / REPORT_FILES["json"]).is_file()


# -- figures ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _figure(height: float, ncols: int = 1) -> Iterator[tuple[Any, list[Any]]]:
    """An Agg figure (no pyplot state) ``_WIDTH`` wide, with ``ncols`` axes, in the report's style."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(_WIDTH, height))
        FigureCanvasAgg(fig)
        yield fig, [fig.add_subplot(1, ncols, k + 1) for k in range(ncols)]


def _png(fig: Any) -> bytes:
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(_STYLE):
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _img(png: bytes, alt: str, caption: str, kind: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="plot" data-kind="{html.escape(kind)}"><img alt="{html.escape(alt)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'
    )


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(k % 10) for k in range(n)]


def per_class_f1_figure(run: RunRecord) -> bytes:
    """Bar chart: test F1 per class, mean over seeds with the seeds' std as error bars."""
    names = list(run.seeds[0].metrics["test"]["per_class_f1"])
    values = np.array([[float(s.metrics["test"]["per_class_f1"][n]) for n in names] for s in run.seeds])
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(len(names))
    with _figure(4.2) as (fig, (ax,)):
        x = np.arange(len(names))
        ax.bar(x, values.mean(axis=0), yerr=std, capsize=4, color="#4c72b0")
        for k, (v, d) in enumerate(zip(values.mean(axis=0), std)):
            ax.annotate(f"{v:.1f}", (k, v + d), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=10)
        ax.set_xticks(x, names, rotation=20 if len(names) > 6 else 0)
        ax.set_ylabel("test F1 (%)")
        ax.set_ylim(0, 105)
        ax.set_title("per-class F1 on test (selected weights)")
        ax.grid(alpha=0.3, axis="y")
        return _png(fig)


def summed_confusion(run: RunRecord) -> np.ndarray:
    """The test confusion matrices of the seeds' selected weights, summed (rows true, columns predicted)."""
    return np.sum([np.asarray(s.metrics["test"]["confusion"], dtype=np.int64) for s in run.seeds], axis=0)


def confusion_figure(run: RunRecord) -> bytes:
    names = list(run.seeds[0].metrics["test"]["per_class_f1"])
    cm = summed_confusion(run)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    size = max(4.5, min(0.9 * len(names) + 2.5, 9.0))
    with _figure(size) as (fig, (ax,)):
        im = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]}\n{100 * share[i, j]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=10,
                    color="white" if share[i, j] > 0.55 else "black",
                )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"test confusion, summed over {len(run.seeds)} {'runs' if run.is_loso else 'seed(s)'}")
        fig.colorbar(im, ax=ax, label="share of the true class (%)")
        return _png(fig)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(h["epoch"]), float(h[key])) for h in history if isinstance(h.get(key), int | float)]
    return [p[0] for p in pts], [p[1] for p in pts]


def validation_figure(run: RunRecord) -> bytes:
    """Validation selection metric per seed (selected epoch starred) and train / valid loss per seed."""
    from matplotlib.ticker import MaxNLocator

    key = f"valid_{run.selection_metric}"
    if not any(key in h for s in run.seeds for h in s.history):
        key = "valid_weighted_f1"
    title = METRIC_TITLES.get(key.removeprefix("valid_"), key.removeprefix("valid_"))
    with _figure(4.4, ncols=2) as (fig, (ax, lx)):
        for s, color in zip(run.seeds, _colors(len(run.seeds))):
            ep, val = _series(s.history, key)
            ax.plot(ep, val, marker="o", markersize=3, color=color, label=s.name)
            best = int(s.metrics["best_epoch"])
            if best in ep:
                ax.plot([best], [val[ep.index(best)]], marker="*", markersize=16, color=color, markeredgecolor="k")
                ax.axvline(best, color=color, linestyle=":", alpha=0.7)
            for loss, style in (("train_loss", "-"), ("valid_loss", "--")):
                le, lv = _series(s.history, loss)
                lx.plot(le, lv, style, color=color, label=f"{s.name} {loss.split('_')[0]}")
        for a in (ax, lx):
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"valid {title} (%)")
        ax.set_title("validation (★ = selected epoch)")
        ax.grid(alpha=0.3)
        ax.legend()
        lx.set_xlabel("epoch")
        lx.set_ylabel("loss")
        lx.set_title("loss (solid: train, dashed: valid)")
        lx.grid(alpha=0.3)
        lx.legend(ncol=2 if len(run.seeds) > 2 else 1)
        return _png(fig)


def _dict_keys(run: RunRecord) -> list[str]:
    keys: list[str] = []
    for s in run.seeds:
        for h in s.history:
            keys += [k for k, v in h.items() if isinstance(v, dict) and k not in keys]
    return keys


def terms_figure(run: RunRecord, key: str) -> bytes | None:
    """One curve per (term, seed) of a per-epoch mapping such as ``train_loss_terms``; ``None`` if empty."""
    terms: list[str] = []
    for s in run.seeds:
        for h in s.history:
            terms += [t for t, v in (h.get(key) or {}).items() if isinstance(v, int | float) and t not in terms]
    if not terms:
        return None
    from matplotlib.ticker import MaxNLocator

    styles = ["-", "--", ":", "-."]
    with _figure(4.4) as (fig, (ax,)):
        for term, color in zip(terms, _colors(len(terms))):
            for k, s in enumerate(run.seeds):
                pts = [(int(h["epoch"]), float(h[key][term])) for h in s.history if term in (h.get(key) or {})]
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    styles[k % len(styles)],
                    marker="o",
                    markersize=3,
                    color=color,
                    label=f"{term} ({s.name})",
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(ncol=max(1, min(3, len(run.seeds))))
        return _png(fig)


def other_values_figure(run: RunRecord) -> tuple[bytes, list[str]] | None:
    """Scalar per-epoch values beyond the standard ones (e.g. a plug-in's), one curve per seed."""
    keys: list[str] = []
    for s in run.seeds:
        for h in s.history:
            keys += [
                k
                for k, v in h.items()
                if k not in _KNOWN_HISTORY_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
                if k not in keys
            ]
    if not keys:
        return None
    with _figure(3.8, ncols=min(len(keys), 3)) as (fig, axes):
        for ax, key in zip(axes, keys):
            for s, color in zip(run.seeds, _colors(len(run.seeds))):
                ax.plot(*_series(s.history, key), marker="o", markersize=3, color=color, label=s.name)
            ax.set_xlabel("epoch")
            ax.set_title(key.replace("_", " "))
            ax.grid(alpha=0.3)
            ax.legend()
        return _png(fig), keys[: len(axes)]


def robustness_figure(reports: Sequence[Mapping[str, Any]], metric: str) -> bytes:
    """The robustness plot of ``merc robustness`` (metric vs missing rate; per-modality drops)."""
    with tempfile.TemporaryDirectory(prefix="merc-report-") as tmp:
        path = plot_robustness(reports, Path(tmp) / "robustness.png", metric)
        return path.read_bytes()


# -- HTML ------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1, cls: str = "") -> str:
    def cell(tag: str, k: int, value: str) -> str:
        return f'<{tag} class="text">{value}</{tag}>' if k < text_columns else f"<{tag}>{value}</{tag}>"

    head = "".join(cell("th", k, _e(h)) for k, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", k, v) for k, v in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _metric(results: Mapping[str, Any], split: str, key: str) -> str:
    entry = (results.get(split) or {}).get(key)
    return _e(format_mean_std(entry)) if isinstance(entry, dict) and "mean" in entry else "–"


def results_rows(runs: Sequence[RunRecord]) -> list[list[str]]:
    """The results table's rows (HTML-escaped cells), one per run."""
    rows = []
    for run in runs:
        r = run.results
        rows.append(
            [
                _e(run.path.name),
                _e(r["model"]),
                f"<code>{_e(r['dataset'])}</code>",
                _e(r["modalities"]),
                _metric(r, "test", "weighted_f1"),
                _metric(r, "test", "accuracy"),
                _metric(r, "test", "macro_f1"),
                _metric(r, "test", "ua"),
                _metric(r, "valid", "weighted_f1"),
                _seeds_cell(r),
            ]
        )
    return rows


def _seeds_cell(results: Mapping[str, Any]) -> str:
    seeds = _e(",".join(str(s) for s in results["seeds"]))
    if not is_loso_results(results):
        return seeds
    folds = (results.get("protocol") or {}).get("folds") or []
    return f"{seeds} × {len(folds)} folds (loso)"


def loso_section(run: RunRecord) -> list[str]:
    """Per-fold test scores of a leave-one-session-out run (mean ± std over its seeds)."""
    folds = run.results.get("folds") or []
    rows = []
    for fold in folds:
        test = fold.get("test") or {}
        dialogues = fold.get("dialogues") or {}
        rows.append(
            [
                _e(fold.get("fold")),
                _e(fold.get("held_out_session")),
                _e("/".join(str(dialogues.get(k, "?")) for k in ("train", "valid", "test"))),
                *(_e(format_mean_std(test[k])) if k in test else "–" for k in ("weighted_f1", "accuracy", "ua")),
            ]
        )
    protocol = run.results.get("protocol") or {}
    return [
        "<h3>Leave-one-session-out folds</h3>",
        f"<p class='meta'>Fold k tests on session k; validation = {_e(protocol.get('valid_share'))} of each "
        "training session's dialogues (a fixed draw, the same for every seed). Per fold: mean ± std over seeds. "
        f"The results table pools the {len(run.seeds)} (fold, seed) runs ({_e(protocol.get('std_over'))}).</p>",
        _table(
            ["fold", "held-out session", "dialogues train/valid/test", "test w-F1 (%)", "test WA (%)", "test UA (%)"],
            rows,
            text_columns=0,
            cls="loso-folds",
        ),
    ]


RESULTS_HEADER = (
    "run",
    "model",
    "dataset",
    "modalities",
    "test weighted F1",
    "test accuracy",
    "test macro F1",
    "test UA",
    "valid weighted F1",
    "seeds",
)


def robustness_section(reports: Sequence[Mapping[str, Any]], metric: str, where: Path) -> str:
    title = METRIC_TITLES.get(metric, metric)
    parts = [
        _img(
            robustness_figure(reports, metric),
            f"robustness of {where.name}: {title} vs missing rate",
            f"Test {_e(title)} (%) against the overall missing rate (left) and with modalities removed from every "
            f"utterance (right, when swept); error bars: std over training seeds x mask seeds. From "
            f"<code>{_e(where)}</code>.",
            "robustness",
        )
    ]
    for rep in reports:
        rows = []
        for c in rep.get("conditions", []):
            m = (c.get("metrics") or {}).get(metric)
            rows.append([_e(c["name"]), _e(format_mean_std(m)) if m else "–"])
        parts.append(
            f"<p class='meta'>{_e(rep.get('label') or rep.get('model'))}: {_e(rep.get('protocol'))} protocol, "
            f"imputation {_e(rep.get('imputation'))}, training seeds {_e(rep.get('train_seeds'))}, "
            f"mask seeds {_e(rep.get('mask_seeds'))}</p>"
        )
        parts.append(_table(["condition", f"test {title} (%)"], rows, cls="robustness"))
    return "\n".join(parts)


def imbalance_section(run: RunRecord) -> list[str]:
    """Unimodal curves, the heads' test scores and ``merc imbalance``'s comparison, when recorded."""
    if run.is_loso:
        # Its figure is keyed by seed, and every fold has the same seeds: see each fold's own report.
        return []
    png = imbalance_png({s.seed: s.history for s in run.seeds}, dpi=_DPI)
    if png is None:
        return []
    parts = [
        "<h3>Modality imbalance</h3>",
        _img(
            png,
            f"unimodal scores of {run.path.name}",
            "Each modality's own weighted F1 from its unimodal logits per epoch (training batches, validation), "
            "its modality ratio (true-class score over the weakest modality's), and what plug-ins recorded; "
            "one line per seed and modality.",
            "imbalance",
        ),
    ]
    heads = (run.results.get("unimodal") or {}).get("test") or {}
    if heads:
        parts.append(
            _table(
                ["modality", "head's test w-F1 (%)", "accuracy (%)", "ratio"],
                [
                    [
                        _e(m),
                        _e(format_mean_std(v["weighted_f1"])),
                        _e(format_mean_std(v["accuracy"])),
                        _e(format_mean_std(v["ratio"])) if "ratio" in v else "",
                    ]
                    for m, v in heads.items()
                ],
                cls="unimodal",
            )
        )
    alone = run.path / f"{ALONE_REPORT_STEM}.json"
    if alone.is_file():
        report = read_json(alone)
        rows = []
        for m, row in (report.get("rows") or {}).items():
            gap = (row.get("gap_weighted_f1") or {}).get("mean")
            rows.append(
                [
                    _e(m),
                    _e(format_mean_std(row["joint"]["weighted_f1"])) if "weighted_f1" in row.get("joint", {}) else "",
                    _e(format_mean_std(row["alone"]["weighted_f1"])),
                    "" if gap is None else f"{gap:+.2f}",
                ]
            )
        parts.append("<p class='meta'>Each modality trained alone (<code>merc imbalance</code>), test w-F1:</p>")
        parts.append(_table(["modality", "joint model's head", "alone", "gap"], rows, cls="alone"))
    return parts


def run_section(run: RunRecord, index: int) -> str:
    """One run's figures and tables."""
    n = len(run.seeds)
    names = list(run.seeds[0].metrics["test"]["per_class_f1"])
    per_class = aggregate_seeds([s.metrics["test"]["per_class_f1"] for s in run.seeds], keys=names)
    parts = [f'<section class="run" id="run-{index}"><h2>{_e(run.title)}</h2>']
    runs_word = "(fold, seed) run(s)" if run.is_loso else "seed(s)"
    parts.append(f"<p class='meta'>folder <code>{_e(run.path)}</code>; seeds {_e(run.results['seeds'])}; ")
    parts.append(
        "epochs run / selected epoch per seed: "
        + ", ".join(
            f"{_e(s.name.removeprefix('seed '))}: {_e(s.metrics.get('epochs_run', len(s.history)))} / "
            f"{_e(s.metrics['best_epoch'])}"
            for s in run.seeds
        )
        + f"; model selected on valid {_e(METRIC_TITLES.get(run.selection_metric, run.selection_metric))}.</p>"
    )
    if run.is_loso:
        parts += loso_section(run)
    parts.append("<h3>Per-class F1 (test)</h3>")
    parts.append(
        _img(
            per_class_f1_figure(run),
            f"per-class F1 of {run.path.name}",
            f"Test F1 per class of each seed's selected weights: mean over {n} {runs_word}, error bars = std.",
            "per_class_f1",
        )
    )
    parts.append(
        _table(
            ["class", "test F1 (%)", *(s.name for s in run.seeds)],
            [
                [_e(c), _e(format_mean_std(per_class[c])), *(f"{float(v):.2f}" for v in per_class[c]["per_seed"])]
                for c in names
            ],
            cls="per-class",
        )
    )
    parts.append("<h3>Confusion matrix (test)</h3>")
    parts.append(
        _img(
            confusion_figure(run),
            f"confusion matrix of {run.path.name}",
            f"Test confusion of each seed's selected weights, <b>summed</b> over the {n} {runs_word}: counts, and the "
            "share of the true class (row %) as colour. Rows: true class; columns: predicted.",
            "confusion",
        )
    )
    parts.append("<h3>Training curves</h3>")
    parts.append(
        _img(
            validation_figure(run),
            f"validation curves of {run.path.name}",
            "Left: the validation selection metric per epoch, one curve per seed; ★ and the dotted line mark the "
            "epoch whose weights were selected (and scored once on test). Right: training and validation loss.",
            "validation",
        )
    )
    for key in _dict_keys(run):
        png = terms_figure(run, key)
        if png is not None:
            caption = (
                "The training loss's named terms per epoch (mean over the epoch's batches), one line style per seed."
                if key == "train_loss_terms"
                else f"Per-epoch values recorded under <code>{_e(key)}</code>, one line style per seed."
            )
            parts.append(_img(png, f"{key} of {run.path.name}", caption, key))
    other = other_values_figure(run)
    if other is not None:
        png, keys = other
        parts.append(
            _img(
                png,
                f"other per-epoch values of {run.path.name}",
                "Other recorded per-epoch values: " + ", ".join(f"<code>{_e(k)}</code>" for k in keys) + ".",
                "other",
            )
        )
    parts += imbalance_section(run)
    if run.robustness:
        parts.append("<h3>Robustness to missing modalities</h3>")
        parts.append(robustness_section(run.robustness, _robustness_metric(run.path / REPORT_FILES["json"]), run.path))
    parts.append("</section>")
    return "\n".join(parts)


def _robustness_metric(path: Path) -> str:
    data = read_json(path)
    metric = data.get("metric", "weighted_f1") if isinstance(data, dict) else "weighted_f1"
    return metric if metric in METRIC_TITLES else "weighted_f1"


def render_report(paths: Sequence[str | Path], title: str | None = None) -> str:
    """The HTML page for ``paths`` (run folders, or folders / files holding only a ``robustness.json``).

    Raises:
        DataError: a path that is not a folder, not a finished run, or holds corrupt or foreign JSON.
    """
    if not paths:
        raise ConfigError("give at least one run folder")
    runs: list[RunRecord] = []
    extra: list[tuple[Path, list[dict[str, Any]]]] = []
    for p in map(Path, paths):
        if _is_robustness_only(p):
            extra.append((p, load_robustness_reports(p)))
        else:
            runs.append(load_run(p))
    sections = []
    for k, run in enumerate(runs):
        try:
            sections.append(run_section(run, k))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(
                f"{run.path}: a results / metrics / history file is not what `merc train` writes ({exc!r})"
            ) from None
    for p, reports in extra:
        json_path = p if p.is_file() else p / REPORT_FILES["json"]
        try:
            body = robustness_section(reports, _robustness_metric(json_path), p)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{json_path} is not what `merc robustness` writes ({exc!r})") from None
        sections.append(f'<section class="robustness"><h2>Robustness: {_e(p)}</h2>{body}</section>')
    if title is None:
        title = "merc report: " + ", ".join(r.title for r in runs) if runs else "merc robustness report"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    results = ""
    if runs:
        results = (
            "<h2>Results</h2><p class='meta'>Test split scored once with the weights selected on validation; "
            "mean ± std (sample std) over seeds, in percent"
            + (
                "; a loso row (leave-one-session-out) pools every (fold, seed) run: mean ± std over folds x seeds"
                if any(r.is_loso for r in runs)
                else ""
            )
            + ".</p>"
            + _table(RESULTS_HEADER, results_rows(runs), text_columns=4, cls="results")
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class='meta'>written by <code>merc report</code> on {stamp}</p>"
        + results
        + "\n".join(sections)
        + "</body></html>\n"
    )


def write_report(paths: Sequence[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Render :func:`render_report` and write it to ``out`` atomically (a temporary file, then a rename).

    Everything is read and drawn before anything is written, so a bad input leaves no file.
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the page's file name, e.g. {out / 'report.html'}")
    page = render_report(paths, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

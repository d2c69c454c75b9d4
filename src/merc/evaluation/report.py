"""Human-readable result tables (rich) for runs and dataset summaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from merc.evaluation.aggregate import format_mean_std
from merc.evaluation.metrics import HEADLINE_METRICS

METRIC_TITLES = {"weighted_f1": "weighted F1", "accuracy": "accuracy (WA)", "macro_f1": "macro F1", "ua": "UA"}


def results_table(results: Mapping[str, Any], title: str | None = None) -> Table:
    """Metrics x {valid, test} as ``mean ± std`` over seeds."""
    seeds = results.get("seeds", [])
    table = Table(
        title=title
        or escape(
            f"{results.get('model')} on {results.get('dataset')} "
            f"[{results.get('modalities')}] — {len(seeds)} seed(s), selected on valid"
        )
    )
    table.add_column("metric (%)")
    table.add_column("valid", justify="right")
    table.add_column("test", justify="right")
    for key in HEADLINE_METRICS:
        if key in results.get("test", {}):
            table.add_row(
                METRIC_TITLES[key], format_mean_std(results["valid"][key]), format_mean_std(results["test"][key])
            )
    return table


def print_results(results: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(results))
    timing = results.get("timing")
    if timing and timing.get("epoch_seconds_median") is not None:
        earlier = timing.get("total_seconds", 0.0) - timing.get("this_run_seconds", timing.get("total_seconds", 0.0))
        console.print(
            f"time: {timing['total_seconds']:.1f} s total"
            + (f" ({earlier:.1f} s of it in earlier runs)" if earlier > 0.05 else "")
            + f", {timing['epoch_seconds_median']:.2f} s per epoch (median)"
        )
    if timing and timing.get("reused_seeds"):
        console.print(
            f"reused finished seed(s) {', '.join(str(s) for s in timing['reused_seeds'])} from the run folder "
            "(not trained again)"
        )
    if timing and timing.get("resumed_seeds"):
        console.print(
            f"resumed seed(s) {', '.join(str(s) for s in timing['resumed_seeds'])} from their last checkpoint"
        )


def datasets_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="merc datasets")
    for col in ("dataset", "modalities", "classes", "train dlg/utt", "valid dlg/utt", "test dlg/utt"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], r.get("modalities", ""), "-", r["error"], "", "")
            continue
        s = r["splits"]
        table.add_row(
            r["name"],
            r["modalities"],
            str(len(r["label_names"])),
            *(f"{s[k]['dialogues']}/{s[k]['utterances']}" for k in ("train", "valid", "test")),
        )
    return table


def dataset_detail_table(detail: Mapping[str, Any]) -> Table:
    """One dataset's splits: dialogues, utterances and labelled utterances per class."""
    where = f" ({detail['path']})" if detail.get("path") else ""
    table = Table(title=escape(f"{detail['name']}{where}: {len(detail['label_names'])} classes"))
    table.add_column("split")
    table.add_column("dialogues", justify="right")
    table.add_column("utterances", justify="right")
    for name in detail["label_names"]:
        table.add_column(escape(name), justify="right")
    for split, info in detail["splits"].items():
        table.add_row(
            split,
            str(info["dialogues"]),
            str(info["utterances"]),
            *(str(info["classes"].get(name, 0)) for name in detail["label_names"]),
        )
    return table

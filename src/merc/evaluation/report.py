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
        console.print(
            f"time: {timing['total_seconds']:.1f} s total, {timing['epoch_seconds_median']:.2f} s per epoch (median)"
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

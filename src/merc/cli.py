"""The ``merc`` command.

``merc train``, ``merc evaluate``, ``merc datasets``, ``merc models``, ``merc extract``,
``merc export`` and ``merc demo``. Errors caused by input (a missing data root, an
unknown name, malformed data) are printed as one line without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from merc.errors import MercError


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding iemocap/ and meld/ (default: $MERC_DATA_ROOT or ../shared/data)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="merc", description="Multimodal emotion recognition in conversation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate a model over several seeds")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--modalities", default="t", help="letters of t (text), a (audio), v (visual), e.g. tav")
    p.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated, e.g. 0,1,2")
    p.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    p.add_argument("--config", default=None, help="recipe YAML instead of configs/<model>/<dataset>.yaml")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1 ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_plugin_switches(p)
    _add_data_root(p)
    p.add_argument("overrides", nargs="*", help="recipe overrides section.key=value, e.g. training.lr=3e-4")

    p = sub.add_parser("evaluate", help="re-score a finished run's selected weights")
    p.add_argument("run_dir")
    p.add_argument("--device", default="cpu")
    _add_data_root(p)

    p = sub.add_parser("datasets", help="list datasets with dialogues, utterances and classes per split")
    p.add_argument("--json", action="store_true")
    _add_data_root(p)

    sub.add_parser("models", help="list registered models")

    p = sub.add_parser("extract", help="compute and cache text features of a dataset")
    p.add_argument("--dataset", required=True)
    p.add_argument("--encoder", default=None, help="sentence encoder (default all-MiniLM-L6-v2, offline)")
    _add_data_root(p)

    p = sub.add_parser("export", help="write a dataset in merc's own format (jsonl + safetensors)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--modalities", default=None)
    p.add_argument("--out", required=True)
    _add_data_root(p)

    from merc.training.robustness_sweep import add_robustness_arguments

    add_robustness_arguments(
        sub.add_parser("robustness", help="metric vs missing-modality rate (and per-modality drops), table + plot")
    )

    p = sub.add_parser("demo", help="the main job: bc-LSTM on synthetic data, all modalities, 3 seeds")
    p.add_argument("--out", default="runs/demo")
    return parser


def add_plugin_switches(parser: argparse.ArgumentParser) -> None:
    """The training plug-ins' switches, from the plug-in registry (a new plug-in adds its own)."""
    from merc.training.plugins.registry import plugin_groups, plugin_specs

    group = parser.add_argument_group("training plug-ins (each also a recipe section, see `merc train --help`)")
    for name, members in plugin_groups().items():
        group.add_argument(
            f"--{name}",
            default=None,
            choices=[m.section for m in members],
            help="; ".join(f"{m.section}: {m.help}" for m in members),
        )
    for spec in plugin_specs():
        if spec.switch:
            group.add_argument(f"--{spec.switch}", default=None, choices=list(spec.choices) or None, help=spec.help)
        for opt in spec.options:
            group.add_argument(f"--{opt.flag}", type=opt.type, default=None, help=opt.help)


def plugin_overrides(args: argparse.Namespace) -> list[str]:
    """The plug-in switches given on the command line as recipe overrides."""
    from merc.training.plugins.registry import plugin_groups, plugin_specs, switch_overrides

    flags = list(plugin_groups()) + [f for s in plugin_specs() for f in [s.switch, *(o.flag for o in s.options)] if f]
    return switch_overrides({f: getattr(args, f.replace("-", "_"), None) for f in flags})


def cmd_train(args: argparse.Namespace) -> int:
    from merc.evaluation.report import print_results
    from merc.training.runner import run_experiment

    overrides = plugin_overrides(args) + list(args.overrides)
    results = run_experiment(
        args.model,
        args.dataset,
        args.modalities,
        args.seeds,
        args.out,
        data_root=args.data_root,
        overrides=overrides,
        recipe_path=args.config,
        device=args.device,
        show_progress=not args.quiet,
    )
    print_results(results)
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from merc.evaluation.report import print_results
    from merc.training.runner import evaluate_run

    print_results(evaluate_run(args.run_dir, data_root=args.data_root, device=args.device))
    return 0


def dataset_rows(data_root: str | None) -> list[dict[str, Any]]:
    from merc.data.registry import get_dataset_spec, list_datasets, load_dataset

    rows: list[dict[str, Any]] = []
    for name in list_datasets():
        spec = get_dataset_spec(name)
        try:
            # Summaries need annotations only: never build generated features for them.
            ds = load_dataset(spec.annotations_of or name, data_root=data_root, validate=False)
        except MercError as exc:
            rows.append({"name": name, "modalities": "".join(spec.modalities), "error": str(exc)})
            continue
        rows.append(
            {
                "name": name,
                "modalities": "".join(spec.modalities),
                "label_names": ds.label_names,
                "speakers": ds.num_speakers,
                "description": spec.description,
                "splits": ds.summary(),
            }
        )
    return rows


def cmd_datasets(args: argparse.Namespace) -> int:
    rows = dataset_rows(args.data_root)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from rich.console import Console

        from merc.evaluation.report import datasets_table

        # Wide enough for the names and counts even when output goes to a pipe (80 columns).
        Console(width=max(Console().width, 100)).print(datasets_table(rows))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from merc.models import describe_model, list_models

    for name in list_models():
        print(f"{name:14s} {describe_model(name)}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from merc.data.registry import load_dataset

    ds = load_dataset(args.dataset, modalities="t", data_root=args.data_root, text_encoder=args.encoder)
    print(
        f"{args.dataset}: text features {ds.dims['t']}-d for {sum(len(c) for c in ds.conversations())} utterances (cached)"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from merc.data.formats.native import write_native
    from merc.data.registry import load_dataset

    ds = load_dataset(args.dataset, modalities=args.modalities, data_root=args.data_root)
    write_native(ds, args.out)
    print(f"wrote {args.dataset} to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from merc.evaluation.report import print_results
    from merc.training.runner import run_experiment

    console = Console(width=max(Console().width, 100))
    console.print(
        "[bold]merc demo[/bold]: bc-LSTM on the synthetic dataset (all features generated), "
        "text / audio / visual alone and fused, 3 seeds, selected on validation."
    )
    rows = []
    for mods in ("t", "a", "v", "tav"):
        res = run_experiment("bclstm", "synthetic", mods, [0, 1, 2], Path(args.out) / mods, show_progress=True)
        rows.append(res)
        print_results(res, console)
    from rich.table import Table

    from merc.evaluation.aggregate import format_mean_std

    table = Table(title="demo summary: test weighted F1 / accuracy (mean ± std over 3 seeds)")
    for col in ("modalities", "weighted F1", "accuracy"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["modalities"], format_mean_std(r["test"]["weighted_f1"]), format_mean_std(r["test"]["accuracy"])
        )
    console.print(table)
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from merc.training.robustness_sweep import robustness_main

    return int(robustness_main(args) or 0)


COMMANDS = {
    "robustness": cmd_robustness,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "datasets": cmd_datasets,
    "models": cmd_models,
    "extract": cmd_extract,
    "export": cmd_export,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except MercError as exc:
        print(f"merc: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"merc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "merc: interrupted; the last epoch's checkpoint is saved: rerun the same command to resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())

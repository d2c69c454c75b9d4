"""The ``merc`` command.

``merc train``, ``merc evaluate``, ``merc bundle``, ``merc predict``, ``merc datasets``,
``merc models``, ``merc extract``, ``merc export``, ``merc robustness``, ``merc imbalance``, ``merc report`` and
``merc demo``.

:func:`main` is the one error boundary. Every expected failure (a bad argument or recipe
value, a missing, corrupt or foreign file, a run folder in use or holding another run, an
``OSError`` such as a full disk) is printed as one line ``merc: error: ...`` and exits
with status 2. Anything else is a bug: one line naming a log file that holds the
traceback, exit status 1 (``-v`` also prints the traceback). Ctrl-C exits with 130.
Recipe overrides (``section.key=value``) may stand anywhere on the command line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from merc.errors import MercError

#: Exit status of an expected failure (bad input), as argparse's own.
EXIT_ERROR = 2
#: Exit status of a bug (an unexpected exception).
EXIT_BUG = 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``merc: error: ... (see `merc train --help`)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"merc: error: {message} (see `{self.prog} --help`)\n")


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None


def is_override(token: str) -> bool:
    """Whether a command-line word is a recipe override ``section.key=value``."""
    return "=" in token and not token.startswith("-")


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding iemocap/ and meld/ (default: $MERC_DATA_ROOT or ../shared/data)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="merc", description="Multimodal emotion recognition in conversation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more; print tracebacks of bugs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate a model over several seeds")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--modalities", default="t", help="letters of t (text), a (audio), v (visual), e.g. tav")
    p.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated, e.g. 0,1,2")
    p.add_argument("--out", required=True, help="run folder (resumed if it holds this same run)")
    p.add_argument(
        "--overwrite", action="store_true", help="discard what the run folder holds (a previous run) and start afresh"
    )
    p.add_argument("--config", default=None, help="recipe YAML instead of configs/<model>/<dataset>.yaml")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1 ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--protocol",
        default="split",
        help="split (default: the dataset's own train/valid/test splits) or loso: leave-one-session-out "
        "cross-validation on IEMOCAP, one fold per held-out session, validation drawn from the training sessions "
        "(RUN/fold_K/seed_S; results.json pools the folds x seeds)",
    )
    p.add_argument(
        "--valid-share",
        type=float,
        default=None,
        help="--protocol loso: share of each training session's dialogues used for validation (default 0.1; "
        "the same fixed draw for every seed and model)",
    )
    add_plugin_switches(p)
    _add_data_root(p)
    p.add_argument("overrides", nargs="*", help="recipe overrides section.key=value, e.g. training.lr=3e-4")

    p = sub.add_parser("evaluate", help="re-score a finished run's selected weights")
    p.add_argument("run_dir")
    p.add_argument("--device", default="cpu")
    _add_data_root(p)

    p = sub.add_parser("bundle", help="write one seed of a finished run as a self-contained model bundle")
    p.add_argument("run_dir", help="run folder (the --out of merc train)")
    p.add_argument("--out", required=True, help="bundle file (e.g. model.merc), or a folder: DIR/ or an existing one")
    p.add_argument("--seed", type=int, default=None, help="which seed (default: the best on validation)")
    _add_data_root(p)

    p = sub.add_parser(
        "predict",
        help="predict the emotion of every utterance of new conversations",
        description=(
            "Predict with a run folder or a bundle. --input: a native dataset folder, or a .csv / .jsonl "
            "with the fields dialogue_id, speaker, text (optional: utterance_index, utterance_id, label; audio, "
            "video: media paths relative to the file, start, end: seconds within them), or a .txt transcript of "
            "'SPEAKER: text' lines (a blank line between dialogues). Audio/visual features are computed from the "
            "media with the extractors and settings the model was trained with; utterances without media are "
            "predicted with that modality missing. --out: .jsonl or .csv, one row per utterance."
        ),
    )
    p.add_argument("model", help="run folder (merc train --out) or bundle (merc bundle --out)")
    p.add_argument("--input", required=True, help="conversations: native folder, .csv, .jsonl or .txt")
    p.add_argument("--out", required=True, help="predictions file: .jsonl or .csv")
    p.add_argument("--seed", type=int, default=None, help="run folder only: which seed (default: best on validation)")
    p.add_argument("--split", default=None, help="native folder only: predict this split alone")
    p.add_argument(
        "--unknown-speakers",
        default="map",
        choices=["map", "refuse"],
        help="for models with global speaker ids: map speakers unseen in training to training speakers by "
        "order of appearance (default), or refuse them",
    )
    p.add_argument("--batch-size", type=int, default=64, help="dialogues per batch (default 64)")
    p.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16-mixed"],
        help="32 (default): the float32 model, as merc evaluate runs it; bf16-mixed: bfloat16 autocast, "
        "about twice as fast on CPUs with native bfloat16, probabilities within about 1e-2",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_data_root(p)

    p = sub.add_parser("datasets", help="list datasets, or show one (a registered name or your folder)")
    p.add_argument("dataset", nargs="?", default=None, help="a registered name or a dataset folder / file")
    p.add_argument("--json", action="store_true")
    _add_data_root(p)

    sub.add_parser("models", help="list registered models")

    p = sub.add_parser(
        "extract",
        help="compute and cache features of a dataset: text, and audio / visual from a native folder's media",
        description=(
            "Compute features offline and cache them. A native folder gets them written into "
            "features/<m>.safetensors (metadata.json updated): t from its texts; a and v from the audio / video "
            "files its conversations point to (keys audio, video, start, end of conversations.jsonl). A "
            "registered dataset: text features only, into the cache. With --level sequence: token/frame-level "
            "sequences instead (t: the encoder's token states; a: eGeMAPSv02 low-level descriptors, 25 per 10 ms "
            "frame), into sequences/<m>.safetensors of a native folder, or for a registered dataset (t only) the "
            "cache that `--dataset NAME@t` reads."
        ),
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--modalities", default="t", help="what to compute: letters of t, a, v (default t), e.g. a,v or tav")
    p.add_argument("--encoder", default=None, help="t: sentence encoder (default all-MiniLM-L6-v2, offline)")
    p.add_argument(
        "--audio-extractor",
        default="egemaps",
        help="a: egemaps (eGeMAPSv02 functionals, 88-d, default), compare (ComParE_2016, 6373-d) or librosa "
        "(log-mel + MFCC mean/std, 168-d)",
    )
    p.add_argument("--visual-extractor", default="faces", help="v: faces (OpenCV Haar face + HOG, 665-d, default)")
    p.add_argument("--fps", type=float, default=5.0, help="v: frames sampled per second of each utterance (default 5)")
    p.add_argument(
        "--level",
        default="utterance",
        type=_sequence_level,
        help="utterance (default: one vector per utterance) or sequence (one per token or frame: t token states, "
        "a low-level descriptors; 'token' and 'frame' are accepted as other names of sequence)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a or v features the folder already has, made otherwise"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
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

    p = sub.add_parser(
        "imbalance",
        help="train each modality of a finished run alone and compare with the joint model's unimodal heads",
        description=(
            "Tell modality imbalance from a weak modality: for a finished multimodal run of a model with unimodal "
            "logits, train the same model and recipe (without --balance plug-ins) on each modality alone into "
            "RUN/alone/<m>, then compare test weighted F1: joint model's head vs alone. Writes "
            "RUN/unimodal_vs_alone.{json,md,png}."
        ),
    )
    p.add_argument("run_dir", metavar="RUN", help="run folder (the --out of merc train) with two or more modalities")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_root(p)

    p = sub.add_parser(
        "tune",
        help="search recipe values on validation (Optuna), then train the best over the seeds and test once",
        description=(
            "Hyper-parameter search (merc.training.tuning): each trial trains the recipe with sampled values "
            "(--param KEY=LOW:HIGH[:log] or KEY=A,B,...; or a preset of configs/tune/, --space spcl) for the "
            "trial seeds and scores its best validation value; no trial touches the test split. The best "
            "values then make one ordinary run into OUT/best over --seeds, tested once. OUT/tune.json and "
            "OUT/tune.png hold every trial; repeating the command continues an interrupted search."
        ),
    )
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--modalities", default="t", help="letters of t, a, v, e.g. tav")
    p.add_argument("--out", required=True, help="search folder (continued if it holds this same search)")
    p.add_argument("--space", default=None, help="a search preset: configs/tune/<name>.yaml (e.g. spcl) or a file")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="a searched value: KEY=LOW:HIGH (int if both are integers), KEY=LOW:HIGH:log, or KEY=A,B,... "
        "(repeatable; added to --space)",
    )
    p.add_argument("--trials", type=int, default=20, help="completed trials wanted (default 20)")
    p.add_argument("--trial-seeds", type=_seeds, default=[0], help="seeds each trial trains (default 0)")
    p.add_argument(
        "--seeds", type=_seeds, default=[0, 1, 2], help="seeds of the final run with the best values (default 0,1,2)"
    )
    p.add_argument("--no-final", action="store_true", help="search only; no final run")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--config", default=None, help="recipe YAML instead of configs/<model>/<dataset>.yaml")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_plugin_switches(p)
    _add_data_root(p)
    p.add_argument("overrides", nargs="*", help="recipe overrides of every trial and the final run")

    p = sub.add_parser(
        "report",
        help="one self-contained HTML page (no network) of finished runs: table, per-class F1, confusion, curves",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run folders (the --out of merc train); a folder holding only a robustness.json adds its curves",
    )
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    p.add_argument("--title", default=None, help="page title (default: the runs' model, dataset and modalities)")

    p = sub.add_parser("demo", help="the main job: bc-LSTM on synthetic data, all modalities, 3 seeds")
    p.add_argument("--out", default="runs/demo")
    for subparser in sub.choices.values():
        # -v after the command too (merc train ... -v); SUPPRESS keeps a -v given before it.
        subparser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more")
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
    from merc.data.protocols import DEFAULT_VALID_SHARE
    from merc.errors import ConfigError, resolve_choice
    from merc.evaluation.report import print_results
    from merc.training.runner import run_experiment

    overrides = plugin_overrides(args) + list(args.overrides)
    protocol = resolve_choice("protocol (--protocol)", args.protocol, ("split", "loso"))
    if args.valid_share is not None and protocol != "loso":
        raise ConfigError("--valid-share applies to --protocol loso (the dataset's own splits fix validation)")
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
        overwrite=args.overwrite,
        protocol=protocol,
        valid_share=DEFAULT_VALID_SHARE if args.valid_share is None else args.valid_share,
    )
    if protocol == "loso":
        print_loso_summary(results)
    else:
        print_results(results)
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


def print_loso_summary(results: dict[str, Any]) -> None:
    """The results of a ``--protocol loso`` run: pooled table, time, protocol, per-fold scores, reuse."""
    from rich.console import Console
    from rich.markup import escape

    from merc.evaluation.aggregate import format_mean_std
    from merc.evaluation.report import results_table

    protocol = results["protocol"]
    folds = results["folds"]
    title = (
        f"{results['model']} on {results['dataset']} [{results['modalities']}] — leave-one-session-out, "
        f"{len(folds)} folds x {len(results['seeds'])} seed(s), selected on valid"
    )
    Console().print(results_table(results, title=escape(title)))
    timing = results.get("timing") or {}
    if timing.get("epoch_seconds_median") is not None:
        print(f"time: {timing['total_seconds']:.1f} s total, {timing['epoch_seconds_median']:.2f} s per epoch (median)")
    print(
        f"leave-one-session-out: {len(folds)} folds x {len(results['seeds'])} seed(s); valid = "
        f"{protocol['valid_share']:g} of each training session's dialogues; mean ± std over the "
        f"{len(folds) * len(results['seeds'])} (fold, seed) runs"
    )
    for fold in folds:
        test = fold["test"]
        print(
            f"  fold {fold['fold']} (session {fold['held_out_session']} held out, {fold['dialogues']['test']} "
            f"dialogues): w-F1 {format_mean_std(test['weighted_f1'])}, WA {format_mean_std(test['accuracy'])}, "
            f"UA {format_mean_std(test['ua'])}"
        )
    reused = results.get("timing", {}).get("reused_runs") or []
    if reused:
        print(f"reused finished run(s) {', '.join(reused)} from the run folder (not trained again)")


def cmd_imbalance(args: argparse.Namespace) -> int:
    from merc.training.unimodal_alone import REPORT_STEM, alone_markdown, compare_with_alone

    report = compare_with_alone(
        args.run_dir, data_root=args.data_root, device=args.device, show_progress=not args.quiet
    )
    print(alone_markdown(report), end="")
    print(f"written: {Path(args.run_dir) / REPORT_STEM}.json, .md, .png")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from merc.training.tuning import SearchParameter, format_value, load_preset, tune

    params, preset_overrides = load_preset(args.space) if args.space else ([], [])
    params += [SearchParameter.parse(text) for text in args.param]
    summary = tune(
        args.model,
        args.dataset,
        args.modalities,
        args.out,
        params,
        trials=args.trials,
        trial_seeds=args.trial_seeds,
        final_seeds=[] if args.no_final else args.seeds,
        overrides=preset_overrides + plugin_overrides(args) + list(args.overrides),
        recipe_path=args.config,
        data_root=args.data_root,
        device=args.device,
        sampler_seed=args.sampler_seed,
        show_progress=not args.quiet,
        report=lambda line: print(line, flush=True),
    )
    best = summary["best"]
    shown = ", ".join(f"{k}={format_value(v)}" for k, v in best["params"].items())
    print(f"best of {len(summary['trials'])} trials: {shown} (valid {best['valid']:.2f}; trial {best['number']})")
    if "final" in summary:
        test = summary["final"]["test"]
        print(
            f"final run {Path(args.out) / 'best'}, seeds {summary['final']['seeds']}: test weighted F1 "
            f"{test['weighted_f1']['mean']:.2f} ± {test['weighted_f1']['std']:.2f}, accuracy "
            f"{test['accuracy']['mean']:.2f} ± {test['accuracy']['std']:.2f}"
        )
    print(f"search: {Path(args.out) / 'tune.json'}, {Path(args.out) / 'tune.png'}")
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


def dataset_detail(name: str, data_root: str | None) -> dict[str, Any]:
    """One dataset as ``merc datasets NAME_OR_PATH`` shows it: splits, class counts, modalities, dims."""
    from merc.data.registry import get_dataset_spec, is_dataset_path, load_dataset, split_sequence_request

    # "iemocap4@t": the dataset iemocap4, shown with the sequence request (computed on first use).
    name, sequences = split_sequence_request(name)
    annotations = name if is_dataset_path(name) else (get_dataset_spec(name).annotations_of or name)
    ds = load_dataset(annotations, data_root=data_root, validate=False)
    texts = all(c.texts is not None for c in ds.conversations())
    modalities = {m: {"dim": d, "source": "features file"} for m, d in ds.dims.items()}
    if "t" not in modalities and texts:
        modalities["t"] = {"dim": None, "source": "computed from the texts on first use (merc extract does it now)"}
    if is_dataset_path(name) and Path(name).is_dir():
        from merc.data.formats.native import read_media

        media = read_media(name)
        for m in ("a", "v"):
            count = sum(s is not None for cm in media.values() for s in cm.stream(m))
            if m not in modalities and count:
                modalities[m] = {
                    "dim": None,
                    "source": f"media files named for {count} utterances (merc extract --modalities {m} computes them)",
                }
    return {
        "name": ds.name,
        "path": name if is_dataset_path(name) else None,
        "description": ds.description,
        "label_names": ds.label_names,
        "speakers": ds.num_speakers,
        "max_parties": ds.max_parties,
        "transcripts": texts,
        "modalities": {m: modalities[m] for m in ("t", "a", "v") if m in modalities},
        "sequences": list(sequences),
        "splits": ds.summary(),
    }


def cmd_datasets(args: argparse.Namespace) -> int:
    if args.dataset is not None:
        detail = dataset_detail(args.dataset, args.data_root)
        if args.json:
            print(json.dumps(detail, indent=2))
        else:
            from rich.console import Console

            from merc.evaluation.report import dataset_detail_table

            console = Console(width=max(Console().width, 100))
            console.print(dataset_detail_table(detail))
            for m, info in detail["modalities"].items():
                dim = f"{info['dim']}-d, " if info["dim"] else ""
                console.print(f"modality {m}: {dim}{info['source']}")
            if not detail["modalities"]:
                console.print("no modality: give texts (merc computes text features) or features/<m>.safetensors")
            if detail["sequences"]:
                console.print(
                    f"token/frame sequences requested for {''.join(detail['sequences'])} "
                    "(read from the folder or computed on first use, then cached)"
                )
            console.print(
                f"speakers: {detail['speakers']} (at most {detail['max_parties']} per dialogue); "
                f"transcripts: {'yes' if detail['transcripts'] else 'no'}"
            )
        return 0
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


#: ``merc extract --level`` values; ``token`` and ``frame`` are other names of ``sequence``.
EXTRACT_LEVELS: dict[str, str] = {
    "utterance": "utterance",
    "sequence": "sequence",
    "token": "sequence",
    "frame": "sequence",
}


def _sequence_level(value: str) -> str:
    level = EXTRACT_LEVELS.get(value.strip().lower())
    if level is None:
        raise argparse.ArgumentTypeError(f"invalid level {value!r}: use utterance or sequence (or token, frame)")
    return level


def _extract_sequences(args: argparse.Namespace, modalities: tuple[str, ...]) -> int:
    """``merc extract --level sequence``: token/frame-level sequences, cached or into the folder."""
    from merc.data.formats.native import add_sequences, read_metadata
    from merc.data.registry import attach_text_sequences, load_dataset
    from merc.data.schema import MODALITY_NAMES
    from merc.errors import DataError

    if "v" in modalities:
        raise DataError(
            "--level sequence: merc has no frame-level visual extractor (faces gives one vector per utterance); "
            "extract v at --level utterance"
        )
    folder = Path(args.dataset)
    native = folder.is_dir() and (folder / "metadata.json").is_file()
    if not native:
        if "a" in modalities:
            raise DataError(
                f"--modalities a --level sequence: audio frames are computed from the media files of a native "
                f"dataset folder (its conversations name them); {args.dataset} is not one"
            )
        ds = load_dataset(args.dataset, data_root=args.data_root)
        attach_text_sequences(ds, text_encoder=args.encoder, show_progress=not args.quiet)
        from merc.features.text import cache_dir

        rows = [r for c in ds.conversations() for r in c.sequences["t"]]
        print(
            f"{args.dataset}: token-level text {rows[0].shape[1]}-d, {sum(len(r) for r in rows):,} tokens of "
            f"{len(rows):,} utterances (cached in {cache_dir()}; train with --dataset {args.dataset}@t)"
        )
        return 0

    from merc.features.extract import build_extractor, extract_folder

    metadata = read_metadata(folder)
    stored = metadata.get("sequence_dims") or {}
    recorded = (metadata.get("meta") or {}).get("sequence_specs") or {}
    pending: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None]] = []
    messages: list[str] = []
    for m in modalities:
        # What would be made, to compare with what the folder holds before computing anything.
        if m == "t":
            from merc.features.text import DEFAULT_TEXT_ENCODER

            made: dict[str, Any] = {"encoder": args.encoder or DEFAULT_TEXT_ENCODER}
        else:
            extractor = build_extractor(m, args.audio_extractor, level="lld")
            made = {"extractor": extractor.name, "settings": extractor.settings()}
        if m in stored:
            old = recorded.get(m) if isinstance(recorded, dict) else None
            if isinstance(old, dict) and all(old.get(k) == v for k, v in made.items()):
                messages.append(f"{folder}: already has these {MODALITY_NAMES[m]} sequences ({stored[m]}-d)")
                continue
            if not args.overwrite:
                raise DataError(
                    f"{folder} already has {MODALITY_NAMES[m]} sequences made otherwise ({old!r}); pass --overwrite "
                    "to replace them"
                )
        if m == "t":
            from merc.data.formats.native import read_native
            from merc.features.spec import SEQUENCE_META_KEY

            ds = read_native(folder, require_all_splits=False, read_features=False)
            attach_text_sequences(ds, text_encoder=args.encoder, show_progress=not args.quiet)
            sequences = {c.id: c.sequences["t"] for c in ds.conversations()}
            pending.append((m, sequences, ds.meta[SEQUENCE_META_KEY]["t"], None))
        else:
            got = extract_folder(folder, extractor, show_progress=not args.quiet)
            pending.append((m, got.sequences, got.spec, got.report))
    # Everything is computed before anything is written: a failure leaves the folder as it was.
    for m, sequences, spec, report in pending:
        path = add_sequences(folder, m, sequences, spec, report)
        rows = [r for rs in sequences.values() for r in rs]
        messages.append(
            f"wrote {spec['dim']}-d {MODALITY_NAMES[m]} sequences ({sum(len(r) for r in rows):,} frames of "
            f"{len(rows):,} utterances) to {path} (metadata.json sequence_dims now lists {m!r}; train with "
            f"--dataset {folder}@{m})"
        )
    print("\n".join(messages))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from merc.data.registry import attach_text_features, load_dataset
    from merc.data.schema import MODALITY_NAMES, parse_modalities

    modalities = parse_modalities(args.modalities)
    if getattr(args, "level", "utterance") == "sequence":
        return _extract_sequences(args, modalities)
    folder = Path(args.dataset)
    if not (folder.is_dir() and (folder / "metadata.json").is_file()):
        media = [m for m in modalities if m != "t"]
        if media:
            from merc.errors import DataError

            raise DataError(
                f"--modalities {''.join(media)}: audio and visual features are computed from the media files of a "
                f"native dataset folder (its conversations name them); {args.dataset} is not one"
            )
        ds = load_dataset(args.dataset, modalities="t", data_root=args.data_root, text_encoder=args.encoder)
        from merc.features.text import cache_dir

        print(
            f"{args.dataset}: text features {ds.dims['t']}-d for {sum(len(c) for c in ds.conversations())} "
            f"utterances (cached in {cache_dir()})"
        )
        return 0

    from merc.data.formats.native import add_features, read_metadata
    from merc.data.registry import read_dataset_path
    from merc.features.extract import build_extractor, extract_folder
    from merc.features.spec import feature_specs

    # Everything is computed before anything is written: a failure leaves the folder as it was.
    pending: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None]] = []
    messages: list[str] = []
    if "t" in modalities:
        ds = read_dataset_path(folder)
        if "t" in ds.modalities:
            messages.append(
                f"{folder}: already has text features ({ds.dims['t']}-d, {folder / 'features' / 't.safetensors'})"
            )
        else:
            attach_text_features(ds, text_encoder=args.encoder, show_progress=not args.quiet)
            pending.append(("t", {c.id: c.features["t"] for c in ds.conversations()}, feature_specs(ds)["t"], None))
    metadata = read_metadata(folder)
    recorded = (metadata.get("meta") or {}).get("feature_specs") or {}
    for m in (m for m in modalities if m != "t"):
        name = args.audio_extractor if m == "a" else args.visual_extractor
        settings: dict[str, Any] = {"fps": args.fps} if m == "v" else {}
        extractor = build_extractor(m, name, **settings)
        path = folder / "features" / f"{m}.safetensors"
        if path.exists():
            old = recorded.get(m) if isinstance(recorded, dict) else None
            if (
                isinstance(old, dict)
                and old.get("settings") == extractor.settings()
                and old.get("extractor") == extractor.name
            ):
                messages.append(
                    f"{folder}: already has these {MODALITY_NAMES[m]} features ({old.get('dim')}-d, {path})"
                )
                continue
            if not args.overwrite:
                from merc.errors import DataError
                from merc.features.spec import describe_spec

                have = describe_spec(old if isinstance(old, dict) else {"dim": metadata["dims"].get(m, "?")})
                raise DataError(
                    f"{folder} already has {MODALITY_NAMES[m]} features ({have}); pass --overwrite to replace them "
                    f"with {extractor.name} features"
                )
        got = extract_folder(folder, extractor, show_progress=not args.quiet)
        pending.append((m, got.features, got.spec, got.report))
    for m, features, spec, report in pending:
        path = add_features(folder, m, features, spec, report)
        n = sum(len(a) for a in features.values())
        dim = next(iter(features.values())).shape[1]
        what = (
            f"{spec.get('encoder')}"
            if m == "t"
            else f"{spec['extractor']}, {spec['library']} {spec.get('library_version')}"
        )
        messages.append(
            f"wrote {dim}-d {MODALITY_NAMES[m]} features ({what}) of {n} utterances to {path} "
            f"(metadata.json now lists {m!r})"
        )
    print("\n".join(messages))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from merc.inference.bundle import bundle_from_run, describe_bundle, save_bundle

    bundle = bundle_from_run(args.run_dir, seed=args.seed, data_root=args.data_root)
    path = save_bundle(bundle, args.out)
    print(f"wrote {path}: {describe_bundle(bundle)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from collections import Counter

    from merc.errors import ConfigError
    from merc.inference.bundle import describe_bundle, load_model_source
    from merc.inference.inputs import read_input
    from merc.inference.predict import output_format, predict, write_predictions
    from merc.training.trainer import check_device

    output_format(args.out)
    device = check_device(args.device, "--device")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: expected an integer >= 1")
    bundle = load_model_source(args.model, seed=args.seed, data_root=args.data_root)
    data = read_input(args.input, split=args.split)
    result = predict(
        bundle,
        data,
        batch_size=args.batch_size,
        device=device,
        unknown_speakers=args.unknown_speakers,
        show_progress=not args.quiet,
        precision=args.precision,
    )
    for line in result.warnings:
        print(f"merc: warning: {line}", file=sys.stderr)
    path = write_predictions(result, bundle.label_names, args.out)
    counts = Counter(r["label"] for r in result.rows)
    print(f"model: {describe_bundle(bundle)}")
    print(
        f"wrote {len(result.rows)} predictions ({len(data.conversations)} dialogues) to {path}: "
        + ", ".join(f"{name} {counts[name]}" for name in bundle.label_names if counts[name])
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


def cmd_report(args: argparse.Namespace) -> int:
    from merc.evaluation.html_report import write_report

    path = write_report(args.runs, args.out, title=args.title)
    print(f"wrote {path} ({len(args.runs)} folder(s); self-contained, open it in a browser)")
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from merc.training.robustness_sweep import robustness_main

    return int(robustness_main(args) or 0)


COMMANDS = {
    "robustness": cmd_robustness,
    "imbalance": cmd_imbalance,
    "tune": cmd_tune,
    "report": cmd_report,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "bundle": cmd_bundle,
    "predict": cmd_predict,
    "datasets": cmd_datasets,
    "models": cmd_models,
    "extract": cmd_extract,
    "export": cmd_export,
    "demo": cmd_demo,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``merc train``'s overrides may stand anywhere in it.

    argparse gives a ``nargs="*"`` positional only the words before the first option
    after it; the override words after a later option come back unrecognised and are
    appended here, in command-line order.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        args.overrides = list(args.overrides) + [t for t in extra if is_override(t)]
        extra = [t for t in extra if not is_override(t)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _crash_log(exc: BaseException, argv: Sequence[str] | None) -> Path | None:
    """Write the traceback of an unexpected exception to a log file; its path, or ``None``."""
    folder = Path(os.environ.get("MERC_LOG_DIR") or Path(tempfile.gettempdir()) / "merc-logs")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"merc-{stamp}-{os.getpid()}.log"
        command = " ".join(sys.argv[:1] + list(argv if argv is not None else sys.argv[1:]))
        path.write_text(
            f"command: {command}\n\n" + "".join(traceback.format_exception(exc)), encoding="utf-8", errors="replace"
        )
    except OSError:
        return None
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``merc`` command; return its exit status (0, 2: bad input, 1: a bug, 130: Ctrl-C)."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except (MercError, FloatingPointError) as exc:
        print(f"merc: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        from merc.training.run_folder import describe_os_error

        where = f" {exc.filename}" if exc.filename else ""
        print(f"merc: error: cannot read or write{where}: {_one_line(describe_os_error(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        print(
            "merc: error: out of memory; use a smaller training.batch_size, fewer modalities or shorter dialogues "
            "(data.max_utterances_per_dialogue)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(
            "merc: interrupted; the last epoch's checkpoint is saved: rerun the same command to resume", file=sys.stderr
        )
        return 130
    except Exception as exc:
        log_path = _crash_log(exc, argv)
        if args.verbose:
            traceback.print_exception(exc, file=sys.stderr)
        where = f"traceback in {log_path}" if log_path else "rerun with -v for the traceback"
        print(
            f"merc: internal error (a bug in merc, please report it): {type(exc).__name__}: "
            f"{_one_line(str(exc))[:300]}; {where}",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())

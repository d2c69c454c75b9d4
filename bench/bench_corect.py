"""CORECT training speed (and optionally accuracy) of merc against the authors' code.

Both implementations train on the same data: merc's ``iemocap6`` text-only MiniLM features,
standardised as merc's runner does (``merc.training.runner.prepare_dataset`` with the
``corect/iemocap6`` recipe). For the reference they are written in its
``data_iemocap.pkl`` layout (``train``/``dev``/``test`` lists of per-dialogue dicts with
``vid``, ``speakers``, ``labels``, ``text``, ``audio``, ``visual``, ``sentence``; merc's
``valid`` split is ``dev``; audio/visual are zero vectors of the reference's IEMOCAP
dims, which a text-only run pads but never reads) into a temporary folder.

Settings are those of the authors' ``run_train.sh`` restricted to text: batch 10,
lr 0.00025, Adam with weight decay 1e-8, dropout 0.5, Transformer text encoder (2
layers), RGCN + Graph Transformer with 7 heads, window ``[11, 9]``, speaker embedding,
no cross-modal block (one modality). merc's recipe is overridden to the same lr.

Timing: one training epoch of each implementation, alternated (reference, merc at each
``--precision``, reference, ...) so that all see the same machine load, ``--repeats``
times after one warm-up epoch each, for every ``--threads`` setting. Reported per
thread count and merc precision: median seconds/epoch and the ratio reference / merc.
``--runs K`` repeats the whole measurement K times with fresh models (the ratio moves
with the machine's state by several percent between runs); ``timing_summary`` gives
each run's ratio and their median. With ``--settle 1`` every timed epoch follows an
untimed epoch of the same implementation, as in a training run, instead of the other
implementation's (right after the reference's, merc's epochs were measured a few
percent slower: compare ``timing`` and ``timing_settle1`` in the results file); its
results go to ``timing_settle1``. ``--precision`` takes merc's ``training.precision`` values (comma-separated, e.g.
``32,bf16-mixed``); the reference always trains in float32 (it has no such option).

Parity (``--seeds 0,1,2 --epochs 50``): both train to completion, each selecting the
epoch of best dev (valid) weighted F1 as it does (the reference's ``Coach.train``,
merc's ``Trainer.fit``); test weighted F1 of the selected epoch, mean ± std over seeds.
merc trains at the one ``--precision`` given (recorded in the section).

The reference is not part of merc: pass ``--reference DIR``, a folder holding its
``corect`` package (imported from there). Without it only merc is timed.

Results go to ``bench/results/corect.json`` (``--out``); a run that measures only one of
timing (``--repeats 0`` skips it) and parity keeps the other section of the file.

Run::

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_corect.py --reference /tmp/corect_ref \\
        --repeats 5 --threads 2,1 --precision 32,bf16-mixed --runs 5 [--settle 1]
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_corect.py --reference /tmp/corect_ref \\
        --repeats 5 --threads 1 --precision 32,bf16-mixed
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/bench_corect.py --reference /tmp/corect_ref \\
        --repeats 0 --seeds 0,1,2 --epochs 50
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/bench_corect.py --reference /tmp/corect_ref \\
        --repeats 0 --seeds 0,1,2 --epochs 50 --precision bf16-mixed --out /tmp/parity_bf16.json
"""

from __future__ import annotations

import os

# The reference wraps every epoch in a tqdm bar; silence it (tqdm reads TQDM_* at import).
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import pickle  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType, SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from merc.data.batching import to_tensors  # noqa: E402
from merc.data.schema import MercDataset  # noqa: E402
from merc.errors import ConfigError  # noqa: E402
from merc.training.runner import model_for, prepare_dataset, resolve_recipe, train_one_seed  # noqa: E402
from merc.training.trainer import TrainConfig, Trainer, seed_everything  # noqa: E402

#: run_train.sh's settings that merc's recipe does not already share.
LR = 0.00025
BATCH_SIZE = 10
#: The reference's IEMOCAP audio/visual feature dims (train.py's dataset_embedding_dims).
REF_AUDIO_DIM, REF_VISUAL_DIM = 100, 512
RESULTS = Path(__file__).parent / "results" / "corect.json"


def merc_recipe(epochs: int, precision: str = "32") -> dict[str, Any]:
    """merc's corect/iemocap6 recipe at run_train.sh's lr and batch size, at ``training.precision``."""
    return resolve_recipe(
        "corect",
        "iemocap6",
        [
            f"training.lr={LR}",
            f"training.batch_size={BATCH_SIZE}",
            f"training.epochs={epochs}",
            f"training.precision={precision}",
        ],
    )


def write_reference_pickle(data: MercDataset, folder: Path) -> Path:
    """merc's splits in the reference's ``data_iemocap.pkl`` layout (valid -> dev)."""
    audio = np.zeros(REF_AUDIO_DIM, np.float32)
    visual = np.zeros(REF_VISUAL_DIM, np.float32)
    out: dict[str, list[dict[str, Any]]] = {}
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        dialogues = []
        for conv in data.splits[split]:
            labels = [int(y) for y in conv.labels]
            if min(labels) < 0:
                raise ValueError(f"{conv.id}: unlabelled utterances; the reference cannot train on them")
            feats = np.asarray(conv.features["t"], dtype=np.float32)
            dialogues.append(
                {
                    "vid": conv.id,
                    "speakers": list(conv.speakers),
                    "labels": labels,
                    "text": list(feats),  # one vector per utterance, as the reference's pickle
                    "audio": [audio] * len(conv),
                    "visual": [visual] * len(conv),
                    "sentence": list(conv.texts or [""] * len(conv)),
                }
            )
        out[name] = dialogues
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data_iemocap.pkl"
    with open(path, "wb") as f:
        pickle.dump(out, f)
    return path


def import_reference(root: Path) -> ModuleType:
    """The reference's ``corect`` package from ``root`` (its prints silenced)."""
    if not (root / "corect" / "__init__.py").is_file():
        raise SystemExit(f"{root} holds no corect/__init__.py (the authors' CORECT code)")
    sys.path.insert(0, str(root))
    import corect  # type: ignore[import-not-found]

    # Its logger prints every epoch to stdout; only warnings matter here.
    logging.getLogger("corect.utils").setLevel(logging.WARNING)
    return corect


def reference_args(text_dim: int, data_root: Path, epochs: int, seed: int) -> SimpleNamespace:
    """train.py's argument namespace for run_train.sh's settings, text only."""
    return SimpleNamespace(
        dataset="iemocap",
        data_dir_path=".",
        data_root=str(data_root),
        from_begin=True,
        device="cpu",
        epochs=epochs,
        batch_size=BATCH_SIZE,
        optimizer="adam",
        scheduler="reduceLR",
        learning_rate=LR,
        weight_decay=1e-8,
        max_grad_value=-1,
        drop_rate=0.5,
        wp=11,
        wf=9,
        hidden_size=100,
        rnn="transformer",
        class_weight=False,
        modalities="t",
        gcn_conv="rgcn",
        emotion=None,
        encoder_nlayers=2,
        graph_transformer_nheads=7,
        use_highway=False,
        seed=seed,
        log_in_comet=False,
        edge_type="temp_multi",
        use_speaker=True,
        no_gnn=False,
        use_graph_transformer=True,
        use_crossmodal=True,
        crossmodal_nheads=2,
        num_crossmodal=2,
        self_att_nheads=2,
        num_self_att=3,
        tag="bench",
        dataset_embedding_dims={"iemocap": {"a": REF_AUDIO_DIM, "t": text_dim, "v": REF_VISUAL_DIM}},
    )


def build_reference(corect: ModuleType, pkl: Path, text_dim: int, epochs: int, seed: int) -> Any:
    """The reference's Coach (model, optimiser, scheduler, datasets) as train.py builds it."""
    args = reference_args(text_dim, pkl.parent, epochs, seed)
    (pkl.parent / "model_checkpoints").mkdir(exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        corect.utils.set_seed(seed)
        with open(pkl, "rb") as f:
            data = pickle.load(f)
        sets = [corect.Dataset(data[k], args) for k in ("train", "dev", "test")]
        model = corect.CORECT(args).to("cpu")
        opt = corect.Optim(args.learning_rate, args.max_grad_value, args.weight_decay)
        opt.set_parameters(model.parameters(), args.optimizer)
        sched = opt.get_scheduler(args.scheduler)
        return corect.Coach(*sets, model, opt, sched, args)


def build_merc(data: MercDataset, tensors: dict[str, Any], recipe: dict[str, Any], seed: int, threads: int) -> Trainer:
    train = dict(recipe["training"], seed=seed, num_threads=threads, show_progress=False)
    config = TrainConfig.from_dict(train)
    seed_everything(seed)
    model = model_for(data, "corect", dict(recipe["model"]))
    return Trainer(model, tensors, data.modalities, data.num_classes, config)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the reference logs every epoch
        fn()
    return time.perf_counter() - start


def time_epochs(
    data: MercDataset,
    tensors: dict[str, Any],
    recipes: dict[str, dict[str, Any]],
    threads: int,
    repeats: int,
    reference: ModuleType | None,
    pkl: Path | None,
    settle: int = 0,
) -> list[dict[str, Any]]:
    """Alternate reference and merc training epochs (one merc trainer per precision of
    ``recipes``); one row per precision: median seconds per epoch of merc and of the
    reference (the same reference epochs in every row).

    ``settle``: untimed epochs of the same implementation right before each timed one, so
    that a timed epoch follows its own kind as in a training run (0: strict alternation,
    every timed epoch follows another implementation's)."""
    trainers = {prec: build_merc(data, tensors, recipe, seed=0, threads=threads) for prec, recipe in recipes.items()}
    torch.set_num_threads(threads)
    coach = build_reference(reference, pkl, data.dims["t"], 1, 0) if reference is not None and pkl else None
    merc_s: dict[str, list[float]] = {prec: [] for prec in trainers}
    ref_s: list[float] = []
    ref_epoch = 0
    for i in range(repeats + 1):  # round 0 warms up caches and allocators, not counted
        if coach is not None:
            for _ in range(settle + 1):
                ref_epoch += 1
                t = _timed(lambda e=ref_epoch: coach.train_epoch(e))
            if i:
                ref_s.append(t)
        for prec, trainer in trainers.items():
            for _ in range(settle + 1):
                t = _timed(trainer.train_epoch)
            if i:
                merc_s[prec].append(t)
    rows = []
    for prec, seconds in merc_s.items():
        row: dict[str, Any] = {
            "threads": threads,
            "precision": prec,
            "torch_threads": torch.get_num_threads(),
            "repeats": repeats,
            "settle": settle,
            "merc_seconds": seconds,
            "merc_median_s": statistics.median(seconds),
        }
        if ref_s:
            row.update(
                reference_seconds=ref_s,
                reference_median_s=statistics.median(ref_s),
                speedup=statistics.median(ref_s) / statistics.median(seconds),
            )
        rows.append(row)
    return rows


def parity(
    data: MercDataset,
    tensors: dict[str, Any],
    recipe: dict[str, Any],
    seeds: list[int],
    threads: int,
    reference: ModuleType | None,
    pkl: Path | None,
) -> dict[str, Any]:
    """Train both to completion per seed; test weighted F1 (percent) at the best dev epoch."""
    torch.set_num_threads(threads)
    recipe = dict(recipe, training=dict(recipe["training"], num_threads=threads))
    merc_f1, ref_f1 = [], []
    for seed in seeds:
        result = train_one_seed(data, tensors, "corect", recipe, seed, None, show_progress=False)
        merc_f1.append(float(result["test"]["weighted_f1"]))
        print(f"merc seed {seed}: test w-F1 {merc_f1[-1]:.2f} (best epoch {result['best_epoch']})", flush=True)
        if reference is not None and pkl is not None:
            random.seed(seed)
            coach = build_reference(reference, pkl, data.dims["t"], int(recipe["training"]["epochs"]), seed)
            with contextlib.redirect_stdout(io.StringIO()):
                _, best_epoch, _, _, _, test_f1s = coach.train()
            ref_f1.append(100.0 * float(test_f1s[best_epoch - 1]))
            print(f"reference seed {seed}: test w-F1 {ref_f1[-1]:.2f} (best epoch {best_epoch})", flush=True)

    def summary(values: list[float]) -> dict[str, Any]:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"per_seed": values, "mean": statistics.mean(values), "std": std}

    out: dict[str, Any] = {
        "seeds": seeds,
        "epochs": int(recipe["training"]["epochs"]),
        "precision": TrainConfig.from_dict(recipe["training"]).precision,
        "merc_test_weighted_f1": summary(merc_f1),
    }
    if ref_f1:
        out["reference_test_weighted_f1"] = summary(ref_f1)
    return out


def timing_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per thread count and precision over all runs: median merc and reference s/epoch, each run's
    speed-up and their median."""
    out = []
    for key in dict.fromkeys((r["threads"], r["precision"]) for r in rows):
        mine = [r for r in rows if (r["threads"], r["precision"]) == key]
        row: dict[str, Any] = {
            "threads": key[0],
            "precision": key[1],
            "runs": len(mine),
            "merc_median_s": statistics.median(r["merc_median_s"] for r in mine),
        }
        if all("speedup" in r for r in mine):
            row.update(
                reference_median_s=statistics.median(r["reference_median_s"] for r in mine),
                speedups=[round(r["speedup"], 2) for r in mine],
                speedup_median=statistics.median(r["speedup"] for r in mine),
            )
        out.append(row)
    return out


def main() -> None:
    # The reference's per-epoch sklearn report warns about classes an early model never predicts.
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=None, help="folder holding the authors' corect package")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed epochs per implementation and thread setting (0: no timing)"
    )
    parser.add_argument("--threads", default="1", help="comma-separated torch thread counts to time, e.g. 1,2")
    parser.add_argument(
        "--settle",
        type=int,
        default=0,
        help="untimed epochs of the same implementation before each timed one (0: strict alternation)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="independent timing runs (fresh models each), reported one by one and as medians",
    )
    parser.add_argument("--seeds", default="", help="comma-separated seeds for the accuracy parity run")
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the parity run")
    parser.add_argument("--parity-threads", type=int, default=1)
    parser.add_argument(
        "--precision",
        default="32",
        help="comma-separated merc training.precision values to time, e.g. 32,bf16-mixed "
        "(the parity run takes exactly one)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    try:  # merc's own validation and spelling (e.g. BF16_mixed -> bf16-mixed)
        precisions = list(dict.fromkeys(TrainConfig(precision=p).precision for p in args.precision.split(",")))
    except ConfigError as e:
        parser.error(str(e))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if seeds and len(precisions) != 1:
        parser.error(f"the parity run (--seeds) takes one --precision, got {', '.join(precisions)}")
    recipes = {prec: merc_recipe(args.epochs, prec) for prec in precisions}
    recipe = recipes[precisions[0]]
    data = prepare_dataset("iemocap6", "t", recipe, show_progress=False)
    tensors = to_tensors(data)
    reference = import_reference(args.reference.resolve()) if args.reference is not None else None
    result: dict[str, Any] = {
        "dataset": "iemocap6",
        "modalities": "t",
        "lr": LR,
        "batch_size": BATCH_SIZE,
        "window": [11, 9],
        "train_dialogues": len(tensors["train"]),
        "train_utterances": sum(len(c) for c in tensors["train"]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "reference": str(args.reference) if reference else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        pkl = write_reference_pickle(data, Path(tmp)) if reference is not None else None
        timings = []
        for run in range(args.runs if args.repeats > 0 else 0):
            for threads in [int(t) for t in args.threads.split(",") if t]:
                for row in time_epochs(data, tensors, recipes, threads, args.repeats, reference, pkl, args.settle):
                    timings.append(dict(row, run=run))
                    line = f"run {run} threads={threads} precision={row['precision']}: merc {row['merc_median_s']:.3f} s/epoch"
                    if "reference_median_s" in row:
                        line += f", reference {row['reference_median_s']:.3f} s/epoch, speedup x{row['speedup']:.2f}"
                    print(line, flush=True)
        if timings:
            # One timing section per --settle value: "timing" (strict alternation), "timing_settle1" ...
            key = "timing" if args.settle == 0 else f"timing_settle{args.settle}"
            result[key] = timings
            result[f"{key}_summary"] = timing_summary(timings)
            for row in result[f"{key}_summary"]:
                print(
                    f"threads={row['threads']} precision={row['precision']}: merc {row['merc_median_s']:.3f} s/epoch"
                    + (f", speedup x{row['speedup_median']:.2f} (runs: {row['speedups']})" if "speedups" in row else "")
                )
        if seeds:
            # One parity section per precision: "parity" (float32), "parity_bf16-mixed".
            key = "parity" if precisions[0] == "32" else f"parity_{precisions[0]}"
            result[key] = parity(data, tensors, recipe, seeds, args.parity_threads, reference, pkl)
            p = result[key]
            for name in ("merc", "reference"):
                if f"{name}_test_weighted_f1" in p:
                    s = p[f"{name}_test_weighted_f1"]
                    print(f"{name}: test w-F1 {s['mean']:.2f} ± {s['std']:.2f} over seeds {seeds}")
    # A run that skips timing (--repeats 0) or parity keeps that section of an earlier run.
    if args.out.is_file():
        previous = json.loads(args.out.read_text())
        for section in previous:
            if section.startswith(("timing", "parity")) and section not in result:
                result[section] = previous[section]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

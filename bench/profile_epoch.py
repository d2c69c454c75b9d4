"""Profile one training epoch of any merc model: wall time and the top operators (``torch.profiler``).

Where an epoch goes is the first question before any speed work; this answers it for any
registered model and dataset, built exactly as ``merc train`` builds it (recipe, class
weights, plug-ins; ``bench_baselines.build_merc``). One untimed warm-up epoch, then one
profiled epoch. ``--dialogues N`` trains on the first N training dialogues only (a
quick look at a slow model).

Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/profile_epoch.py --model dialoguegcn --dataset meld7 \\
        --dialogues 200 --no-warmup
    OMP_NUM_THREADS=1 .venv/bin/python bench/profile_epoch.py --model mmdfn --dataset iemocap6 \\
        training.precision=bf16-mixed
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_baselines as bb  # noqa: E402

from merc.data.batching import to_tensors  # noqa: E402
from merc.data.schema import MercDataset  # noqa: E402
from merc.training.runner import prepare_dataset, resolve_recipe  # noqa: E402


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that name a training setting: model, dataset, modalities, threads, overrides."""
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--modalities", default="t")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="recipe overrides section.key=value")


def load_run(args: argparse.Namespace) -> tuple[dict[str, Any], MercDataset, dict[str, Any]]:
    """``(recipe, dataset, tensors)`` as ``merc train`` prepares them for ``add_run_arguments``' values."""
    recipe = resolve_recipe(args.model, args.dataset, args.overrides)
    data = prepare_dataset(args.dataset, args.modalities, recipe, show_progress=False)
    return recipe, data, to_tensors(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--dialogues", type=int, default=0, help="first N training dialogues only (0: all)")
    parser.add_argument("--rows", type=int, default=20, help="operators listed")
    parser.add_argument("--no-warmup", action="store_true", help="profile the first epoch")
    args = parser.parse_args()

    recipe, data, tensors = load_run(args)
    if args.dialogues:
        tensors["train"] = tensors["train"][: args.dialogues]
    trainer = bb.build_merc(args.model, data, tensors, recipe, seed=0, threads=args.threads)
    torch.set_num_threads(args.threads)
    if not args.no_warmup:
        with bb.quiet():
            trainer.train_epoch()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        with bb.quiet():
            trainer.train_epoch()
        seconds = time.perf_counter() - start
    print(
        f"{args.model} on {args.dataset} ({len(tensors['train'])} training dialogues, "
        f"{args.threads} thread(s)): one epoch {seconds:.2f} s (profiled)"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()

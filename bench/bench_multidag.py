"""MultiDAG training epochs: the DAG walk steps once per utterance position for the whole batch.

MultiDAG's DAG-GNN (merc.models.layers.dag) visits utterance ``i`` of every dialogue of a
batch at once, so one epoch takes ``num_layers * sum over batches of T_max`` sequential
steps, whatever the number of dialogues in a batch; the authors' code (inherited from
DAG-ERC) loops over positions too, and a dialogue-by-dialogue walk would take
``num_layers * (number of utterances)``. This bench trains one epoch of merc's
``multidag/iemocap6`` recipe (text only, merc's MiniLM features) at several batch sizes
and reports, per batch size: seconds per epoch, the DAG steps counted during the epoch
(``DAGLayer.step`` calls), the steps a per-dialogue walk would need, and seconds per
step. Larger batches must make the epoch shorter, not longer.

Results go to ``bench/results/multidag.json``.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_multidag.py --batch-sizes 1,4,16,64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from merc.data.batching import to_tensors
from merc.models.layers.dag import DAGLayer
from merc.training.runner import model_for, prepare_dataset, resolve_recipe
from merc.training.trainer import TrainConfig, Trainer, seed_everything

RESULTS = Path(__file__).parent / "results" / "multidag.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,4,16,64", help="comma-separated dialogues per batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    recipe = resolve_recipe("multidag", "iemocap6", [])
    data = prepare_dataset("iemocap6", "t", recipe, show_progress=False)
    tensors = to_tensors(data)
    layers = int(recipe["model"]["num_layers"])
    utterances = sum(len(c) for c in tensors["train"])
    torch.set_num_threads(args.threads)

    steps = 0
    original_step = DAGLayer.step

    def counting_step(self: DAGLayer, *step_args: Any) -> Any:
        nonlocal steps
        steps += 1
        return original_step(self, *step_args)

    DAGLayer.step = counting_step  # type: ignore[method-assign]
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",") if b]:
        train = dict(recipe["training"], batch_size=batch_size, seed=0, num_threads=args.threads, show_progress=False)
        seed_everything(0)
        trainer = Trainer(
            model_for(data, "multidag", dict(recipe["model"])),
            tensors,
            data.modalities,
            data.num_classes,
            TrainConfig.from_dict(train),
        )
        steps = 0
        start = time.perf_counter()
        trainer.train_epoch()
        seconds = time.perf_counter() - start
        row = {
            "batch_size": batch_size,
            "epoch_seconds": seconds,
            "dag_steps": steps,
            "per_dialogue_walk_steps": layers * utterances,
            "seconds_per_step": seconds / max(steps, 1),
        }
        rows.append(row)
        print(
            f"batch {batch_size:3d}: {seconds:6.2f} s/epoch, {steps} DAG steps "
            f"(a per-dialogue walk: {layers * utterances}), {1e3 * row['seconds_per_step']:.2f} ms/step",
            flush=True,
        )
    DAGLayer.step = original_step  # type: ignore[method-assign]

    result = {
        "dataset": "iemocap6",
        "modalities": "t",
        "num_layers": layers,
        "train_utterances": utterances,
        "train_dialogues": len(tensors["train"]),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "epochs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

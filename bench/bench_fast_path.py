"""Training step time of one model with merc's fast kernels on and off, interleaved.

Every fast path in merc sits behind one switch (:mod:`merc.models.layers.fast`,
``MERC_FAST_KERNELS``), with the plain path beside it and a test that both agree. This
script measures what the switch buys for one model on real batches: the model is built
as ``merc train`` builds it (recipe, dataset, modalities), the first ``--batches``
training batches are collated once, and one *step* is forward plus backward over all of
them (the loss is a stand-in: ``logsumexp`` of the logits plus the model's auxiliary
losses; no optimiser, so both paths see the same weights). After one untimed step per
path, fast and plain steps alternate ``--repeats`` times; the medians and their ratio
are printed and merged into ``bench/results/fast_path.json`` under
``<model>/<dataset>/<modalities>``.

The plain path turns *every* fast kernel off (the fused recurrences, the grouped RGCN,
the packed token paths, ...), so the ratio is that of the whole switch for this model.

Run::

    .venv/bin/python bench/bench_fast_path.py --model mgcma --dataset iemocap6-synthav@ta --modalities ta --batches 1
    .venv/bin/python bench/bench_fast_path.py --model rsm --dataset iemocap4@t --modalities t --batches 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_epoch import add_run_arguments, load_run  # noqa: E402

from merc.data.batching import collate  # noqa: E402
from merc.models.layers.fast import use_fast_kernels  # noqa: E402
from merc.training.runner import model_for  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fast_path.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--batches", type=int, default=2, help="first N training batches of the recipe's size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    recipe, data, tensors = load_run(args)
    size = int(recipe["training"]["batch_size"])
    batches = [collate(tensors["train"][i * size : (i + 1) * size], data.modalities) for i in range(args.batches)]
    torch.manual_seed(0)
    model = model_for(data, args.model, dict(recipe.get("model") or {})).train()

    def step() -> float:
        start = time.perf_counter()
        for batch in batches:
            out = model(batch)
            loss = out.logits.float().logsumexp(-1).sum() + sum(out.aux_losses.values())
            loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"fast": [], "plain": []}
    for fast in (True, False):
        with use_fast_kernels(fast):
            step()  # warm-up
    for _ in range(args.repeats):
        for fast in (True, False):
            with use_fast_kernels(fast):
                times["fast" if fast else "plain"].append(step())
    fast_s, plain_s = statistics.median(times["fast"]), statistics.median(times["plain"])
    tokens = {m: int(sum(int(b.sequence_lengths[m].sum()) for b in batches)) for m in batches[0].sequence_lengths}
    # How much of a padded [N, L] grid is real: what a packed fast path saves.
    real_share = {
        m: round(tokens[m] / sum(b.num_utterances * int(b.sequence_lengths[m].max()) for b in batches), 3)
        for m in tokens
    }
    lengths = {m: torch.cat([item.sequence_lengths[m] for item in tensors["train"]]).float() for m in tokens}
    length_stats = {
        m: {"median": float(v.median()), "max": int(v.max()), "mean": round(float(v.mean()), 2)}
        for m, v in lengths.items()
    }
    record = {
        "batches": args.batches,
        "dialogues": sum(b.batch_size for b in batches),
        "utterances": sum(b.num_utterances for b in batches),
        "sequence_rows": tokens,
        "sequence_real_share_of_padded_grid": real_share,
        "train_sequence_lengths": length_stats,
        "threads": args.threads,
        "overrides": args.overrides,
        "fast_seconds": times["fast"],
        "plain_seconds": times["plain"],
        "fast_median_s": round(fast_s, 3),
        "plain_median_s": round(plain_s, 3),
        "speedup": round(plain_s / fast_s, 2),
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg()[0],
    }
    print(
        f"{args.model} {args.dataset} {args.modalities}: {record['dialogues']} dialogues, fast {fast_s:.2f} s, "
        f"plain {plain_s:.2f} s per step ({record['speedup']}x); load {record['load_average']:.1f}; "
        f"real share of the padded sequence grid {real_share}, training lengths {length_stats}"
    )
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.setdefault(args.model, {}).setdefault(args.dataset, {})[args.modalities] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()

"""Where a CORECT training epoch's time goes: matrix products against everything else.

One merc CORECT training epoch on ``iemocap6`` text (the settings of
``bench/bench_corect.py``), with every ATen operation timed by a
``TorchDispatchMode`` (wall time of the kernel call, the framework around it not
included). Operations are grouped into matrix products (``mm``, ``addmm``, ``bmm``,
``baddbmm``: their FLOP count is computed from the shapes) and the rest, listed by name.

What it shows: the floor under the epoch time that the products set at the rate this
CPU sustains (``gflop`` / ``products_s``), and how much of the epoch the other
operations take. The timer adds a few microseconds per operation; the epoch time
without it (``plain_epoch_s``, the median of ``--repeats`` epochs) is reported beside
the sum of operation times.

Results go to ``bench/results/corect_ops.json``.

Run::

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_corect_ops.py --threads 2,1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_corect import build_merc, merc_recipe
from torch.utils._python_dispatch import TorchDispatchMode

from merc.data.batching import to_tensors
from merc.training.runner import prepare_dataset

PRODUCTS = {"aten.mm": (0, 1), "aten.addmm": (1, 2), "aten.bmm": (0, 1), "aten.baddbmm": (1, 2)}
RESULTS = Path(__file__).parent / "results" / "corect_ops.json"


def product_flops(name: str, args: tuple[Any, ...]) -> int:
    """FLOPs (2 per multiply-add) of a matrix product call from its operand shapes."""
    a, b = (args[i] for i in PRODUCTS[name])
    batch = a.shape[0] if a.dim() == 3 else 1
    return 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


class OpTimer(TorchDispatchMode):
    """Accumulates wall seconds, calls and (for products) FLOPs per ATen operation."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        self.seconds[name] += time.perf_counter() - start
        self.calls[name] += 1
        if name in PRODUCTS:
            self.flops += product_flops(name, args)
        return out


def measure(threads: int, precision: str, repeats: int, data: Any, tensors: Any) -> dict[str, Any]:
    trainer = build_merc(data, tensors, merc_recipe(1, precision), seed=0, threads=threads)
    torch.set_num_threads(threads)
    epoch: Callable[[], Any] = trainer.train_epoch
    epoch()  # warm-up: caches, oneDNN kernels
    plain = []
    for _ in range(repeats):
        start = time.perf_counter()
        epoch()
        plain.append(time.perf_counter() - start)
    timer = OpTimer()
    with timer:
        epoch()
    products = sum(timer.seconds[n] for n in PRODUCTS)
    total = sum(timer.seconds.values())
    others = {n: s for n, s in timer.seconds.items() if n not in PRODUCTS}
    return {
        "threads": threads,
        "precision": precision,
        "plain_epoch_s": statistics.median(plain),
        "op_seconds_total": total,
        "products_s": products,
        "gflop": timer.flops / 1e9,
        "products_gflop_per_s": timer.flops / 1e9 / products,
        "other_ops_s": total - products,
        "ops": sum(timer.calls.values()),
        "top_other_ops": [
            {"op": n, "seconds": s, "calls": timer.calls[n]}
            for n, s in sorted(others.items(), key=lambda kv: -kv[1])[:15]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="2,1", help="comma-separated torch thread counts")
    parser.add_argument("--precision", default="bf16-mixed,32", help="comma-separated merc training.precision values")
    parser.add_argument("--repeats", type=int, default=3, help="untimed-by-op epochs for the plain epoch time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data = prepare_dataset("iemocap6", "t", merc_recipe(1), show_progress=False)
    tensors = to_tensors(data)
    rows = []
    for threads in [int(t) for t in args.threads.split(",") if t]:
        for precision in [p for p in args.precision.split(",") if p]:
            row = measure(threads, precision, args.repeats, data, tensors)
            rows.append(row)
            print(
                f"threads={threads} precision={precision}: epoch {row['plain_epoch_s']:.3f} s; "
                f"products {row['products_s']:.3f} s ({row['gflop']:.1f} GFLOP, {row['products_gflop_per_s']:.0f} GFLOP/s), "
                f"other ops {row['other_ops_s']:.3f} s over {row['ops']} operations",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

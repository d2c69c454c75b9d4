"""DialogueGCN graph construction: merc's vectorised builder against a per-edge Python loop.

The authors' code (github.com/declare-lab/conv-emotion, ``DialogueGCN/model.py``) builds
each batch's graph in Python: a set of (owner, neighbour) pairs per dialogue, then, per
edge, a two-element tensor, a look-up of both speakers in the one-hot speaker mask and a
string-keyed relation table. :func:`loop_graph` below is such a builder, written for
this benchmark in that style (same edges, relation ids and edge order up to sorting).
:func:`merc.data.graphs.dialoguegcn_graph` builds the same graph with a few tensor ops
for the whole batch.

Data: iemocap6-sized synthetic dialogues (default 108 dialogues of 30-70 utterances,
mean about 50, two speakers in random turns), in batches of 32 as the paper's training,
window ``p = f = 10``. Both builders run over the whole set (the loop ``--repeats``
times, merc's builder ten times as often; best time kept), then their graphs are checked
to have the same edges and relations. Runs on CPU in well under a minute (the loop:
about 10 s per repeat on one loaded core).

Run::

    .venv/bin/python bench/bench_dialoguegcn_graph.py [--dialogues 108] [--repeats 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from merc.data.graphs import dialoguegcn_graph

T = TypeVar("T")


def edge_pairs(length: int, window_past: int, window_future: int) -> list[tuple[int, int]]:
    """(owner, neighbour) pairs of one dialogue, collected in a set as the original does."""
    pairs: set[tuple[int, int]] = set()
    positions = np.arange(length)
    for j in range(length):
        lo = 0 if window_past == -1 else max(0, j - window_past)
        hi = length if window_future == -1 else min(length, j + window_future + 1)
        for k in positions[lo:hi]:
            pairs.add((j, int(k)))
    return list(pairs)


def loop_graph(
    qmask: Tensor, lengths: list[int], window_past: int, window_future: int, num_parties: int
) -> tuple[Tensor, Tensor]:
    """``(edge_index [2, E], edge_type [E])`` built edge by edge (owner = source), the original's style.

    Args:
        qmask: ``float [T, B, P]`` one-hot speaker of each utterance (the original's layout).
        lengths: Utterances per dialogue.
    """
    table: dict[str, int] = {}
    for a in range(num_parties):
        for b in range(num_parties):
            table[f"{a}{b}0"] = len(table)
            table[f"{a}{b}1"] = len(table)
    edges: list[Tensor] = []
    types: list[int] = []
    offset = 0
    for d, length in enumerate(lengths):
        for src, tgt in edge_pairs(length, window_past, window_future):
            edges.append(torch.tensor([src + offset, tgt + offset]))
            s_src = (qmask[src, d, :] == 1).nonzero()[0][0].tolist()
            s_tgt = (qmask[tgt, d, :] == 1).nonzero()[0][0].tolist()
            types.append(table[f"{s_src}{s_tgt}{'0' if src < tgt else '1'}"])
        offset += length
    return torch.stack(edges).transpose(0, 1), torch.tensor(types)


def make_batches(dialogues: int, batch_size: int, seed: int) -> list[tuple[Tensor, Tensor, Tensor, list[int]]]:
    """``(mask [B, T], parties [B, T], qmask [T, B, 2], lengths)`` per batch."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(30, 71, dialogues).tolist()
    batches = []
    for start in range(0, dialogues, batch_size):
        chunk = lengths[start : start + batch_size]
        t = max(chunk)
        mask = torch.arange(t)[None, :] < torch.tensor(chunk)[:, None]
        parties = torch.from_numpy(rng.integers(0, 2, (len(chunk), t))) * mask
        qmask = torch.nn.functional.one_hot(parties.T, 2).float()
        batches.append((mask, parties, qmask, chunk))
    return batches


def best_time(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Best wall time of ``repeats`` calls, and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dialogues", type=int, default=108, help="dialogues (iemocap6 train+valid: 120)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window", type=int, default=10, help="p = f")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of the loop (merc: 10x as many)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = make_batches(args.dialogues, args.batch_size, args.seed)
    w = args.window

    def run_loop() -> list[tuple[Tensor, Tensor]]:
        return [loop_graph(qmask, lengths, w, w, 2) for _, _, qmask, lengths in batches]

    def run_merc() -> list[tuple[Tensor, Tensor]]:
        return [dialoguegcn_graph(mask, parties, w, w, 2)[:2] for mask, parties, _, _ in batches]

    run_merc()  # warm-up
    loop_s, loop_graphs = best_time(run_loop, args.repeats)
    merc_s, merc_graphs = best_time(run_merc, max(10 * args.repeats, 10))
    edges = 0
    for (ref_index, ref_type), (index, types) in zip(loop_graphs, merc_graphs):  # same graph up to edge order
        ref = sorted(zip(*ref_index.tolist(), ref_type.tolist()))
        assert ref == sorted(zip(*index.tolist(), types.tolist())), "the builders disagree"
        edges += len(ref)
    utterances = sum(sum(b[3]) for b in batches)
    print(
        f"{args.dialogues} dialogues, {utterances} utterances, {edges} edges, {len(batches)} batches "
        f"of {args.batch_size}, window {w}/{w}, {args.threads} thread(s)"
    )
    print(f"per-edge loop: {loop_s:.4f} s   merc dialoguegcn_graph: {merc_s:.4f} s   ratio {loop_s / merc_s:.0f}x")


if __name__ == "__main__":
    main()

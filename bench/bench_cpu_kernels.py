"""The CPU kernel measurements behind merc's bf16 and dropout choices (merc.models.layers).

Each line times one alternative with ``torch.utils.benchmark`` (median, one thread by
default) on the shapes of CORECT's text-only IEMOCAP epoch:

- matrix products of the text Transformer's feed-forward (``[480, 384] x [384, 2048]``)
  in float32 and bfloat16: GFLOP/s;
- a dropout mask multiplied into a tensor, the mask stored as ``bool`` or ``uint8``, and the
  mask cast to bfloat16 from each (why merc.models.layers.dropout keeps uint8 masks);
- softmax of bfloat16 scores computed in float32 as ``softmax(x, dtype=float32)`` or as a
  float32 copy followed by a float32 softmax (merc.models.layers.attention);
- extracting the bits of random bytes as one broadcast ``[n, 8]`` shift (inner dimension
  8), as 8 passes over the bytes, or as one broadcast ``[8, n]`` shift (inner dimension
  ``n``; merc.models.layers.dropout);
- the graph attention's queries, keys and values laid out as one ``[B * S, 3 * d]`` grid
  split by ``unbind`` or as three grids (merc.models.layers.attention.scatter_heads),
  forward and backward through ``scaled_dot_product_attention`` (10 dialogues, 94 slots,
  7 heads of 100);
- CORECT's RGCN forward and backward on a text-only graph (10 dialogues of 48
  utterances), PyG's ``RGCNConv`` against merc.models.layers.relational_conv;
- one attention forward and backward with dropout (10 dialogues, 80 steps, 8 heads of 48),
  :func:`merc.models.layers.attention.block_attention` in float32 and under bfloat16 autocast.

Results go to ``bench/results/cpu_kernels.json``.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cpu_kernels.py
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark
from torch_geometric.nn import RGCNConv

from merc.data.graphs import build_corect_graph
from merc.models.layers.attention import block_attention, scatter_heads
from merc.models.layers.relational_conv import relational_mean_conv

RESULTS = Path(__file__).parent / "results" / "cpu_kernels.json"


def median_ms(fn: Callable[[], object], threads: int) -> float:
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads)
    return 1e3 * timer.blocked_autorange(min_run_time=1.0).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows: dict[str, float] = {}

    m, k, n = 480, 384, 2048
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        ms = median_ms(lambda a=a, b=b: a @ b, args.threads)
        rows[f"matmul {m}x{k}x{n} {str(dtype)[6:]} GFLOP/s"] = 2 * m * k * n / ms / 1e6

    x = torch.rand(448, 2048)
    as_bool = torch.rand(448, 2048) > 0.5
    as_uint8 = as_bool.view(torch.uint8)
    rows["x * bool mask, ms"] = median_ms(lambda: x * as_bool, args.threads)
    rows["x * uint8 mask, ms"] = median_ms(lambda: x * as_uint8, args.threads)
    rows["bool mask to bfloat16, ms"] = median_ms(lambda: as_bool.to(torch.bfloat16), args.threads)
    rows["uint8 mask to bfloat16, ms"] = median_ms(lambda: as_uint8.to(torch.bfloat16), args.threads)

    octets = torch.randint(0, 256, (448 * 2048 // 8,), dtype=torch.uint8)
    shifts = torch.arange(8, dtype=torch.uint8)
    rows["bits by [n, 8] broadcast shift, ms"] = median_ms(
        lambda: ((octets[:, None] >> shifts) & 1).view(-1), args.threads
    )

    def bits_by_passes() -> torch.Tensor:
        fields = torch.empty(8, octets.numel(), dtype=torch.uint8)
        for i in range(8):
            torch.bitwise_right_shift(octets, i, out=fields[i])
        return fields.bitwise_and_(1).view(-1)

    rows["bits by 8 passes, ms"] = median_ms(bits_by_passes, args.threads)
    field_shifts = shifts[:, None]
    rows["bits by [8, n] broadcast shift, ms"] = median_ms(
        lambda: torch.bitwise_right_shift(octets, field_shifts).bitwise_and_(1).view(-1), args.threads
    )

    g_blocks, g_slots, g_heads, g_dim = 10, 94, 7, 100
    g_qkv = torch.randn(g_blocks * g_slots, 3 * g_heads * g_dim, requires_grad=True)
    g_index = torch.arange(g_blocks * g_slots)
    band = torch.ones(g_slots, g_slots, dtype=torch.bool).tril(9).triu(-11)[None, None]

    def one_grid() -> None:
        grid = g_qkv.new_zeros(g_blocks * g_slots, g_qkv.shape[1]).index_copy_(0, g_index, g_qkv)
        q, k, v = grid.view(g_blocks, g_slots, 3, g_heads, g_dim).permute(2, 0, 3, 1, 4).unbind(0)
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band).sum().backward()

    def three_grids() -> None:
        q, k, v = scatter_heads(g_qkv, g_index, g_blocks, g_slots, g_heads)
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band).sum().backward()

    rows["graph attention fwd+bwd, one grid + unbind, ms"] = median_ms(one_grid, args.threads)
    rows["graph attention fwd+bwd, three grids, ms"] = median_ms(three_grids, args.threads)

    # CORECT's RGCN on a text-only graph of 10 dialogues of 48 utterances (window [11, 9],
    # the 3 relations that occur with one modality): PyG's round per relation against
    # merc's one gather / scatter / product, forward and backward, float32.
    rgcn_graph = build_corect_graph(torch.full((10,), 48), "t", past=11, future=9)
    _, rgcn_types = torch.unique(rgcn_graph.edge_type, return_inverse=True)
    rgcn = RGCNConv(100, 100, num_relations=int(rgcn_types.max()) + 1)
    rgcn_x = torch.randn(480, 100, requires_grad=True)
    rows["RGCN fwd+bwd, PyG RGCNConv, ms"] = median_ms(
        lambda: rgcn(rgcn_x, rgcn_graph.edge_index, rgcn_types).sum().backward(), args.threads
    )
    rows["RGCN fwd+bwd, relational_mean_conv, ms"] = median_ms(
        lambda: relational_mean_conv(rgcn, rgcn_x, rgcn_graph.edge_index, rgcn_types).sum().backward(), args.threads
    )

    scores = torch.randn(80, 96, 96).bfloat16()
    rows["softmax(bf16, dtype=float32), ms"] = median_ms(
        lambda: torch.softmax(scores, -1, dtype=torch.float32), args.threads
    )
    rows["softmax(bf16.float()), ms"] = median_ms(lambda: torch.softmax(scores.float(), -1), args.threads)

    blocks, steps, heads, head_dim = 10, 80, 8, 48
    padding = torch.zeros(blocks, steps, dtype=torch.bool)
    padding[1:, 60:] = True  # nine shorter dialogues
    index = (~padding).reshape(-1).nonzero().squeeze(1)
    qkv = torch.randn(len(index), 3 * heads * head_dim, requires_grad=True)

    def attention(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = block_attention(qkv, index, ~padding[:, None, :], heads, dropout_p=0.5)
        out.float().sum().backward()

    rows["attention fwd+bwd with dropout, float32, ms"] = median_ms(lambda: attention(False), args.threads)
    rows["attention fwd+bwd with dropout, bf16 autocast, ms"] = median_ms(lambda: attention(True), args.threads)

    for name, value in rows.items():
        print(f"{name:55s} {value:9.3f}")
    result = {
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_flags_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text()
        if Path("/proc/cpuinfo").exists()
        else None,
        "measurements": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

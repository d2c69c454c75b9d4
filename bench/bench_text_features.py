"""Throughput of merc's text feature extraction against the bare sentence encoder.

Compares, on the same IEMOCAP transcripts and the same MiniLM model:
  - bare: ``SentenceTransformer.encode`` on the texts in corpus order;
  - merc: :func:`merc.features.text.encode_texts` (the encoder plus merc's checks);
  - merc cached: :func:`merc.features.text.cached_text_features` on a warm cache.
Checks the embeddings agree, prints utterances/second and ratios, and writes
``bench/results/text_features.json``.

Run: ``.venv/bin/python bench/bench_text_features.py [--n 2000] [--batch-size 128]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from merc.data.registry import load_dataset
from merc.features import text as tf


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = [t for c in load_dataset("iemocap6").conversations() for t in (c.texts or [])][: args.n]
    model = tf.load_sentence_encoder()
    model.encode(texts[:64], batch_size=args.batch_size)  # warm-up

    start = time.perf_counter()
    bare = model.encode(
        texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    bare_s = time.perf_counter() - start

    start = time.perf_counter()
    ours = tf.encode_texts(texts, batch_size=args.batch_size, show_progress=False)
    ours_s = time.perf_counter() - start
    max_diff = float(np.abs(bare - ours).max())

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MERC_CACHE_DIR"] = tmp
        tf.cached_text_features("bench", texts, batch_size=args.batch_size, show_progress=False)
        start = time.perf_counter()
        tf.cached_text_features("bench", texts, batch_size=args.batch_size, show_progress=False)
        cached_s = time.perf_counter() - start

    result = {
        "utterances": len(texts),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "bare_utt_per_s": len(texts) / bare_s,
        "merc_utt_per_s": len(texts) / ours_s,
        "merc_cached_utt_per_s": len(texts) / cached_s,
        "speedup_merc_vs_bare": bare_s / ours_s,
        "speedup_cached_vs_bare": bare_s / cached_s,
        "max_abs_difference": max_diff,
    }
    for k, v in result.items():
        print(f"{k:24s} {v:.4g}" if isinstance(v, float) else f"{k:24s} {v}")
    out = Path(__file__).parent / "results" / "text_features.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

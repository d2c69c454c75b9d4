"""Throughput of ``merc predict`` end to end, and of every registered model's batched inference.

Two measurements, text only, written to ``bench/results/predict.json``:

- **end to end** (:func:`merc.inference.predict.predict` on a CSV of IEMOCAP-6
  transcripts, bc-LSTM with its recipe's sizes): reading the input, MiniLM text features,
  standardisation, the model, the rows. *Cold*: an empty feature cache (the texts are
  encoded); *warm*: the same input again (features read from the cache). Utterances/s.
- **model only**: each registered model built from its ``configs/<model>/iemocap6``
  recipe (384-d text input, 6 classes, 2 speakers), evaluation mode, ``torch.no_grad``,
  on iemocap6-sized inputs (the 31 test dialogues' lengths, 1,623 utterances, or
  dialogues of 52 utterances without the data) in batches of ``--batch-size`` dialogues;
  the median of ``--repeats`` timed passes after one warm-up. Utterances/s. With
  ``--precision bf16-mixed`` under bfloat16 autocast (``merc predict --precision``), each
  model's logits compared with its float32 logits (largest probability difference,
  share of equal predicted classes).

The weights are random (a bundle of an untrained model): throughput does not depend on
them. The issue's goal: at least 20,000 utterances/s model-only for bc-LSTM and CORECT.

Run: ``.venv/bin/python bench/bench_predict.py [--threads 1] [--precision 32] [--repeats 5] [--n 1623] [--models bclstm,corect]``
(results of several thread counts and precisions are merged into the file, keyed by
thread count under ``model_only_by_threads`` (float32) or ``model_only_bf16_by_threads``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from merc.config import load_recipe
from merc.data.batching import ConversationTensors, iterate_batches
from merc.errors import MercError
from merc.models import build_model, list_models
from merc.models.registry import check_model_arguments

RESULTS = Path(__file__).resolve().parent / "results" / "predict.json"


def iemocap_test_dialogues() -> tuple[list[list[str]], list[list[str]], str]:
    """(texts, speakers) of iemocap6's test dialogues, or generated ones of the same size without the data."""
    try:
        from merc.data.registry import load_dataset

        ds = load_dataset("iemocap6", validate=False)
        convs = ds.splits["test"]
        return [list(c.texts or []) for c in convs], [list(c.speakers) for c in convs], "iemocap6 test split"
    except MercError:
        rng = np.random.default_rng(0)
        words = "i am so happy today this is terrible okay fine what do you mean really".split()
        texts = [[" ".join(rng.choice(words, 6)) for _ in range(52)] for _ in range(31)]
        return texts, [["F", "M"] * 26 for _ in range(31)], "generated (no iemocap6 data)"


def model_args(name: str) -> dict[str, Any]:
    recipe = load_recipe(name, "iemocap6")
    return check_model_arguments(name, recipe.get("model") or {})


def items_of(lengths: list[int], dim: int = 384, seed: int = 0) -> list[ConversationTensors]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k, n in enumerate(lengths):
        parties = torch.arange(n) % 2
        out.append(
            ConversationTensors(
                id=f"d{k}",
                features={"t": torch.randn(n, dim, generator=gen)},
                speakers=parties.clone(),
                parties=parties,
                labels=torch.zeros(n, dtype=torch.long),
                availability=torch.ones(n, 1, dtype=torch.bool),
            )
        )
    return out


def model_only(
    lengths: list[int], batch_size: int, repeats: int, names: list[str], precision: str = "32"
) -> dict[str, Any]:
    items = items_of(lengths)
    batches = list(iterate_batches(items, ("t",), batch_size))
    n = sum(lengths)
    out: dict[str, Any] = {}
    for name in names:
        try:
            model = build_model(
                name, in_dims={"t": 384}, num_classes=6, num_speakers=2, num_parties=2, **model_args(name)
            ).eval()
            low = precision == "bf16-mixed"
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
                probs = torch.cat([model(b).logits.float().softmax(-1) for b in batches])
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    for b in batches:
                        model(b)
                    times.append(time.perf_counter() - start)
            agreement: dict[str, float] = {}
            if low:
                with torch.inference_mode():
                    exact = torch.cat([model(b).logits.softmax(-1) for b in batches])
                agreement = {
                    "max_probability_difference_vs_fp32": float((probs - exact).abs().max()),
                    "same_class_as_fp32": float((probs.argmax(-1) == exact.argmax(-1)).float().mean()),
                }
        except (MercError, ValueError, TypeError, RuntimeError) as exc:
            out[name] = {"error": str(exc).splitlines()[0][:200]}
            print(f"{name:12s} error: {out[name]['error']}")
            continue
        median = statistics.median(times)
        out[name] = {
            "utterances_per_second": n / median,
            "seconds_median": median,
            "seconds": times,
            "parameters": sum(p.numel() for p in model.parameters()),
            **agreement,
        }
        print(f"{name:12s} {n / median:10,.0f} utt/s  ({median * 1000:.1f} ms for {n} utterances)")
    return out


def end_to_end(texts: list[list[str]], speakers: list[list[str]], n_max: int) -> dict[str, Any]:
    from merc.inference.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, Bundle
    from merc.inference.inputs import read_input
    from merc.inference.predict import predict, write_predictions

    args = model_args("bclstm")
    model = build_model("bclstm", in_dims={"t": 384}, num_classes=6, num_speakers=2, num_parties=2, **args)
    from merc.features.spec import text_encoder_spec

    labels = ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "model": {
            "name": "bclstm",
            "args": args,
            "in_dims": {"t": 384},
            "num_classes": 6,
            "num_speakers": 2,
            "num_parties": 2,
        },
        "modalities": ["t"],
        "label_names": labels,
        "speaker_vocab": ["F", "M"],
        "features": {"t": text_encoder_spec("all-MiniLM-L6-v2", 384)},
        "standardization": {"enabled": True, "eps": 1e-6, "split": "train"},
    }
    stats = {"t": (np.zeros(384, np.float32), np.full(384, 0.05, np.float32))}
    bundle = Bundle(manifest, model.state_dict(), stats, "bench")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows, total = [], 0
        for k, (ts, ss) in enumerate(zip(texts, speakers)):
            for i, (t, s) in enumerate(zip(ts, ss)):
                if total < n_max:
                    rows.append({"dialogue_id": f"d{k}", "speaker": s, "text": t, "utterance_index": i})
                    total += 1
        path = Path(tmp) / "input.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        os.environ["MERC_CACHE_DIR"] = str(Path(tmp) / "cache")
        from merc.features.text import load_sentence_encoder

        load_sentence_encoder("all-MiniLM-L6-v2", "cpu")  # loading it (once per process) is not throughput
        for phase in ("cold", "warm"):
            start = time.perf_counter()
            data = read_input(path)
            result = predict(bundle, data, show_progress=False)
            write_predictions(result, labels, Path(tmp) / "out.jsonl")
            seconds = time.perf_counter() - start
            out[phase] = {"utterances": total, "seconds": seconds, "utterances_per_second": total / seconds}
            print(f"end to end, {phase} cache: {total / seconds:,.0f} utt/s ({seconds:.2f} s for {total})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (merc's default is 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="dialogues per batch (merc predict's default)")
    parser.add_argument("--n", type=int, default=1623, help="utterances of the end-to-end input")
    parser.add_argument("--models", default=None, help="comma-separated (default: every registered model)")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"], help="model-only precision")
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else list_models()
    torch.set_num_threads(args.threads)
    texts, speakers, source = iemocap_test_dialogues()
    lengths = [len(t) for t in texts]
    print(
        f"inputs: {source}, {len(lengths)} dialogues, {sum(lengths)} utterances, {args.threads} thread(s), "
        f"precision {args.precision}"
    )
    # Runs with other thread counts or models are merged into the file, keyed by thread count.
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update(
        {
            "batch_size": args.batch_size,
            "input": {"source": source, "dialogues": len(lengths), "utterances": sum(lengths)},
            "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
            "torch": torch.__version__,
        }
    )
    key = "model_only_by_threads" if args.precision == "32" else "model_only_bf16_by_threads"
    by_threads = results.setdefault(key, {})
    measured = model_only(lengths, args.batch_size, args.repeats, names, args.precision)
    by_threads.setdefault(str(args.threads), {}).update(measured)
    if not args.skip_end_to_end:
        results.setdefault("end_to_end_bclstm_by_threads", {})[str(args.threads)] = end_to_end(texts, speakers, args.n)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

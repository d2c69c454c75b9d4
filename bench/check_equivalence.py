"""Same models before and after a refactor: init, evaluation logits and training, side by side.

Runs every model named in ``MODELS`` on a tiny generated dataset under a fixed seed, in
two processes: merc as checked out and an older merc extracted into ``--old`` (e.g. the
commit before the model-contract change). Each process records the initial parameters,
the evaluation logits and the logits after two epochs of training with the given dropout;
the parent prints the largest differences. bc-LSTM's parameters were renamed by that
change, so its old weights are mapped onto the new names before comparing.

Run::

    mkdir -p /tmp/merc_old && git archive 1a3afc3 src | tar -x -C /tmp/merc_old
    .venv/bin/python bench/check_equivalence.py --old /tmp/merc_old/src --dropout 0.0
    .venv/bin/python bench/check_equivalence.py --old /tmp/merc_old/src --dropout 0.3 --models micga
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("bclstm", "corect", "multidag", "micga")
DIMS = {"t": 12, "a": 6, "v": 8}


def _rename_bclstm(key: str) -> str:
    key = re.sub(r"^context\.(\w)\.rnn\.", r"encoders.\1.rnn.rnn.", key)
    key = re.sub(r"^dense\.(\w)\.", r"encoders.\1.projection.", key)
    return re.sub(r"^unimodal_heads\.", "unimodal_classifiers.", key)


def child(which: str, out: str, models: list[str], dropout: float, weights: str | None) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    torch.set_num_threads(1)
    from helpers import make_dataset
    from merc.data.batching import collate, to_tensors
    from merc.models import build_model
    from merc.training.trainer import TrainConfig, Trainer

    given = torch.load(weights) if weights else {}
    ds = make_dataset((3, 6, 4, 5, 2), "tav", seed=4, separable=True)
    res = {}
    for name in models:
        for mods in ("t", "tav"):
            torch.manual_seed(0)
            extra = {"unimodal_heads": False} if which == "new" and name != "bclstm" else {}
            model = build_model(
                name,
                in_dims={k: DIMS[k] for k in mods},
                num_classes=3,
                num_speakers=2,
                num_parties=2,
                dropout=dropout,
                **extra,
            )
            if name == "bclstm" and which == "new":  # another construction order: take the old weights
                model.load_state_dict({_rename_bclstm(k): v for k, v in given[(name, mods)].items()})
            data = ds.with_modalities(tuple(mods))
            tensors = to_tensors(data)
            init = {k: v.clone() for k, v in model.state_dict().items()}
            batch = collate(tensors["train"], data.modalities)
            with torch.no_grad():
                before = model.eval()(batch).logits
            config = TrainConfig(epochs=2, lr=0.003, batch_size=2, patience=0, show_progress=False, clip_grad_norm=1.0)
            Trainer(model, tensors, data.modalities, 3, config).fit()
            with torch.no_grad():
                after = model.eval()(batch).logits
            res[(name, mods)] = {"init": init, "before": before, "after": after}
    torch.save(res, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="src/ folder of the older merc")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.models.split(",")
    if args.child:
        child(args.child[0], args.child[1], models, args.dropout, args.weights)
        return
    with tempfile.TemporaryDirectory() as tmp:
        old, new = Path(tmp) / "old.pt", Path(tmp) / "new.pt"
        common = [sys.executable, __file__, "--old", args.old, "--dropout", str(args.dropout), "--models", args.models]
        subprocess.run(
            [*common, "--child", "old", str(old)], check=True, cwd=tmp, env={**os.environ, "PYTHONPATH": args.old}
        )
        olds = torch.load(old)
        torch.save({k: v["init"] for k, v in olds.items()}, Path(tmp) / "w.pt")
        subprocess.run([*common, "--child", "new", str(new), "--weights", str(Path(tmp) / "w.pt")], check=True, cwd=tmp)
        news = torch.load(new)
    for key, a in olds.items():
        b = news[key]
        same_init = [v for k, v in sorted(a["init"].items())] and sorted(
            (tuple(v.shape), float(v.sum())) for v in a["init"].values()
        ) == sorted((tuple(v.shape), float(v.sum())) for k, v in b["init"].items() if not k.startswith("unimodal_"))
        print(
            f"{key[0]:9s} {key[1]:4s} same init: {bool(same_init)}  eval logits max diff "
            f"{(a['before'] - b['before']).abs().max():.2e}  after 2 epochs {(a['after'] - b['after']).abs().max():.2e}"
        )


if __name__ == "__main__":
    main()

"""DialogueGCN, MMGCN, MM-DFN, COGMEN and DAG-ERC: training speed and accuracy of merc against the authors' code.

The same kind of harness as ``bench_corect.py``, for the five baselines whose authors' code
is public:

===========  =====================================================  ===============================
section      reference (passed as ``--reference-<name> DIR``)       what it reads
===========  =====================================================  ===============================
dialoguegcn  github.com/declare-lab/conv-emotion, ``DialogueGCN/``  9-tuple IEMOCAP pickle
mmgcn        github.com/hujingwen6666/MMGCN                         9-tuple IEMOCAP pickle
mmdfn        github.com/zerohd4869/MM-DFN (``code/``)               9-tuple IEMOCAP pickle
cogmen       github.com/Exploration-Lab/COGMEN (``cogmen/``)        ``data_iemocap.pkl`` dict
dagerc       github.com/shenwzh3/DAG-ERC                            ``*_data_roberta.json.feature``
===========  =====================================================  ===============================

The reference is never part of merc. ``DIR`` is the folder holding the code (for
DialogueGCN the ``DialogueGCN`` folder or the conv-emotion root; for MM-DFN ``code/`` or the
repository root; for DAG-ERC the repository root, which holds ``run.py``). It is copied into
a temporary folder and imported from there; the copy is patched where the code no longer
runs (below), the original is never touched.

Data. merc's ``iemocap6`` text-only MiniLM features, standardised as merc's runner does
(``merc.training.runner.prepare_dataset`` with each model's recipe), written in each
reference's input format into the temporary folder:

- DialogueGCN, MMGCN, MM-DFN: the DialogueGCN 9-tuple ``IEMOCAP_features.pkl``
  (``videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual,
  videoSentence, trainVid, testVid``; speakers ``'M'``/``'F'``; labels in the published
  order, which is merc's). ``trainVid`` is merc's ``train`` split, ``testVid`` its
  ``test``; merc's ``valid`` dialogues (COSMIC's 12) are in the dicts but in neither
  list. Audio and visual are zero arrays of the reference's dims (DialogueGCN 100/512,
  MMGCN and MM-DFN IS10 1582 / denseface 342); a text-only run loads and pads them but
  never reads them.
- COGMEN: its ``data_iemocap.pkl`` (``train``/``dev``/``test`` lists of its
  ``cogmen.Sample`` objects; ``sbert_sentence_embeddings``, which its ``Dataset`` reads
  for ``t``, hold merc's features; merc's ``valid`` is ``dev``).
- DAG-ERC: ``../data/IEMOCAP/{train,dev,test}_data_roberta.json.feature`` beside the copied
  code (one JSON list of dialogues, each a list of ``{text, label, speaker, cls}``
  utterances, ``cls`` = merc's feature vector; merc's ``valid`` is ``dev``) and
  ``speaker_vocab.pkl`` / ``label_vocab.pkl`` (``{"itos", "stoi"}``: merc's speaker
  vocabulary and its label names in merc's order, so the class ids are merc's). The
  dataset name ``IEMOCAP`` selects the code's IEMOCAP paths (weighted F1).

Validation. None of the three 9-tuple scripts has a validation split: they run with
``valid=0.0`` / ``--valid_rate 0.0`` and report the test F1 of the best *test* epoch
(DialogueGCN, MMGCN: ``max(all_fscore)`` over test; MM-DFN: the epoch of best test F1,
stopping when neither test F1 nor test loss improved for ``--patience 5`` epochs). The
harness adds merc's validation split the minimal way: a second instance of the
reference's own ``IEMOCAPDataset`` whose ``keys`` are the valid ids, evaluated with the
reference's own ``train_or_eval_graph_model`` after each epoch (each call reseeds the RNG
as the code does, so the extra evaluation does not change training). Every epoch's
validation and test weighted F1 are recorded and two numbers reported: test F1 at the
max-test epoch (what the authors' script prints; for MM-DFN, within its early-stopping
window) and test F1 at the best-validation epoch (honest selection). COGMEN selects on
its dev split itself (``Coach.train``); its max-test number is given for comparison.
DAG-ERC's ``run.py`` evaluates dev and test after every epoch and logs both the test F1 of
the best dev epoch (epochs sorted by (dev, test) F1: a tie on dev goes to the higher
test F1; recorded as ``own_best_dev_epoch``) and the max test F1; the harness runs the
same loop (``train_or_eval_model`` on train, dev, test per epoch).

Settings: each reference's README / run script for IEMOCAP, text only, and merc's recipe
for the same model (``configs/<name>/default.yaml``, ``--modalities t``):

- DialogueGCN: README command ``--base-model LSTM --graph-model --nodal-attention
  --dropout 0.4 --lr 0.0003 --batch-size 32 --class-weight --l2 0.0``, 60 epochs,
  window 10/10; ``D_m`` = the feature width (the script's 100 is its textCNN width).
- MMGCN: run.sh's IEMOCAP command ``--base-model LSTM --graph-model --nodal-attention
  --dropout 0.4 --lr 0.0003 --batch-size 16 --l2 0.00003 --graph_type MMGCN --epochs 20
  --graph_construct direct --multi_modal --mm_fusion_mthd concat_subsequently
  --Deep_GCN_nlayers 4 --class-weight --use_speaker`` with ``--modals l``.
- MM-DFN: run_train_ie.sh (``--class_weight --reason_flag --valid_rate 0.0
  --speaker_weights 3-0-1``) at run_train_erc.py's defaults, which are one point of the
  script's sweep (16 layers, lr 0.0003, l2 0.0001, dropout 0.4, gamma 0.5; focal loss,
  30 epochs, batch 32, patience 5), ``--modals l``.
- COGMEN: README ``train.py --modalities ... --from_begin --epochs 55`` with
  ``--dataset iemocap`` (6 classes) and ``--modalities t``, every other value at train.py's
  defaults (transformer, hidden 100, wp = wf = 5, lr 0.0001, batch 32, ReduceLROnPlateau).
- DAG-ERC: README ``run.py --dataset IEMOCAP --gnn_layers 4 --lr 0.0005 --batch_size 16
  --epochs 30 --dropout 0.2``, parsed by run.py's own parser (rebuilt from its
  ``add_argument`` calls) so every other value is its default (hidden 300, 2 MLP layers,
  ``--attn_type rgcn``, windowp 1, max_grad_norm 5.0, no nodal attention), with
  ``--emb_dim`` = the feature width (the script's 1024 is RoBERTa-large's) and
  ``--no_cuda``. Model ``DAGERC_fushion``, ``nn.CrossEntropyLoss(ignore_index=-1)``,
  ``AdamW(lr)`` as run.py builds them.

Seeds. The 9-tuple scripts seed everything with a fixed module constant (DialogueGCN 100,
MMGCN 27350, MM-DFN ``--seed 2021``) at model construction and again at the start of every
``train_or_eval_graph_model`` call; the harness sets that constant to the run's seed
(``seed_everything.__defaults__``, ``args.seed``). COGMEN: ``cogmen.utils.set_seed(seed)``.
DAG-ERC: run.py's ``seed_everything(seed)`` (its constant is 100) before the loaders (its
``IEMOCAPDataset`` shuffles the dialogues with ``random`` when it reads them) and the model.

Shims and patches (in the temporary folder / process only):

- all: a minimal ``pandas`` (``DataFrame(rows)``: columns as lists with ``tolist()``,
  all the loaders' ``collate_fn`` uses) and an empty ``ipdb`` are put on the path;
  merc's environment has neither.
- DialogueGCN ``model.py``: ``mask[edge_ind_] = 1`` and ``mask_copy[edge_ind_] = 1``
  become ``mask[tuple(edge_ind_)]`` (current PyTorch (2.x) no longer reads a ``[3, E]`` numpy
  index as a tuple of index arrays: it raises an IndexError). At run time ``model.RGCNConv``
  is replaced by :class:`RGCNConv13`, PyTorch Geometric 1.3's ``RGCNConv`` (basis
  decomposition, root weight, bias, messages multiplied by ``edge_norm`` and added), because
  the current ``RGCNConv`` takes no edge weights. It computes ``x W_r`` once per relation
  and gathers, where PyG 1.3 materialised one ``[in, out]`` matrix per edge (gigabytes per
  batch of 32 dialogues); same numbers, less time, so the reference's speed here is an
  upper bound on the original's.
- MMGCN ``model.py``, ``model_GCN.py``, ``model_mm.py``; MM-DFN the same and
  ``model_fusion.py``: every ``.cuda()`` is removed (``MM_GCN`` moves tensors to the GPU
  unconditionally), and ``MM_GCN`` gets a one-modality branch (``features = l``; the code
  handles only 2 or 3 modalities and returns ``NotImplementedError`` otherwise) in
  ``forward`` (node features and the split of the graph output) and in ``create_big_adj``.
  With one modality the graph is the intra-modal cosine-similarity graph of the text nodes.
- COGMEN: a ``sentence_transformers`` stub (``cogmen/Sample.py`` loads an SBERT model at
  import; unpickled samples never call it). ``comet_ml`` is only imported by ``train.py``,
  which is not imported.
- DAG-ERC: a ``transformers`` shim in the copy (the code was written for transformers 3.5;
  merc's environment has none or a current one, which has no ``AdamW``): ``AdamW`` is
  ``torch.optim.AdamW`` with transformers 3.5's defaults (betas (0.9, 0.999), eps 1e-6,
  weight decay 0, bias correction; the one difference, torch adding eps to
  ``sqrt(v_hat)`` rather than to ``sqrt(v)``, is below 1e-6 relative), and the BERT
  classes ``model.py`` / ``dataloader.py`` import but ``DAGERC_fushion`` never uses are
  stubs that raise. It shadows an installed ``transformers`` only while the reference is
  imported. ``run.py``'s module-level ``os.environ["CUDA_VISIBLE_DEVICES"] = '0'`` is
  removed (importing it would hide the GPUs of the whole process; only its ``__main__``
  block, which is not run, reads it). No code forces CUDA: ``train_or_eval_model`` moves
  tensors only when its ``cuda`` argument is true (here false). ``tensorboardX`` is only
  imported with ``--tensorboard`` (off).

Timing (``--repeats K``): per model and ``--threads`` value, one training epoch of the
reference and one of merc alternated, after one untimed warm-up epoch each; median
seconds per epoch of both and the ratio reference / merc (``speedup``).
``--merc-override section.key=value`` changes merc's recipe only (e.g.
``training.precision=bf16-mixed``); each timing row and parity section records the
overrides it ran with.

Parity (``--seeds 0,1,2``): per seed both train to completion (``--epochs`` overrides
each reference's epoch count and merc's, for both); merc selects on validation
(``Trainer.fit``). Mean ± std over seeds of merc's test weighted F1 and of the
reference's at the max-test and at the best-validation epoch.

``--max-dialogues N`` keeps N dialogues per split (chosen to cover all 6 classes), for
smoke tests only. Results go to ``bench/results/baselines.json`` (``--out``), one section
per model; a run that measures only timing or only parity, or only some models, keeps
the other sections of the file.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_baselines.py --models dialoguegcn,mmgcn,mmdfn,cogmen \\
        --reference-dialoguegcn /tmp/ref_dialoguegcn/DialogueGCN --reference-mmgcn /tmp/ref_mmgcn \\
        --reference-mmdfn /tmp/ref_mmdfn --reference-cogmen /tmp/ref_cogmen --repeats 5 --threads 1
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/bench_baselines.py --models cogmen \\
        --reference-cogmen /tmp/ref_cogmen --repeats 0 --seeds 0,1,2
    # COGMEN and MM-DFN as the README times them (bf16 autocast on merc's side only)
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_baselines.py --models mmdfn,cogmen \\
        --reference-mmdfn /tmp/ref_mmdfn --reference-cogmen /tmp/ref_cogmen --repeats 5 --threads 1,2 \\
        --merc-override training.precision=bf16-mixed
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_baselines.py --models dagerc \\
        --reference-dagerc /tmp/ref_dagerc --repeats 5 --seeds 0,1,2
    # smoke test: 1 epoch on a few dialogues
    .venv/bin/python bench/bench_baselines.py --reference-mmgcn /tmp/ref_mmgcn --models mmgcn \\
        --max-dialogues 4 --repeats 1 --seeds 0 --epochs 1 --out /tmp/smoke.json
"""

from __future__ import annotations

import os

# The references wrap epochs in tqdm bars; silence them (tqdm reads TQDM_* at import).
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import ast  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import pickle  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType, SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from merc.data.batching import to_tensors  # noqa: E402
from merc.data.schema import MercDataset, class_weights  # noqa: E402
from merc.training.plugins.registry import build_plugins  # noqa: E402
from merc.training.runner import model_for, prepare_dataset, resolve_recipe, train_one_seed  # noqa: E402
from merc.training.trainer import TrainConfig, Trainer, seed_everything  # noqa: E402

MODELS = ("dialoguegcn", "mmgcn", "mmdfn", "cogmen", "dagerc")
RESULTS = Path(__file__).parent / "results" / "baselines.json"
#: The three 9-tuple scripts' IEMOCAP class weights (1 / class frequency, hard-coded in each).
IEMOCAP_LOSS_WEIGHTS = [1 / 0.086747, 1 / 0.144406, 1 / 0.227883, 1 / 0.160585, 1 / 0.127711, 1 / 0.252668]
IEMOCAP_TARGET_NAMES = ["hap", "sad", "neu", "ang", "exc", "fru"]
#: Top-level module names the references define; purged from ``sys.modules`` between references.
_REFERENCE_MODULES = (
    "model",
    "model_GCN",
    "model_mm",
    "model_fusion",
    "dataloader",
    "loss",
    "train",
    "train_IEMOCAP",
    "run_train_erc",
    "cogmen",
    "run",
    "dataset",
    "trainer",
    "utils",
    "model_utils",
    "pandas",
    "ipdb",
    "sentence_transformers",
)

_PANDAS_SHIM = '''"""bench_baselines shim: the part of pandas the reference loaders' collate_fn uses.

scikit-learn finds this module in sys.modules and asks isinstance(X, (DataFrame, Series)).
"""


class Series:
    pass


class _Column(list):
    def tolist(self):
        return list(self)


class DataFrame:
    def __init__(self, rows):
        self._columns = [_Column(c) for c in zip(*rows)]

    def __iter__(self):
        return iter(range(len(self._columns)))

    def __getitem__(self, i):
        return self._columns[i]
'''

_SENTENCE_TRANSFORMERS_SHIM = '''"""bench_baselines shim: COGMEN's Sample.py loads SBERT at import; unpickled samples never encode."""


class SentenceTransformer:
    def __init__(self, *args, **kwargs):
        pass

    def encode(self, *args, **kwargs):
        raise RuntimeError("bench_baselines: SBERT is stubbed; samples carry their embeddings")
'''

_TRANSFORMERS_SHIM = '''"""bench_baselines shim: the part of transformers 3.5 DAG-ERC imports.

AdamW is torch's with transformers 3.5's defaults; the BERT classes are imported by model.py and
dataloader.py but only used by models the harness does not build.
"""

import torch


class AdamW(torch.optim.AdamW):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, correct_bias=True):
        if not correct_bias:
            raise NotImplementedError("bench_baselines: AdamW shim without bias correction")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class _Stub:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("bench_baselines: transformers is stubbed; DAGERC_fushion reads features")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        cls()

    from_json_file = from_pretrained


BertModel = BertConfig = BertTokenizer = AutoTokenizer = AutoModelWithLMHead = _Stub
'''


# --------------------------------------------------------------------------- shims


class RGCNConv13(nn.Module):
    """PyTorch Geometric 1.3's ``RGCNConv`` (what DialogueGCN was written against).

    ``out_i = x_i W_root + b + sum_{j -> i} edge_norm_ij * x_j W_{r_ij}``, with
    ``W_r = sum_b att[r, b] basis[b]``; messages flow source -> target and are added.
    Initialised as 1.3 did: uniform in ``+-1/sqrt(num_bases * in_channels)``.

    Shapes:
        x ``[N, in]``, edge_index ``[2, E]``, edge_type ``[E]``, edge_norm ``[E]`` ->
        ``[N, out]``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_relations: int, num_bases: int, **_: Any) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_relations, self.num_bases = num_relations, num_bases
        self.basis = nn.Parameter(torch.empty(num_bases, in_channels, out_channels))
        self.att = nn.Parameter(torch.empty(num_relations, num_bases))
        self.root = nn.Parameter(torch.empty(in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels))
        bound = 1.0 / math.sqrt(num_bases * in_channels)
        for p in (self.basis, self.att, self.root, self.bias):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor, edge_norm: Tensor | None = None) -> Tensor:
        w = (self.att @ self.basis.view(self.num_bases, -1)).view(self.num_relations, self.in_channels, -1)
        per_relation = torch.einsum("ni,rio->rno", x, w)  # x W_r for every node and relation
        messages = per_relation[edge_type, edge_index[0]]
        if edge_norm is not None:
            messages = messages * edge_norm.view(-1, 1)
        out = torch.zeros(x.size(0), self.out_channels, dtype=x.dtype, device=x.device)
        out = out.index_add(0, edge_index[1], messages)
        return out + x @ self.root + self.bias


def _patch(text: str, pattern: str, repl: str, what: str) -> str:
    new, n = re.subn(pattern, repl, text)
    if n == 0:
        raise RuntimeError(
            f"patch '{what}' found nothing to change: the reference code differs from the expected version"
        )
    return new


def _single_modality_patch(text: str) -> str:
    """``MM_GCN`` (MMGCN, MM-DFN) with a one-modality branch; applied after ``.cuda()`` removal."""
    text = _patch(
        text,
        r"(\n([ \t]+))if len\(self\.modals\) == 3:\n([ \t]+)(features(?:_i)?) = torch\.cat\(\[a, v, l\], dim=0\)",
        r"\1if len(self.modals) == 1:\n\3\4 = [a, v, l]['avl'.index(self.modals[0])]"
        r"\n\2elif len(self.modals) == 3:\n\3\4 = torch.cat([a, v, l], dim=0)",
        "MM_GCN.forward: one-modality node features",
    )
    text = _patch(
        text,
        r"(\n([ \t]+))if len\(modals\) == 3:\n([ \t]+)features = \[a, v, l\]",
        r"\1if len(modals) == 1:\n\3features = [[a, v, l]['avl'.index(modals[0])]]"
        r"\n\2elif len(modals) == 3:\n\3features = [a, v, l]",
        "MM_GCN.create_big_adj: one-modality graph",
    )
    return _patch(
        text,
        r"(\n[ \t]*\n?([ \t]+))else:\n([ \t]+)features = torch\.cat\(\[features\[:all_length\], "
        r"features\[all_length:all_length \* 2\]\], dim=-1\)",
        r"\1elif len(self.modals) == 2:\n\3features = torch.cat([features[:all_length], "
        r"features[all_length:all_length * 2]], dim=-1)",
        "MM_GCN.forward: one-modality output",
    )


def _no_cuda(text: str) -> str:
    return text.replace(".cuda()", "")


def _edge_mask_patch(text: str) -> str:
    text = _patch(text, r"\bmask\[edge_ind_\] = 1", "mask[tuple(edge_ind_)] = 1", "MaskedEdgeAttention mask index")
    return _patch(text, r"mask_copy\[edge_ind_\] = 1", "mask_copy[tuple(edge_ind_)] = 1", "mask_copy index")


def copy_reference(src: Path, dst: Path, patches: dict[str, Callable[[str], str]]) -> Path:
    """Copy the reference's ``.py`` files to ``dst``, apply ``patches`` (file -> text edit), add the shims."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(
        src, dst, ignore=lambda _d, names: [n for n in names if n.endswith((".pkl", ".pt", ".zip", ".pyc"))]
    )
    for name, edit in patches.items():
        path = dst / name
        path.write_text(edit(path.read_text(encoding="utf-8", errors="replace")), encoding="utf-8")
    (dst / "pandas.py").write_text(_PANDAS_SHIM)
    (dst / "ipdb.py").write_text('"""bench_baselines shim: imported, never used."""\n')
    (dst / "sentence_transformers.py").write_text(_SENTENCE_TRANSFORMERS_SHIM)
    return dst


def import_from(folder: Path, names: list[str], shadow: tuple[str, ...] = ()) -> dict[str, ModuleType]:
    """Import ``names`` from ``folder`` with a clean slate (the references share module names).

    ``shadow``: packages the folder holds a shim of. An installed package of that name,
    already imported, is set aside during the import and put back after; the shim leaves
    ``sys.modules`` (the reference's modules keep the names they bound from it).
    """
    for mod in list(sys.modules):
        if mod.split(".")[0] in _REFERENCE_MODULES:
            del sys.modules[mod]
    aside = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] in shadow}
    sys.path.insert(0, str(folder))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return {n: importlib.import_module(n) for n in names}
    finally:
        sys.path.remove(str(folder))
        for mod in [m for m in sys.modules if m.split(".")[0] in shadow]:
            del sys.modules[mod]
        sys.modules.update(aside)


def _find(root: Path, marker: str, subdirs: tuple[str, ...]) -> Path:
    for sub in ("", *subdirs):
        if (root / sub / marker).is_file():
            return root / sub
    raise SystemExit(f"{root} holds no {marker} (looked in {', '.join(repr(s) for s in ('', *subdirs))})")


# --------------------------------------------------------------------------- data


def subset(data: MercDataset, max_dialogues: int) -> MercDataset:
    """At most ``max_dialogues`` per split, greedily covering every class first (smoke tests)."""
    splits = {}
    for name, convs in data.splits.items():
        chosen: list[int] = []
        seen: set[int] = set()
        for i, c in enumerate(convs):
            if len(chosen) < max_dialogues and not set(c.labels.tolist()) <= seen:
                chosen.append(i)
                seen |= set(c.labels.tolist())
        for i in range(len(convs)):
            if len(chosen) >= max_dialogues:
                break
            if i not in chosen:
                chosen.append(i)
        splits[name] = [convs[i] for i in sorted(chosen)]
    return dataclasses.replace(data, splits=splits)


def _role(speaker: str) -> str:
    if speaker not in ("M", "F"):
        raise ValueError(f"speaker {speaker!r}: the references' IEMOCAP loaders expect 'M'/'F'")
    return speaker


def write_dialoguegcn_pickle(data: MercDataset, path: Path, audio_dim: int, visual_dim: int) -> None:
    """merc's splits as the DialogueGCN 9-tuple (valid dialogues in the dicts, in neither id list)."""
    ids, spk, lab, text, audio, visual, sent = {}, {}, {}, {}, {}, {}, {}
    for conv in (c for split in ("train", "valid", "test") for c in data.splits[split]):
        n = len(conv)
        if int(conv.labels.min()) < 0:
            raise ValueError(f"{conv.id}: unlabelled utterances; the references cannot train on them")
        ids[conv.id] = list(conv.utterance_ids or [f"{conv.id}_{i}" for i in range(n)])
        spk[conv.id] = [_role(s) for s in conv.speakers]
        lab[conv.id] = [int(y) for y in conv.labels]
        text[conv.id] = np.asarray(conv.features["t"], dtype=np.float32)
        audio[conv.id] = np.zeros((n, audio_dim), np.float32)
        visual[conv.id] = np.zeros((n, visual_dim), np.float32)
        sent[conv.id] = list(conv.texts or [""] * n)
    train = [c.id for c in data.splits["train"]]
    test = [c.id for c in data.splits["test"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump((ids, spk, lab, text, audio, visual, sent, train, test), f)


def write_cogmen_pickle(data: MercDataset, path: Path, sample_cls: type) -> None:
    """merc's splits as COGMEN's ``data_iemocap.pkl``: lists of ``cogmen.Sample`` (valid -> dev)."""
    out: dict[str, list[Any]] = {}
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        samples = []
        for conv in data.splits[split]:
            feats = np.asarray(conv.features["t"], dtype=np.float32)
            s = sample_cls.__new__(sample_cls)  # its __init__ would encode the sentences with SBERT
            s.__dict__.update(
                vid=conv.id,
                speaker=[_role(x) for x in conv.speakers],
                label=[int(y) for y in conv.labels],
                text=list(feats),
                audio=[np.zeros(100, np.float32)] * len(conv),
                visual=[np.zeros(512, np.float32)] * len(conv),
                sentence=list(conv.texts or [""] * len(conv)),
                sbert_sentence_embeddings=feats,
            )
            samples.append(s)
        out[name] = samples
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(out, f)


def write_dagerc_data(data: MercDataset, folder: Path) -> None:
    """merc's splits in DAG-ERC's input format under ``folder`` (its ``../data/<dataset>``).

    ``{train,dev,test}_data_roberta.json.feature``: per dialogue a list of utterances
    ``{"text", "speaker", "label", "cls"}`` (``label`` a class name, left out for an
    unlabelled utterance, which the code reads as -1 and ignores; ``cls`` the feature
    vector); ``speaker_vocab.pkl`` and ``label_vocab.pkl``: ``{"itos": [...], "stoi": {...}}``
    with merc's speaker vocabulary and label names, so the code's class ids are merc's.
    """
    folder.mkdir(parents=True, exist_ok=True)
    speakers = list(data.speaker_vocab) or sorted(
        {s for convs in data.splits.values() for c in convs for s in c.speakers}
    )
    for name, itos in (("speaker_vocab", speakers), ("label_vocab", list(data.label_names))):
        with open(folder / f"{name}.pkl", "wb") as f:
            pickle.dump({"itos": itos, "stoi": {s: i for i, s in enumerate(itos)}}, f)
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        dialogues = []
        for conv in data.splits[split]:
            feats = np.asarray(conv.features["t"], dtype=np.float32)
            texts = conv.texts or [""] * len(conv)
            utterances = []
            for text, speaker, y, x in zip(texts, conv.speakers, conv.labels.tolist(), feats, strict=True):
                u: dict[str, Any] = {"text": text, "speaker": speaker, "cls": x.tolist()}
                if y >= 0:
                    u["label"] = data.label_names[y]
                utterances.append(u)
            dialogues.append(utterances)
        (folder / f"{name}_data_roberta.json.feature").write_text(json.dumps(dialogues), encoding="utf-8")


# --------------------------------------------------------------------------- references


class ReferenceRun:
    """One reference model, optimiser and data loaders, trained epoch by epoch."""

    def train_epoch(self) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """``valid_f1``, ``test_f1`` (percent) and ``test_loss`` after the last epoch."""
        raise NotImplementedError


class GraphScriptRun(ReferenceRun):
    """A reference's own epoch function and loaders: DialogueGCN / MMGCN / MM-DFN
    ``train_or_eval_graph_model``, DAG-ERC ``train_or_eval_model``."""

    def __init__(self, step: Callable[..., tuple[float, float]], loaders: dict[str, Any]) -> None:
        self.step, self.loaders, self.epoch = step, loaders, 0

    def train_epoch(self) -> None:
        self.step(self.loaders["train"], self.epoch, train=True)
        self.epoch += 1

    def evaluate(self) -> dict[str, float]:
        _, valid_f1 = self.step(self.loaders["valid"], self.epoch)
        test_loss, test_f1 = self.step(self.loaders["test"], self.epoch)
        return {"valid_f1": float(valid_f1), "test_f1": float(test_f1), "test_loss": float(test_loss)}


class Reference:
    """A prepared reference (patched copy, input file, imported modules) that builds runs."""

    name: str
    #: The reference's own epoch count for IEMOCAP.
    epochs: int
    #: Its settings, recorded in the results.
    settings: dict[str, Any]
    #: ``"max_test"`` (reports the best test epoch) or ``"best_dev"`` (selects on its dev split).
    own_selection: str = "max_test"

    def build(self, seed: int, epochs: int) -> ReferenceRun:
        raise NotImplementedError


def _valid_loader(dataset_cls: Callable[..., Any], valid_ids: list[str], batch_size: int, **kw: Any) -> Any:
    """The validation split the scripts lack: their own dataset class over merc's valid ids."""
    ds = dataset_cls(train=True, **kw)
    ds.keys = list(valid_ids)
    ds.len = len(ds.keys)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=ds.collate_fn, num_workers=0)


class DialogueGCNReference(Reference):
    name, epochs = "dialoguegcn", 60
    settings = {
        "base_model": "LSTM",
        "nodal_attention": True,
        "dropout": 0.4,
        "lr": 0.0003,
        "l2": 0.0,
        "batch_size": 32,
        "class_weight": True,
        "window": [10, 10],
        "epochs": 60,
    }

    def __init__(self, root: Path, work: Path, data: MercDataset) -> None:
        src = _find(root, "train_IEMOCAP.py", ("DialogueGCN",))
        self.dir = copy_reference(src, work / "ref_dialoguegcn", {"model.py": _edge_mask_patch})
        write_dialoguegcn_pickle(data, self.dir / "IEMOCAP_features" / "IEMOCAP_features.pkl", 100, 512)
        self.mods = import_from(self.dir, ["model", "dataloader", "train_IEMOCAP"])
        self.mods["model"].RGCNConv = RGCNConv13  # GraphNetwork looks the name up when built
        self.text_dim = data.dims["t"]
        self.valid_ids = [c.id for c in data.splits["valid"]]

    def build(self, seed: int, epochs: int) -> ReferenceRun:
        tr, m = self.mods["train_IEMOCAP"], self.mods["model"]
        tr.args = SimpleNamespace(tensorboard=False)
        tr.seed_everything.__defaults__ = (seed,)
        s = self.settings
        with contextlib.chdir(self.dir), contextlib.redirect_stdout(io.StringIO()):
            tr.seed_everything()
            model = m.DialogueGCNModel(
                "LSTM",
                self.text_dim,
                150,
                150,
                100,
                100,
                100,
                100,
                n_speakers=2,
                max_seq_len=110,
                window_past=10,
                window_future=10,
                n_classes=6,
                listener_state=False,
                context_attention="general",
                dropout=s["dropout"],
                nodal_attention=True,
                no_cuda=True,
            )
            loss_f = nn.NLLLoss(torch.FloatTensor(IEMOCAP_LOSS_WEIGHTS))
            opt = torch.optim.Adam(model.parameters(), lr=s["lr"], weight_decay=s["l2"])
            train, _, test = tr.get_IEMOCAP_loaders(valid=0.0, batch_size=s["batch_size"], num_workers=0)
            valid = _valid_loader(self.mods["dataloader"].IEMOCAPDataset, self.valid_ids, s["batch_size"])

        def step(loader: Any, epoch: int, train: bool = False) -> tuple[float, float]:
            out = tr.train_or_eval_graph_model(model, loss_f, loader, epoch, False, opt if train else None, train)
            return out[0], out[4]

        return GraphScriptRun(step, {"train": train, "valid": valid, "test": test})


class MMGCNReference(Reference):
    name, epochs = "mmgcn", 20
    settings = {
        "base_model": "LSTM",
        "graph_type": "MMGCN",
        "mm_fusion_mthd": "concat_subsequently",
        "modals": "l",
        "dropout": 0.4,
        "lr": 0.0003,
        "l2": 0.00003,
        "batch_size": 16,
        "Deep_GCN_nlayers": 4,
        "class_weight": True,
        "use_speaker": True,
        "epochs": 20,
    }
    _model_files = ("model.py", "model_GCN.py", "model_mm.py")

    def __init__(self, root: Path, work: Path, data: MercDataset) -> None:
        src = _find(root, "model_mm.py", ())
        patches: dict[str, Callable[[str], str]] = {f: _no_cuda for f in self._model_files}
        patches["model_mm.py"] = lambda t: _single_modality_patch(_no_cuda(t))
        self.dir = copy_reference(src, work / "ref_mmgcn", patches)
        write_dialoguegcn_pickle(data, self.dir / "IEMOCAP_features" / "IEMOCAP_features.pkl", 1582, 342)
        self.mods = import_from(self.dir, ["model", "dataloader", "train"])
        self.text_dim = data.dims["t"]
        self.valid_ids = [c.id for c in data.splits["valid"]]

    def build(self, seed: int, epochs: int) -> ReferenceRun:
        tr, m = self.mods["train"], self.mods["model"]
        s = self.settings
        tr.args = SimpleNamespace(multi_modal=True, mm_fusion_mthd=s["mm_fusion_mthd"], tensorboard=False)
        tr.seed_everything.__defaults__ = (seed,)
        with contextlib.chdir(self.dir), contextlib.redirect_stdout(io.StringIO()):
            tr.seed_everything()
            model = m.DialogueGCNModel(
                "LSTM",
                self.text_dim,
                150,
                150,
                100,
                100,
                100,
                100,
                n_speakers=2,
                max_seq_len=200,
                window_past=10,
                window_future=10,
                n_classes=6,
                listener_state=False,
                context_attention="general",
                dropout=s["dropout"],
                nodal_attention=True,
                no_cuda=True,
                graph_type="MMGCN",
                use_topic=False,
                alpha=0.2,
                multiheads=6,
                graph_construct="direct",
                use_GCN=False,
                use_residue=True,
                D_m_v=342,
                D_m_a=1582,
                modals=s["modals"],
                att_type=s["mm_fusion_mthd"],
                av_using_lstm=False,
                Deep_GCN_nlayers=s["Deep_GCN_nlayers"],
                dataset="IEMOCAP",
                use_speaker=True,
                use_modal=False,
            )
            loss_f = nn.NLLLoss(torch.FloatTensor(IEMOCAP_LOSS_WEIGHTS))
            opt = torch.optim.Adam(model.parameters(), lr=s["lr"], weight_decay=s["l2"])
            train, _, test = tr.get_IEMOCAP_loaders(valid=0.0, batch_size=s["batch_size"], num_workers=0)
            valid = _valid_loader(self.mods["dataloader"].IEMOCAPDataset, self.valid_ids, s["batch_size"])

        def step(loader: Any, epoch: int, train: bool = False) -> tuple[float, float]:
            out = tr.train_or_eval_graph_model(
                model, loss_f, loader, epoch, False, s["modals"], opt if train else None, train
            )
            return out[0], out[4]

        return GraphScriptRun(step, {"train": train, "valid": valid, "test": test})


class MMDFNReference(Reference):
    name, epochs = "mmdfn", 30
    settings = {
        "base_model": "LSTM (GRU cells)",
        "graph_type": "GDF",
        "mm_fusion_mthd": "concat_subsequently",
        "modals": "l",
        "Deep_GCN_nlayers": 16,
        "lr": 0.0003,
        "l2": 0.0001,
        "dropout": 0.4,
        "gamma": 0.5,
        "alpha": 0.2,
        "lamda": 0.5,
        "speaker_weights": "3-0-1",
        "class_weight": True,
        "reason_flag": True,
        "loss": "FocalLoss",
        "batch_size": 32,
        "epochs": 30,
        "patience": 5,
    }

    def __init__(self, root: Path, work: Path, data: MercDataset) -> None:
        src = _find(root, "run_train_erc.py", ("code",))
        patches: dict[str, Callable[[str], str]] = {
            f: _no_cuda for f in ("model.py", "model_GCN.py", "model_fusion.py")
        }
        patches["model_mm.py"] = lambda t: _single_modality_patch(_no_cuda(t))
        self.dir = copy_reference(src, work / "ref_mmdfn", patches)
        self.pkl = self.dir / "IEMOCAP_features.pkl"
        write_dialoguegcn_pickle(data, self.pkl, 1582, 342)
        self.mods = import_from(self.dir, ["model", "dataloader", "loss", "run_train_erc"])
        self.text_dim = data.dims["t"]
        self.valid_ids = [c.id for c in data.splits["valid"]]

    def build(self, seed: int, epochs: int) -> ReferenceRun:
        tr, m = self.mods["run_train_erc"], self.mods["model"]
        s = self.settings
        tr.args = SimpleNamespace(seed=seed, multi_modal=True, mm_fusion_mthd=s["mm_fusion_mthd"], tensorboard=False)
        with contextlib.redirect_stdout(io.StringIO()):
            tr.seed_everything(seed=seed)
            model = m.DialogueGNNModel(
                "LSTM",
                self.text_dim,
                150,
                150,
                100,
                100,
                100,
                100,
                n_speakers=2,
                max_seq_len=200,
                window_past=10,
                window_future=10,
                n_classes=6,
                listener_state=False,
                context_attention="general",
                dropout=s["dropout"],
                nodal_attention=True,
                no_cuda=True,
                graph_type="GDF",
                use_topic=False,
                alpha=s["alpha"],
                lamda=s["lamda"],
                multiheads=6,
                graph_construct="direct",
                use_GCN=False,
                use_residue=True,
                D_m_v=342,
                D_m_a=1582,
                modals=s["modals"],
                att_type=s["mm_fusion_mthd"],
                av_using_lstm=False,
                Deep_GCN_nlayers=s["Deep_GCN_nlayers"],
                dataset="IEMOCAP",
                use_speaker=False,
                use_modal=False,
                reason_flag=True,
                multi_modal=True,
                use_crn_speaker=True,
                speaker_weights=s["speaker_weights"],
                modal_weight=1.0,
            )
            loss_f = self.mods["loss"].FocalLoss(gamma=s["gamma"], alpha=torch.FloatTensor(IEMOCAP_LOSS_WEIGHTS))
            opt = torch.optim.Adam(model.parameters(), lr=s["lr"], weight_decay=s["l2"])
            train, _, test = tr.get_IEMOCAP_loaders(
                data_path=str(self.pkl), valid_rate=0.0, batch_size=s["batch_size"], num_workers=0
            )
            valid = _valid_loader(
                self.mods["dataloader"].IEMOCAPDataset, self.valid_ids, s["batch_size"], path=str(self.pkl)
            )

        def step(loader: Any, epoch: int, train: bool = False) -> tuple[float, float]:
            out = tr.train_or_eval_graph_model(
                model=model,
                loss_f=loss_f,
                dataloader=loader,
                epoch=epoch,
                train_flag=train,
                optimizer=opt if train else None,
                cuda_flag=False,
                modals=s["modals"],
                target_names=IEMOCAP_TARGET_NAMES,
            )
            return out[2], out[6]

        return GraphScriptRun(step, {"train": train, "valid": valid, "test": test})


class CogmenRun(ReferenceRun):
    def __init__(self, coach: Any, folder: Path) -> None:
        self.coach, self.folder, self.epoch = coach, folder, 0

    def train_epoch(self) -> None:
        self.epoch += 1
        self.coach.train_epoch(self.epoch)

    def evaluate(self) -> dict[str, float]:
        valid_f1, _ = self.coach.evaluate()
        test_f1, test_loss = self.coach.evaluate(test=True)
        return {"valid_f1": 100.0 * valid_f1, "test_f1": 100.0 * test_f1, "test_loss": float(test_loss)}

    def train(self) -> tuple[list[float], list[float], int]:
        """The reference's own ``Coach.train``: per-epoch dev and test F1 (percent), best dev epoch."""
        with contextlib.chdir(self.folder):
            _, best_epoch, _, _, dev_f1s, test_f1s = self.coach.train()
        return [100.0 * f for f in dev_f1s], [100.0 * f for f in test_f1s], int(best_epoch)


class CogmenReference(Reference):
    name, epochs, own_selection = "cogmen", 55, "best_dev"
    settings = {
        "dataset": "iemocap",
        "modalities": "t",
        "rnn": "transformer",
        "hidden_size": 100,
        "seqcontext_nlayer": 2,
        "gnn_nheads": 1,
        "wp": 5,
        "wf": 5,
        "drop_rate": 0.5,
        "optimizer": "adam",
        "learning_rate": 0.0001,
        "weight_decay": 1e-8,
        "scheduler": "reduceLR",
        "batch_size": 32,
        "max_grad_value": -1,
        "class_weight": False,
        "epochs": 55,
    }

    def __init__(self, root: Path, work: Path, data: MercDataset) -> None:
        src = _find(root, "cogmen/__init__.py", ())
        self.dir = copy_reference(src, work / "ref_cogmen", {})
        (self.dir / "model_checkpoints").mkdir(exist_ok=True)  # Coach.train saves the best model there
        self.cogmen = import_from(self.dir, ["cogmen"])["cogmen"]
        logging.getLogger("cogmen.utils").setLevel(logging.WARNING)
        self.pkl = self.dir / "data" / "iemocap" / "data_iemocap.pkl"
        write_cogmen_pickle(data, self.pkl, self.cogmen.Sample)
        self.text_dim = data.dims["t"]

    def args(self, seed: int, epochs: int) -> SimpleNamespace:
        s = self.settings
        return SimpleNamespace(
            **{k: v for k, v in s.items() if k != "epochs"},
            epochs=epochs,
            seed=seed,
            device="cpu",
            from_begin=True,
            emotion=None,
            transformers=False,
            n_speakers=2,
            encoding=None,
            trans_encoding=False,
            concat_gin_gout=False,
            num_bases=7,
            use_highway=False,
            log_in_comet=False,
            tuning=False,
            use_pe_in_seqcontext=False,
            dataset_embedding_dims={"iemocap": {"t": self.text_dim}},
        )

    def build(self, seed: int, epochs: int) -> CogmenRun:
        cg = self.cogmen
        args = self.args(seed, epochs)
        with contextlib.redirect_stdout(io.StringIO()):
            cg.utils.set_seed(seed)
            data = cg.utils.load_pkl(str(self.pkl))
            sets = [cg.Dataset(data[k], args) for k in ("train", "dev", "test")]
            model = cg.COGMEN(args).to("cpu")
            opt = cg.Optim(args.learning_rate, args.max_grad_value, args.weight_decay)
            opt.set_parameters(model.parameters(), args.optimizer)
            sched = opt.get_scheduler(args.scheduler)
            return CogmenRun(cg.Coach(*sets, model, opt, sched, args), self.dir)


def script_parser(path: Path) -> argparse.ArgumentParser:
    """The ``argparse`` parser a script builds in its ``__main__`` block, rebuilt from its
    ``add_argument`` calls (literal arguments; ``type`` a builtin), so its defaults are the script's."""
    types = {"int": int, "float": float, "str": str}
    parser = argparse.ArgumentParser(prog=path.name)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            kwargs = {
                k.arg: types[k.value.id]
                if k.arg == "type" and isinstance(k.value, ast.Name)
                else ast.literal_eval(k.value)
                for k in node.keywords
                if k.arg is not None
            }
            parser.add_argument(*(ast.literal_eval(a) for a in node.args), **kwargs)
    return parser


def _dagerc_run_patch(text: str) -> str:
    return _patch(
        text,
        r"(?m)^os\.environ\[\"CUDA_VISIBLE_DEVICES\"\] = '0'[ \t]*$",
        "# bench_baselines: CUDA_VISIBLE_DEVICES assignment removed",
        "run.py: module-level CUDA_VISIBLE_DEVICES",
    )


class DagErcReference(Reference):
    name, epochs, own_selection = "dagerc", 30, "best_dev"
    settings = {
        "dataset_name": "IEMOCAP",
        "gnn_layers": 4,
        "lr": 0.0005,
        "batch_size": 16,
        "epochs": 30,
        "dropout": 0.2,
    }

    def __init__(self, root: Path, work: Path, data: MercDataset) -> None:
        src = _find(root, "run.py", ())
        base = work / "ref_dagerc"  # the code reads ../data/<dataset>/ from its working directory
        self.dir = copy_reference(src, base / "code", {"run.py": _dagerc_run_patch})
        (self.dir / "transformers.py").write_text(_TRANSFORMERS_SHIM)
        write_dagerc_data(data, base / "data" / str(self.settings["dataset_name"]))
        self.mods = import_from(self.dir, ["run"], shadow=("transformers",))
        self.parser = script_parser(self.dir / "run.py")
        self.text_dim = data.dims["t"]

    def args(self, epochs: int) -> argparse.Namespace:
        """run.py's arguments: the README's IEMOCAP command, the feature width, CPU."""
        argv = [f"--{k}={v}" for k, v in dict(self.settings, epochs=epochs).items()]
        args = self.parser.parse_args([*argv, f"--emb_dim={self.text_dim}", "--no_cuda"])
        args.cuda = False
        return args

    def build(self, seed: int, epochs: int) -> ReferenceRun:
        run = self.mods["run"]
        args = self.args(epochs)
        with contextlib.chdir(self.dir), contextlib.redirect_stdout(io.StringIO()):
            run.seed_everything(seed)
            train, valid, test, _, label_vocab, _ = run.get_IEMOCAP_loaders(
                dataset_name=args.dataset_name, batch_size=args.batch_size, num_workers=0, args=args
            )
            model = run.DAGERC_fushion(args, len(label_vocab["itos"]))
            loss_f = nn.CrossEntropyLoss(ignore_index=-1)
            opt = run.AdamW(model.parameters(), lr=args.lr)

        def step(loader: Any, epoch: int, train: bool = False) -> tuple[float, float]:
            out = run.train_or_eval_model(model, loss_f, loader, epoch, False, args, opt if train else None, train)
            return out[0], out[4]

        return GraphScriptRun(step, {"train": train, "valid": valid, "test": test})


REFERENCES: dict[str, type[Reference]] = {
    "dialoguegcn": DialogueGCNReference,
    "mmgcn": MMGCNReference,
    "mmdfn": MMDFNReference,
    "cogmen": CogmenReference,
    "dagerc": DagErcReference,
}


# --------------------------------------------------------------------------- measurements


def merc_recipe(name: str, epochs: int, overrides: list[str] | None = None) -> dict[str, Any]:
    """merc's recipe for ``name`` on iemocap6 at ``epochs``, plus ``section.key=value`` overrides."""
    return resolve_recipe(name, "iemocap6", [f"training.epochs={epochs}", *(overrides or [])])


def build_merc(
    name: str, data: MercDataset, tensors: dict[str, Any], recipe: dict[str, Any], seed: int, threads: int
) -> Trainer:
    """merc's Trainer as ``train_one_seed`` builds it (class weights, plug-ins)."""
    config = TrainConfig.from_dict(dict(recipe["training"], seed=seed, num_threads=threads, show_progress=False))
    seed_everything(seed)
    model = model_for(data, name, dict(recipe["model"]))
    return Trainer(
        model,
        tensors,
        data.modalities,
        data.num_classes,
        config,
        plugins=build_plugins(recipe, data),
        label_names=data.label_names,
        class_weights=class_weights(data),
    )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    with quiet():
        fn()
    return time.perf_counter() - start


def time_epochs(
    name: str,
    data: MercDataset,
    tensors: dict[str, Any],
    recipe: dict[str, Any],
    threads: int,
    repeats: int,
    reference: Reference | None,
) -> dict[str, Any]:
    """Alternate reference and merc training epochs; median seconds per epoch of each."""
    trainer = build_merc(name, data, tensors, recipe, seed=0, threads=threads)
    torch.set_num_threads(threads)
    with quiet():
        run = reference.build(0, 1) if reference is not None else None
    merc_s: list[float] = []
    ref_s: list[float] = []
    for i in range(repeats + 1):  # round 0 warms up caches and allocators, not counted
        if run is not None:
            t = _timed(run.train_epoch)
            if i:
                ref_s.append(t)
        t = _timed(trainer.train_epoch)
        if i:
            merc_s.append(t)
    row: dict[str, Any] = {
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "merc_seconds": merc_s,
        "merc_median_s": statistics.median(merc_s),
    }
    if ref_s:
        row.update(
            reference_seconds=ref_s,
            reference_median_s=statistics.median(ref_s),
            speedup=statistics.median(ref_s) / statistics.median(merc_s),
        )
    return row


def _summary(values: list[float]) -> dict[str, Any]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"per_seed": values, "mean": statistics.mean(values), "std": std}


def authors_early_stop(test_f1: list[float], test_loss: list[float], patience: int) -> int:
    """Epochs MM-DFN's loop runs with ``valid_rate 0``: it stops once neither the test F1
    nor the test loss improved for ``patience`` epochs."""
    best_f1, best_loss, bad_f1, bad_loss = -math.inf, math.inf, 0, 0
    for e, (f1, loss) in enumerate(zip(test_f1, test_loss, strict=True)):
        if e == 0 or f1 > best_f1:
            best_f1, bad_f1 = f1, 0
        else:
            bad_f1 += 1
        if e == 0 or loss < best_loss:
            best_loss, bad_loss = loss, 0
        else:
            bad_loss += 1
        if bad_f1 >= patience and bad_loss >= patience:
            return e + 1
    return len(test_f1)


def reference_seed(reference: Reference, seed: int, epochs: int) -> dict[str, Any]:
    """Train one reference run; per-epoch valid/test F1 and both selections."""
    with quiet():
        run = reference.build(seed, epochs)
        if isinstance(run, CogmenRun):
            valid_f1, test_f1, own_best = run.train()
            test_loss: list[float] = []
        else:
            history = []
            for _ in range(epochs):
                run.train_epoch()
                history.append(run.evaluate())
            valid_f1 = [h["valid_f1"] for h in history]
            test_f1 = [h["test_f1"] for h in history]
            test_loss = [h["test_loss"] for h in history]
            own_best = 0
    window = len(test_f1)
    if reference.name == "mmdfn":
        window = authors_early_stop(test_f1, test_loss, int(reference.settings["patience"]))
    max_test_epoch = int(np.argmax(test_f1[:window]))
    best_valid_epoch = int(np.argmax(valid_f1))  # first maximum, as the scripts' strict '>'
    out = {
        "seed": seed,
        "valid_weighted_f1": valid_f1,
        "test_weighted_f1": test_f1,
        "max_test_epoch": max_test_epoch + 1,
        "test_at_max_test": test_f1[max_test_epoch],
        "best_valid_epoch": best_valid_epoch + 1,
        "test_at_best_valid": test_f1[best_valid_epoch],
    }
    if test_loss:
        out["test_loss"] = test_loss
    if reference.name == "mmdfn":
        out["authors_stop_epoch"] = window
    if isinstance(run, CogmenRun):
        out["own_best_dev_epoch"] = own_best
    if reference.name == "dagerc":
        # run.py sorts the epochs by (dev, test) F1, descending: a tie on dev goes to the higher test F1.
        own = max(range(len(valid_f1)), key=lambda e: (valid_f1[e], test_f1[e]))
        out["own_best_dev_epoch"] = own + 1
        out["test_at_own_best_dev"] = test_f1[own]
    return out


def parity(
    name: str,
    data: MercDataset,
    tensors: dict[str, Any],
    recipe: dict[str, Any],
    seeds: list[int],
    threads: int,
    reference: Reference | None,
    epochs: int,
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    recipe = dict(recipe, training=dict(recipe["training"], num_threads=threads))
    merc_f1: list[float] = []
    runs = []
    for seed in seeds:
        with quiet():
            result = train_one_seed(data, tensors, name, recipe, seed, None, show_progress=False)
        merc_f1.append(float(result["test"]["weighted_f1"]))
        print(f"{name} merc seed {seed}: test w-F1 {merc_f1[-1]:.2f} (best epoch {result['best_epoch']})", flush=True)
        if reference is not None:
            torch.set_num_threads(threads)
            r = reference_seed(reference, seed, epochs)
            runs.append(r)
            print(
                f"{name} reference seed {seed}: test w-F1 {r['test_at_max_test']:.2f} at max-test epoch "
                f"{r['max_test_epoch']}, {r['test_at_best_valid']:.2f} at best-valid epoch {r['best_valid_epoch']}",
                flush=True,
            )
    out: dict[str, Any] = {
        "seeds": seeds,
        "epochs": epochs,
        "merc_selection": "best valid epoch",
        "merc_test_weighted_f1": _summary(merc_f1),
    }
    if runs:
        out.update(
            reference_own_selection=reference.own_selection if reference else None,
            reference_test_at_max_test=_summary([r["test_at_max_test"] for r in runs]),
            reference_test_at_best_valid=_summary([r["test_at_best_valid"] for r in runs]),
            reference_runs=runs,
        )
    return out


def _mean_std(summary: dict[str, Any] | None) -> str:
    return "" if not summary else f"{summary['mean']:.2f} ± {summary['std']:.2f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The README's table of a results file: parity (test w-F1, 3 seeds) and speed per model."""
    lines = [
        "| model | epochs | authors' code, max-test epoch | authors' code, best-valid epoch | merc, best-valid epoch "
        "| s/epoch authors' / merc, 1 thread | speed-up 1 thread | speed-up 2 threads | merc timed with |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in MODELS:
        section = results.get(name)
        if not isinstance(section, dict):
            continue
        parity = section.get("parity", {})
        timing = {row["threads"]: row for row in section.get("timing", [])}
        one = timing.get(1, {})
        seconds = f"{one['reference_median_s']:.2f} / {one['merc_median_s']:.2f}" if "reference_median_s" in one else ""
        ratios = [f"{timing[t]['speedup']:.2f}x" if "speedup" in timing.get(t, {}) else "" for t in (1, 2)]
        overrides = sorted({o for row in timing.values() for o in row.get("merc_overrides", [])})
        lines.append(
            f"| {name} | {parity.get('epochs', '')} | {_mean_std(parity.get('reference_test_at_max_test'))} "
            f"| {_mean_std(parity.get('reference_test_at_best_valid'))} "
            f"| {_mean_std(parity.get('merc_test_weighted_f1'))} | {seconds} | {ratios[0]} | {ratios[1]} "
            f"| {', '.join(f'`{o}`' for o in overrides) or 'its recipe (float32)'} |"
        )
    return "\n".join(lines)


def main() -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    for name in MODELS:
        parser.add_argument(f"--reference-{name}", type=Path, default=None, help=f"folder of the authors' {name} code")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per implementation (0: no timing)")
    parser.add_argument("--threads", default="1", help="comma-separated torch thread counts to time, e.g. 1,2")
    parser.add_argument("--seeds", default="", help="comma-separated seeds for the accuracy parity run")
    parser.add_argument("--epochs", type=int, default=0, help="parity epochs for both (0: each reference's own count)")
    parser.add_argument("--parity-threads", type=int, default=1)
    parser.add_argument("--max-dialogues", type=int, default=0, help="dialogues per split, for smoke tests (0: all)")
    parser.add_argument(
        "--merc-override",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="recipe override for merc's side only, e.g. training.precision=bf16-mixed (repeatable; recorded)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.out.read_text())))
        return

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    threads_list = [int(t) for t in args.threads.split(",") if t]
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result: dict[str, Any] = {
        "dataset": "iemocap6",
        "modalities": "t",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "max_dialogues": args.max_dialogues or None,
    }
    with tempfile.TemporaryDirectory(prefix="bench_baselines_") as tmp:
        for name in models:
            epochs = args.epochs or REFERENCES[name].epochs
            recipe = merc_recipe(name, epochs, args.merc_override)
            data = prepare_dataset("iemocap6", "t", recipe, show_progress=False)
            if args.max_dialogues:
                data = subset(data, args.max_dialogues)
            tensors = to_tensors(data)
            ref_dir = getattr(args, f"reference_{name}")
            reference = REFERENCES[name](ref_dir.resolve(), Path(tmp), data) if ref_dir is not None else None
            section: dict[str, Any] = {
                "reference": str(ref_dir) if ref_dir else None,
                "reference_settings": REFERENCES[name].settings,
                "merc_recipe": f"configs/{name}/default.yaml",
                "train_dialogues": len(tensors["train"]),
                "train_utterances": sum(len(c) for c in tensors["train"]),
            }
            if args.repeats > 0:
                rows = []
                for threads in threads_list:
                    row = time_epochs(name, data, tensors, recipe, threads, args.repeats, reference)
                    row["merc_overrides"] = list(args.merc_override)
                    rows.append(row)
                    line = f"{name} threads={threads}: merc {row['merc_median_s']:.3f} s/epoch"
                    if "reference_median_s" in row:
                        line += f", reference {row['reference_median_s']:.3f} s/epoch, speedup x{row['speedup']:.2f}"
                    print(line, flush=True)
                section["timing"] = rows
            if seeds:
                section["parity"] = parity(name, data, tensors, recipe, seeds, args.parity_threads, reference, epochs)
                section["parity"]["merc_overrides"] = list(args.merc_override)
                p = section["parity"]
                line = (
                    f"{name}: merc {p['merc_test_weighted_f1']['mean']:.2f} ± {p['merc_test_weighted_f1']['std']:.2f}"
                )
                if "reference_test_at_max_test" in p:
                    a, b = p["reference_test_at_max_test"], p["reference_test_at_best_valid"]
                    line += (
                        f"; reference {a['mean']:.2f} ± {a['std']:.2f} (max-test epoch), "
                        f"{b['mean']:.2f} ± {b['std']:.2f} (best-valid epoch)"
                    )
                print(line, flush=True)
            # A run that skips timing or parity keeps that part of an earlier run's section.
            for key, value in previous.get(name, {}).items():
                if key.startswith(("timing", "parity")) and key not in section:
                    section[key] = value
            result[name] = section
    for name in MODELS:  # sections of models not run this time are kept
        if name not in result and name in previous:
            result[name] = previous[name]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

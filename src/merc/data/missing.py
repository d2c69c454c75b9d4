r"""Missing-modality masks: generation, application to datasets, imputation, mask files.

Incomplete multimodal ERC (GCNet, Lian et al., TPAMI 2023; Mi-CGA, Nguyen et al.,
Neurocomputing 2025, Section 3.2.2) simulates missing modalities with an overall missing
rate :math:`\rho`: every utterance drops a random subset of its :math:`M` modalities but
keeps at least one, so :math:`\rho\in[0, (M-1)/M]` and there are :math:`2^M-1` patterns
(7 for :math:`M=3`, Mi-CGA Fig. 3). Both papers' rate grid ends at 0.7 for three
modalities, which GCNet's mask code realises as one kept modality per utterance
(:func:`check_rate`).

Sampling scheme
---------------
The number of missing modalities :math:`k` of an utterance follows a binomial
:math:`\mathrm{Bin}(M, q)` conditioned on :math:`k<M` (at least one modality kept):

.. math::
   P(k) = \binom{M}{k} q^k (1-q)^{M-k} / (1 - q^M),\qquad
   \mathbb{E}[k] = \frac{Mq\,(1-q^{M-1})}{1-q^M},

and :math:`q\in[0,1)` is solved (bisection; :math:`\mathbb{E}[k]` increases with
:math:`q`) so that :math:`\mathbb{E}[k] = \rho M`; the :math:`k` dropped modalities are a
uniformly random subset. Hence

- the expected fraction of missing (utterance, modality) entries is exactly :math:`\rho`,
  and by symmetry so is every single modality's missing rate;
- every one of the :math:`2^M-1` patterns has positive probability for
  :math:`0<\rho<(M-1)/M`; :math:`\rho=(M-1)/M` keeps exactly one modality per utterance;
- the draw is the per-entry Bernoulli(:math:`q`) masking of CPM-Net/GCNet conditioned
  on not losing everything, without GCNet's rejection loop: no batch-size dependence.

Reproducibility and coupling: the random numbers of a dialogue come from
``np.random.default_rng([seed, crc32(dialogue id)])``: the same seed gives the same
masks whatever the split composition, dialogue order or protocol. :math:`k` is drawn by
inverse CDF from one uniform per utterance and the dropped modalities are the first
:math:`k` of a per-utterance random permutation, both independent of :math:`\rho`; since
the conditioned binomial is stochastically increasing in :math:`q`, masks of one seed
are **nested** across rates (an entry missing at 0.2 is missing at 0.5), which removes
mask noise from robustness curves.

Protocols: ``"same-rate"`` masks every requested split at :math:`\rho` (Mi-CGA: "this
consistent missing rate is maintained throughout training, validation, and testing");
``"test-only"`` masks only the test split (a model trained on complete data is evaluated
on incomplete data).

Missing features are set to zero and ``Conversation.availability`` records the mask
(canonical columns ``t, a, v``; columns of modalities that are not attached stay true).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from merc.data.schema import MODALITIES, SPLITS, Conversation, MercDataset, parse_modalities
from merc.data.transforms import feature_statistics
from merc.errors import DataError, resolve_choice

if TYPE_CHECKING:
    import torch
    from torch import Tensor

MISSING_PROTOCOLS: tuple[str, ...] = ("same-rate", "test-only")
# "none": merc's default -- missing entries are 0 in the model's (standardised) input space
# and the availability mask tells the model; the others are the imputation baselines.
IMPUTATION_METHODS: tuple[str, ...] = ("none", "zero", "mean", "neighbour")
MASK_FILE_FORMAT = "merc-missing-masks-v1"


# -- the sampling scheme -------------------------------------------------------------------
def max_missing_rate(num_modalities: int) -> float:
    """Largest overall missing rate :math:`(M-1)/M` that keeps one modality per utterance."""
    if num_modalities < 1:
        raise DataError("need at least one modality")
    return (num_modalities - 1) / num_modalities


def check_rate(rate: float, num_modalities: int) -> float:
    """Validate a missing rate and return the effective one.

    Rates in ``[0, (M-1)/M]`` are returned as given. The papers' grid ends at 0.7 for
    three modalities, above :math:`2/3`: GCNet's mask code keeps exactly one modality per
    utterance whenever the requested share of kept entries is at most :math:`1/M`, and
    asserts the rate is at most 0.7 (three modalities) or 0.5 (two). Rates between
    :math:`(M-1)/M` and that bound (:math:`(M-1)/M` rounded up to a tenth) follow the same
    convention and return :math:`(M-1)/M`.

    Raises:
        DataError: a rate outside ``[0, ceil10((M-1)/M)]``.

    >>> check_rate(0.7, 3) == 2 / 3, check_rate(0.5, 2)
    (True, 0.5)
    """
    rate = float(rate)
    top = max_missing_rate(num_modalities)
    grid_top = math.ceil(top * 10 - 1e-9) / 10
    if math.isnan(rate) or not 0.0 <= rate <= grid_top + 1e-9:
        raise DataError(
            f"missing rate {rate} is outside [0, {grid_top:.4g}] for {num_modalities} modalities: every utterance "
            f"keeps at least one modality (Mi-CGA Sec. 3.2.2; at most {top:.4g} missing)"
        )
    return min(rate, top)


def _expected_missing(q: float, m: int) -> float:
    """:math:`\\mathbb{E}[k\\mid k<M]` for :math:`k\\sim\\mathrm{Bin}(M,q)`."""
    if q <= 0.0:
        return 0.0
    return m * q * (1.0 - q ** (m - 1)) / (1.0 - q**m)


def missing_count_distribution(rate: float, num_modalities: int) -> np.ndarray:
    """Probability of ``k = 0 .. M-1`` missing modalities per utterance (module docstring).

    Shapes:
        - output: ``[M]``, sums to 1, ``sum(k * p[k]) == rate * M``.

    >>> p = missing_count_distribution(0.3, 3)
    >>> round(float((np.arange(3) * p).sum() / 3), 6)
    0.3
    """
    m = int(num_modalities)
    rate = check_rate(rate, m)
    out = np.zeros(m)
    if rate <= 0.0:
        out[0] = 1.0
        return out
    target = rate * m
    if target >= m - 1 - 1e-12:
        out[-1] = 1.0
        return out
    lo, hi = 0.0, 1.0
    # E[k] is increasing in q; 200 halvings reach float precision.
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _expected_missing(mid, m) < target:
            lo = mid
        else:
            hi = mid
    q = 0.5 * (lo + hi)
    k = np.arange(m)
    binom = np.array([math.comb(m, int(i)) for i in k], dtype=np.float64)
    out = binom * q**k * (1.0 - q) ** (m - k)
    return out / out.sum()


def missing_patterns(num_modalities: int) -> np.ndarray:
    """All :math:`2^M-1` availability patterns (true = present), fewest missing first.

    >>> missing_patterns(3).shape
    (7, 3)
    """
    pats = [p for p in itertools.product([True, False], repeat=num_modalities) if any(p)]
    pats.sort(key=lambda p: (sum(not x for x in p), [not x for x in p]))
    return np.array(pats, dtype=bool)


def sample_availability(n: int, num_modalities: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Availability of ``n`` utterances at overall missing rate ``rate``.

    Draws, in this order and independently of ``rate``, one uniform per utterance (the
    number of missing modalities by inverse CDF) and one random permutation of the
    modalities per utterance (the first ``k`` are dropped), so masks of one generator
    state are nested across rates.

    Shapes:
        - output: ``bool [n, M]``, every row has at least one true entry.
    """
    m = int(num_modalities)
    u = rng.random(n)
    order = np.argsort(rng.random((n, m)), axis=1)
    cdf = np.cumsum(missing_count_distribution(rate, m))
    k = np.minimum(np.searchsorted(cdf, u, side="right"), m - 1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(m)[None, :].repeat(n, 0), axis=1)
    return rank >= k[:, None]


def dialogue_rng(seed: int, dialogue_id: str) -> np.random.Generator:
    """The generator of one dialogue's masks: depends on ``seed`` and the id only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(dialogue_id.encode("utf-8"))])


# -- applying masks to datasets ---------------------------------------------------------------
def _columns(dataset: MercDataset) -> list[int]:
    return [MODALITIES.index(m) for m in dataset.modalities]


def _full_availability(conv: Conversation) -> np.ndarray:
    if conv.availability is None:
        return np.ones((len(conv), len(MODALITIES)), dtype=bool)
    return np.asarray(conv.availability, dtype=bool).copy()


def _with_availability(conv: Conversation, avail: np.ndarray, modalities: Sequence[str]) -> Conversation:
    """A copy of ``conv`` with ``availability`` set and missing features zeroed."""
    feats = dict(conv.features)
    for m in modalities:
        keep = avail[:, MODALITIES.index(m)]
        feats[m] = np.where(keep[:, None], conv.features[m], 0.0).astype(np.float32)
    return conv.replace(features=feats, availability=avail)


def _require_complete(conv: Conversation, cols: Sequence[int], what: str) -> None:
    if conv.availability is not None and not np.asarray(conv.availability, dtype=bool)[:, list(cols)].all():
        raise DataError(
            f"dialogue {conv.id!r} already has missing modalities; {what} applies to a complete dataset "
            "(load the dataset again, or load_masks() a saved mask file instead)"
        )


def _masked_splits(splits: Iterable[str], protocol: str) -> tuple[str, ...]:
    protocol = resolve_choice("missing-modality protocol", protocol, list(MISSING_PROTOCOLS))
    chosen = tuple(splits)
    unknown = [s for s in chosen if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown split(s) {unknown}; choose from {', '.join(SPLITS)}")
    return chosen if protocol == "same-rate" else tuple(s for s in chosen if s == "test")


def realized_missing_rate(dataset: MercDataset, split: str | None = None) -> float:
    """Fraction of missing (utterance, attached modality) entries of ``split`` (all if None)."""
    cols = _columns(dataset)
    missing = total = 0
    for conv in dataset.conversations(split):
        avail = _full_availability(conv)[:, cols]
        missing += int((~avail).sum())
        total += avail.size
    return missing / total if total else 0.0


def _replace_splits(
    dataset: MercDataset, splits: dict[str, list[Conversation]], info: dict[str, Any], masked: Sequence[str] = ()
) -> MercDataset:
    """A copy with new splits; ``meta["missing"]`` gains ``info`` (plus realised rates)."""
    out = dataclasses.replace(dataset, splits=splits)
    if masked:
        info = {**info, "realized_rate": {s: realized_missing_rate(out, s) for s in masked}}
    out.meta = {**dataset.meta, "missing": [*dataset.meta.get("missing", []), info]}
    return out


def _mask_each_conversation(
    dataset: MercDataset,
    masked: Sequence[str],
    cols: Sequence[int],
    caller: str,
    availability: Callable[[Conversation], np.ndarray],
) -> dict[str, list[Conversation]]:
    """New splits: conversations of the ``masked`` splits get ``availability(conv)``."""
    new_splits: dict[str, list[Conversation]] = {}
    for split, convs in dataset.splits.items():
        if split not in masked:
            new_splits[split] = list(convs)
            continue
        out = []
        for conv in convs:
            _require_complete(conv, cols, caller)
            out.append(_with_availability(conv, availability(conv), dataset.modalities))
        new_splits[split] = out
    return new_splits


def apply_missing(
    dataset: MercDataset,
    rate: float,
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
    protocol: str = "same-rate",
) -> MercDataset:
    """A copy of ``dataset`` with random missing modalities at overall rate ``rate``.

    Args:
        dataset: A complete dataset (no missing entries in the splits to mask).
        rate: Overall missing rate :math:`\\rho\\in[0,(M-1)/M]`, ``M`` = attached modalities
            (0.7 with three modalities means one kept modality per utterance, see
            :func:`check_rate`; ``meta`` records the effective rate).
        seed: Mask seed; same seed, same masks (per dialogue id, see module docstring).
        splits: Splits to mask under ``"same-rate"``. Default all.
        protocol: ``"same-rate"`` (mask ``splits``) or ``"test-only"`` (mask the test split
            only; train and valid stay complete).

    Returns:
        A new dataset: ``availability`` set and missing features zeroed in the masked
        splits; ``meta["missing"]`` gains ``{"kind": "rate", "requested_rate", "rate",
        "seed", "protocol", "splits", "realized_rate"}``. The input is untouched.

    Raises:
        DataError: rate out of range, unknown split, or already-masked dialogues.

    >>> from merc.data.synthetic import generate_synthetic
    >>> ds = apply_missing(generate_synthetic(num_dialogues=(40, 5, 5), seed=0), 0.3, seed=1)
    >>> abs(realized_missing_rate(ds) - 0.3) < 0.03
    True
    """
    cols = _columns(dataset)
    requested = rate
    rate = check_rate(rate, len(cols))
    masked = _masked_splits(splits, protocol)

    def availability(conv: Conversation) -> np.ndarray:
        avail = _full_availability(conv)
        avail[:, cols] = sample_availability(len(conv), len(cols), rate, dialogue_rng(seed, conv.id))
        return avail

    new_splits = _mask_each_conversation(dataset, masked, cols, "apply_missing", availability)
    info = {
        "kind": "rate",
        "requested_rate": float(requested),
        "rate": rate,
        "seed": int(seed),
        "protocol": protocol,
        "splits": list(masked),
    }
    return _replace_splits(dataset, new_splits, info, masked)


def drop_modalities(
    dataset: MercDataset, drop: str | Iterable[str], splits: Sequence[str] = SPLITS, protocol: str = "same-rate"
) -> MercDataset:
    """A copy of ``dataset`` with the modalities in ``drop`` missing in every utterance.

    Args:
        dataset: A complete dataset.
        drop: Modalities to remove everywhere, e.g. ``"a"`` or ``"av"``; at least one
            attached modality must remain.
        splits: Splits to mask under ``"same-rate"``.
        protocol: ``"same-rate"`` or ``"test-only"`` as in :func:`apply_missing`.

    >>> from merc.data.synthetic import generate_synthetic
    >>> ds = drop_modalities(generate_synthetic(num_dialogues=(2, 1, 1)), "av")
    >>> round(realized_missing_rate(ds), 4)
    0.6667
    """
    dropped = parse_modalities(drop)
    absent = [m for m in dropped if m not in dataset.modalities]
    if absent:
        raise DataError(f"cannot drop {''.join(absent)}: dataset has modalities {''.join(dataset.modalities)}")
    if set(dropped) == set(dataset.modalities):
        raise DataError(
            f"dropping {''.join(dropped)} leaves no modality; keep at least one of {''.join(dataset.modalities)}"
        )
    cols = _columns(dataset)
    masked = _masked_splits(splits, protocol)

    def availability(conv: Conversation) -> np.ndarray:
        avail = _full_availability(conv)
        avail[:, [MODALITIES.index(m) for m in dropped]] = False
        return avail

    new_splits = _mask_each_conversation(dataset, masked, cols, "drop_modalities", availability)
    info = {"kind": "drop", "drop": "".join(dropped), "protocol": protocol, "splits": list(masked)}
    return _replace_splits(dataset, new_splits, info, masked)


# -- in-model masking (training-time augmentation) -----------------------------------------
def drop_available(availability: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Hide a random share ``rate`` of the *available* entries, keeping one per utterance.

    Used by models (``train_mask_rate``) to learn imputation from entries whose features
    are known: GCNet trains on masks redrawn every batch. Each available entry is hidden
    with probability ``rate``; a row that would lose everything keeps one random available
    entry, so the realised share is slightly below ``rate`` for rows with few entries.

    Args:
        availability: ``bool [..., M]`` data availability (false at padding is fine).
        rate: Probability of hiding an available entry, in ``[0, 1]``.
        generator: Optional torch generator (default: the global RNG).

    Returns:
        ``bool [..., M]``: the entries to hide (subset of ``availability``).
    """
    import torch  # deferred: the dataset-side functions of this module need numpy only

    if rate <= 0.0:
        return torch.zeros_like(availability)
    u = torch.rand(availability.shape, generator=generator, device=availability.device)
    hide = availability & (u < rate)
    emptied = availability.any(-1) & ~(availability & ~hide).any(-1)
    # Restore the available entry with the largest uniform (a uniform random choice).
    keep = torch.where(availability, u, torch.full_like(u, -1.0)).argmax(-1, keepdim=True)
    restore = torch.zeros_like(hide).scatter_(-1, keep, True) & emptied.unsqueeze(-1)
    return hide & ~restore


# -- imputation --------------------------------------------------------------------------------
def impute(
    dataset: MercDataset,
    method: str = "zero",
    window: int | None = None,
    split: str = "train",
    reference: MercDataset | None = None,
) -> MercDataset:
    """Fill missing features in the raw feature space (availability unchanged).

    The naive strategies of Mi-CGA Section 5.4 (RQ4), applied to the features as the
    corpus gives them, i.e. *before* merc's train-split standardisation
    (:func:`merc.data.transforms.standardize_features` keeps the filled values of a
    dataset whose ``meta["imputation"]`` is set, and z-scores them like any feature):

    - ``"none"``: nothing is filled; standardisation later sets missing entries to 0 in
      the model's input space, which is the training mean in the raw space (merc's
      default for every model; models still see the availability mask).
    - ``"zero"`` (ZeroImp): missing raw features are 0 -- after z-scoring
      ``-mean/std``, i.e. a point usually far from the data, as in the papers' raw inputs.
    - ``"mean"`` (MeanImp): the global mean of the modality's *available* features in the
      ``split`` split (training: nothing leaks). After z-scoring this is exactly 0, so
      with ``data.standardize`` on it coincides with ``"none"``.
    - ``"neighbour"``: the average of the same modality's *available* features of the
      utterance's neighbours on the conversation graph -- every other utterance of the
      dialogue (Mi-CGA's fully connected graph, the one-step feature propagation of
      Rossi et al. 2022 cited there), or only those within ``window`` turns (GCNet's
      temporal window) when ``window`` is given. Unlike the "zero-dominated averages"
      Section 5.4 criticises, missing neighbours are excluded from the average; an
      utterance with no available neighbour gets the raw zero.

    Args:
        dataset: Dataset with ``availability`` set where features are missing.
        method: ``"zero"``, ``"mean"`` or ``"neighbour"``.
        window: Neighbour window in turns (``None``: the whole dialogue).
        split: Split whose statistics ``"mean"`` uses.
        reference: Dataset holding that split (default ``dataset``), e.g. the full
            dataset when ``dataset`` is a test-only view.

    Returns:
        A new dataset; ``meta["imputation"]`` records the method.
    """
    method = resolve_choice("imputation method", method, list(IMPUTATION_METHODS))
    if method == "none":
        return dataset
    if window is not None and window < 1:
        raise DataError(f"neighbour window must be >= 1 turn, got {window}")
    source = reference if reference is not None else dataset
    if method == "mean" and not source.splits.get(split):
        raise DataError(f"mean imputation needs the {split!r} split for its statistics; pass reference=")
    means = {m: feature_statistics(source, m, split)[0] for m in dataset.modalities} if method == "mean" else {}
    new_splits: dict[str, list[Conversation]] = {}
    for name, convs in dataset.splits.items():
        out = []
        for conv in convs:
            if conv.availability is None:
                out.append(conv)
                continue
            avail = np.asarray(conv.availability, dtype=bool)
            feats = dict(conv.features)
            for m in dataset.modalities:
                present = avail[:, MODALITIES.index(m)]
                if present.all():
                    continue
                x = np.where(present[:, None], conv.features[m], 0.0).astype(np.float32)
                if method == "mean":
                    x[~present] = means[m]
                elif method == "neighbour":
                    x[~present] = _neighbour_fill(x, present, window)[~present]
                feats[m] = x
            out.append(conv.replace(features=feats))
        new_splits[name] = out
    meta = {**dataset.meta, "imputation": {"method": method, "window": window, "statistics_split": split}}
    return dataclasses.replace(dataset, splits=new_splits, meta=meta)


def _neighbour_fill(x: np.ndarray, present: np.ndarray, window: int | None) -> np.ndarray:
    """Mean of the available neighbours' rows for every utterance.

    Shapes:
        - x: ``[n, d]``; present: ``bool [n]``; output ``[n, d]`` (zero rows where no
          neighbour is available).
    """
    n = x.shape[0]
    idx = np.arange(n)
    weights = (idx[:, None] != idx[None, :]) & present[None, :]
    if window is not None:
        weights &= np.abs(idx[:, None] - idx[None, :]) <= window
    w = weights.astype(np.float32)
    counts = w.sum(1, keepdims=True)
    return np.divide(w @ x, counts, out=np.zeros_like(x), where=counts > 0)


# -- mask files --------------------------------------------------------------------------------
def save_masks(dataset: MercDataset, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write every dialogue's availability to an ``.npz`` (no pickle) file.

    Arrays: ``format``, ``ids``, ``splits`` (unicode), ``lengths`` (int64),
    ``availability`` (bool ``[sum(lengths), 3]``, canonical ``t, a, v``) and ``meta`` (a
    JSON string: the dataset's ``meta["missing"]`` plus ``meta``). Complete dialogues are
    stored all true.
    """
    path = Path(path)
    convs = list(dataset.conversations())
    info = {
        "dataset": dataset.name,
        "modalities": "".join(dataset.modalities),
        "missing": dataset.meta.get("missing", []),
        **dict(meta or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    avail = [_full_availability(c) for c in convs]
    with path.open("wb") as fh:
        np.savez_compressed(
            fh,
            format=np.array(MASK_FILE_FORMAT),
            ids=np.array([c.id for c in convs], dtype=str),
            splits=np.array([c.split for c in convs], dtype=str),
            lengths=np.array([len(c) for c in convs], dtype=np.int64),
            availability=np.concatenate(avail) if avail else np.zeros((0, len(MODALITIES)), dtype=bool),
            meta=np.array(json.dumps(info)),
        )
    return path


def read_masks(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Availability per dialogue id and the metadata of a :func:`save_masks` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            fmt = str(data["format"])
            ids = [str(i) for i in data["ids"]]
            lengths = data["lengths"].astype(np.int64)
            avail = data["availability"].astype(bool)
            meta = json.loads(str(data["meta"]))
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path} is not a merc mask file ({exc})") from None
    if fmt != MASK_FILE_FORMAT:
        raise DataError(f"{path}: unknown mask format {fmt!r} (expected {MASK_FILE_FORMAT})")
    offsets = np.r_[0, np.cumsum(lengths)]
    return {i: avail[a:b] for i, a, b in zip(ids, offsets[:-1], offsets[1:], strict=True)}, meta


def load_masks(dataset: MercDataset, path: str | Path) -> MercDataset:
    """Apply a :func:`save_masks` file to ``dataset`` (complete or not): identical masks.

    Every dialogue of the dataset must be in the file with the same number of
    utterances, and every utterance must keep one of the dataset's modalities; missing
    features are zeroed.

    Raises:
        DataError: a dialogue is absent from the file, its length differs, or an
            utterance would keep none of the attached modalities.
    """
    masks, meta = read_masks(path)
    cols = _columns(dataset)
    new_splits: dict[str, list[Conversation]] = {}
    for split, convs in dataset.splits.items():
        out = []
        for conv in convs:
            if conv.id not in masks:
                raise DataError(f"{path}: no mask for dialogue {conv.id!r}; the file belongs to another dataset")
            avail = masks[conv.id]
            if avail.shape != (len(conv), len(MODALITIES)):
                raise DataError(f"{path}: dialogue {conv.id!r} has {len(conv)} utterances, the mask {avail.shape[0]}")
            if not avail[:, cols].any(1).all():
                raise DataError(
                    f"{path}: an utterance of {conv.id!r} keeps none of the modalities "
                    f"{''.join(dataset.modalities)}; the masks were made for other modalities"
                )
            out.append(_with_availability(conv, avail.copy(), dataset.modalities))
        new_splits[split] = out
    info = {"kind": "file", "path": str(path), "source": meta.get("missing", [])}
    return _replace_splits(dataset, new_splits, info)


__all__ = [
    "IMPUTATION_METHODS",
    "MISSING_PROTOCOLS",
    "apply_missing",
    "check_rate",
    "dialogue_rng",
    "drop_available",
    "drop_modalities",
    "impute",
    "load_masks",
    "max_missing_rate",
    "missing_count_distribution",
    "missing_patterns",
    "read_masks",
    "realized_missing_rate",
    "sample_availability",
    "save_masks",
]

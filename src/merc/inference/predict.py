"""``merc predict``: a trained model applied to new conversations, one prediction per utterance.

The input is prepared exactly as the model's training inputs were (recorded in its
bundle, :mod:`merc.inference.bundle`):

1. **Features.** Text features made by a sentence encoder at training time are computed
   from the input's texts with the same encoder (and cached like every text feature,
   :mod:`merc.features.text`). Audio and visual features made by a media extractor at
   training time (``{"source": "audio-extractor"}`` / ``"visual-extractor"``, written by
   ``merc extract``) are computed from the media the input names, with the extractor
   rebuilt from the recorded specification
   (:func:`merc.features.extract.extractor_from_spec`: same extractor, same settings)
   and cached like ``merc extract``'s (:func:`merc.features.extract.extract_segments`);
   a native input folder whose features file was made by that same extractor and
   settings is read as it is. Provided features (``{"source": "provided"}``) come from
   a native input folder's ``features/<m>.safetensors``; they cannot be recomputed from
   media, so an input that has media but no such file is refused.
2. **Missing modalities.** A modality the input lacks (no text for an utterance, no
   audio or video for it, no face in any sampled frame of its video, no features for a
   tav model) is marked unavailable in the availability mask (``Batch.availability``)
   and its features are set to the training mean, as merc does for missing data in
   training (:mod:`merc.data.missing`): models with ``models_missing`` see the mask, the
   others see the mean. (A features file made by a media extractor holds a zero row
   exactly there, :func:`merc.features.extract.extract_folder`; such rows are read as
   missing too.) A warning line says how many entries were missing and why, and each
   output row says which modalities it had.
3. **Standardisation** with the training split's mean and std stored in the bundle.
4. **Speakers.** Models that read per-dialogue party indices (most) need nothing. Models
   with ``speaker_ids="global"`` (CORECT's and COGMEN's IEMOCAP recipes, MMGCN, MM-DFN)
   have one learnt embedding per training speaker: a speaker of the training vocabulary
   keeps its id; a speaker never seen in training takes, in order of first appearance
   in its dialogue, the ids not used by the dialogue's other speakers (with IEMOCAP's
   F/M roles: the first new speaker is treated as ``F``, the second as ``M``). A warning
   says so and the row's ``speaker_as`` field names the training speaker used;
   ``unknown_speakers="refuse"`` makes it an error instead.

The model runs in evaluation mode without gradients, in float32, the path ``merc
evaluate`` takes (:meth:`merc.training.trainer.Trainer.predict`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from merc.data.batching import ConversationTensors, conversation_tensors, iterate_batches
from merc.data.schema import MODALITIES, MODALITY_NAMES, Conversation, MercDataset
from merc.data.transforms import standardize_features
from merc.errors import ConfigError, DataError
from merc.features.spec import MEDIA_SOURCES
from merc.inference.bundle import Bundle, readable_by_umask
from merc.inference.inputs import PredictInput
from merc.training.trainer import PRECISIONS

log = logging.getLogger(__name__)

#: ``--unknown-speakers`` choices.
UNKNOWN_SPEAKER_POLICIES: tuple[str, ...] = ("map", "refuse")
#: Output suffixes and their formats.
OUTPUT_SUFFIXES: dict[str, str] = {".jsonl": "jsonl", ".csv": "csv"}


@dataclass
class Prediction:
    """Predictions of every utterance of an input, dialogue-major.

    Attributes:
        rows: One dict per utterance (see :func:`predict`).
        probabilities: ``float32 [N, C]`` class probabilities, row order of ``rows``.
        warnings: The warning lines logged.
    """

    rows: list[dict[str, Any]]
    probabilities: np.ndarray
    warnings: list[str]


def uses_global_speakers(model: torch.nn.Module) -> bool:
    """Whether ``model`` reads dataset-wide speaker ids (``speaker_ids="global"``)."""
    return getattr(model, "speaker_ids", None) == "global"


def speaker_ids(
    speakers: Sequence[str], vocab: Sequence[str], policy: str = "map", where: str = ""
) -> tuple[dict[str, int], list[str]]:
    """Map one dialogue's speakers to training speaker ids (module docstring, point 4).

    Args:
        speakers: The dialogue's speaker per utterance.
        vocab: The training speaker vocabulary (id = index).
        policy: ``"map"`` or ``"refuse"`` unseen speakers.
        where: The dialogue, for messages.

    Returns:
        ``({speaker: id}, unseen speakers in order of appearance)``.

    Raises:
        DataError: An unseen speaker under ``policy="refuse"``, or an empty vocabulary.

    >>> speaker_ids(["Ann", "M", "Bob", "Ann"], ["F", "M"])
    ({'M': 1, 'Ann': 0, 'Bob': 0}, ['Ann', 'Bob'])
    """
    index = {s: i for i, s in enumerate(vocab)}
    order = list(dict.fromkeys(speakers))
    ids = {s: index[s] for s in order if s in index}
    unseen = [s for s in order if s not in index]
    if unseen and policy == "refuse":
        raise DataError(
            f"{where}: speaker {unseen[0]!r} was not seen in training and the model reads global speaker ids; "
            f"use training speakers ({', '.join(list(vocab)[:6])}{', ...' if len(vocab) > 6 else ''}) or "
            "--unknown-speakers map"
        )
    if not vocab:
        raise DataError("the model has no training speakers to map speakers to")
    free = [i for i in range(len(vocab)) if i not in ids.values()] or list(range(len(vocab)))
    for k, s in enumerate(unseen):
        ids[s] = free[k % len(free)]
    return ids, unseen


def _text_features(bundle: Bundle, data: PredictInput, show_progress: bool) -> np.ndarray:
    from merc.features.text import cached_text_features

    spec = bundle.feature_specs["t"]
    texts = [t for conv in data.conversations for t, ok in zip(conv.texts or [], data.text_present[conv.id]) if ok]
    feats = np.zeros((data.num_utterances, spec["dim"]), np.float32)
    if not texts:
        return feats
    encoded = cached_text_features("predict", texts, encoder=spec["encoder"], show_progress=show_progress)
    if encoded.shape[1] != spec["dim"]:
        raise DataError(
            f"text encoder {spec['encoder']} gives {encoded.shape[1]}-d features, the model was trained on "
            f"{spec['dim']}-d ones; use the encoder it was trained with"
        )
    mask = np.concatenate([data.text_present[c.id] for c in data.conversations])
    feats[mask] = encoded
    return feats


def _same_extraction(given: dict[str, Any] | None, spec: dict[str, Any]) -> bool:
    """Whether features made as ``given`` says are the features ``spec`` describes (library version aside)."""
    keys = ("source", "extractor", "settings", "dim")
    return given is not None and all(given.get(k) == spec.get(k) for k in keys)


def _first(uids: Sequence[str], mask: np.ndarray) -> str:
    return repr(next(u for u, bad in zip(uids, mask) if bad))


def _media_features(
    spec: dict[str, Any], data: PredictInput, m: str, show_progress: bool
) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """``m``'s features of every utterance from the input's media, made as ``spec`` says.

    Returns:
        ``(features [N, d], available [N], why some are missing, warning lines)``.

    Raises:
        ConfigError: ``spec`` names an extractor or settings this merc cannot reproduce.
        DataError: A missing or unreadable file, a segment outside its file
            (:func:`merc.features.extract.extract_segments`; the utterance is named).
    """
    from merc.features.extract import extract_segments, extractor_from_spec

    extractor = extractor_from_spec(spec)
    if extractor.frame_level or extractor.dim != spec["dim"]:
        raise ConfigError(
            f"the model's {MODALITY_NAMES[m]} features ({_spec_phrase(spec)}) are not utterance-level features "
            f"this merc's {extractor.name} extractor makes ({extractor.dim}-d); use the merc the model was trained with"
        )
    warnings: list[str] = []
    now = extractor.spec().get("library_version")
    if spec.get("library_version") and now != spec.get("library_version"):
        warnings.append(
            f"the model's {MODALITY_NAMES[m]} features were made with {spec.get('library')} "
            f"{spec.get('library_version')}, this installation has {now}: the features may differ slightly"
        )
    result = extract_segments(data.segments(m), extractor, show_progress=show_progress, what=data.source)
    assert result.features is not None  # utterance-level, checked above
    uids = [u for c in data.conversations for u in c.utterance_ids]
    available = result.present.copy()
    reasons = []
    if (~result.present).any():
        what = "audio or video" if m == "a" else "video"
        reasons.append(f"{int((~result.present).sum())} without {what} (first: {_first(uids, ~result.present)})")
    if "face_frames" in result.extras:
        no_face = result.present & (result.extras["face_frames"] == 0)
        if no_face.any():
            reasons.append(f"{int(no_face.sum())} with no face in any sampled frame (first: {_first(uids, no_face)})")
        available &= ~no_face
    return result.features, available, "; ".join(reasons), warnings


def _route(bundle: Bundle, data: PredictInput, m: str) -> str:
    """Where ``m``'s features come from: ``"provided"`` (the input's file), ``"extract"`` (its media) or ``"missing"``.

    Raises:
        DataError: The input's features file was made otherwise than the model's
            features and there is no media to remake them, or the model's features came
            with its training data and the input has media instead of features.
    """
    spec = bundle.feature_specs[m]
    extracted = spec["source"] in MEDIA_SOURCES
    has_media = m in ("a", "v") and any(s is not None for s in data.segments(m))  # text comes from no media
    if m in data.provided and (not extracted or _same_extraction(data.specs.get(m), spec)):
        if data.dims[m] != spec["dim"]:
            raise DataError(
                f"{data.source}: its {MODALITY_NAMES[m]} features are {data.dims[m]}-d, the model was trained on "
                f"{spec['dim']}-d ones ({_spec_phrase(spec)})"
            )
        return "provided"
    if extracted and has_media:
        return "extract"
    if m in data.provided:
        raise DataError(
            f"{data.source}: its {MODALITY_NAMES[m]} features are {_spec_phrase(data.specs.get(m) or {})}, the model "
            f"was trained on {_spec_phrase(spec)}; name the media in the input (audio / video) so that merc computes "
            "them as the model's were, or re-extract them with that extractor (merc extract --overwrite)"
        )
    if has_media and not extracted:
        raise DataError(
            f"{data.source}: the model's {MODALITY_NAMES[m]} features are {_spec_phrase(spec)} that came with its "
            "training data (not computed by merc), so they cannot be recomputed from the input's media; give a "
            f"native dataset folder with features/{m}.safetensors made the same way, or use a model trained on "
            f"features merc extracts (merc extract --modalities {m})"
        )
    return "missing"


def _provided_features(bundle: Bundle, data: PredictInput, m: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(features [N, d], available [N], why some are missing)`` from the input's features file."""
    feats = np.concatenate([c.features[m] for c in data.conversations]).astype(np.float32)
    if bundle.feature_specs[m]["source"] not in MEDIA_SOURCES:
        return feats, np.ones(len(feats), dtype=bool), ""
    # An extractor's zero row marks an utterance without media (or, visual, without a face).
    available = np.asarray(feats.any(axis=1), dtype=bool)
    if available.all():
        return feats, available, ""
    uids = [u for c in data.conversations for u in c.utterance_ids]
    return (
        feats,
        available,
        f"{int((~available).sum())} with a zero row in its features file: no media or no face "
        f"(first: {_first(uids, ~available)})",
    )


def _unused_media(bundle: Bundle, data: PredictInput) -> list[str]:
    """A warning when the input names media the model reads nothing from."""
    audio = sum(s is not None for c in data.media.values() for s in c.audio)
    video = sum(s is not None for c in data.media.values() for s in c.video)
    unused = []
    if audio and "a" not in bundle.modalities:
        unused.append(f"audio files for {audio} utterance{'s' if audio > 1 else ''}")
    if video and not {"a", "v"} & set(bundle.modalities):
        unused.append(f"video files for {video} utterance{'s' if video > 1 else ''}")
    if not unused:
        return []
    return [f"the input names {' and '.join(unused)}; the model ({''.join(bundle.modalities)}) does not use them"]


def prepare(bundle: Bundle, data: PredictInput, show_progress: bool = True) -> tuple[MercDataset, list[str]]:
    """The input as a standardised one-split dataset with availability, plus warning lines.

    Raises:
        DataError: Input the model cannot be applied to: none of its modalities
            present, features of other dims or made otherwise, media for features that
            merc cannot recompute (``"provided"``), a missing or unreadable media file
            or segment (the utterance is named), NaN features.
        ConfigError: A recorded extractor this merc cannot rebuild.

    Shapes:
        - each conversation's ``features[m]``: ``[n_utt, d_m]``; ``availability``: ``[n_utt, 3]``.
    """
    from merc.features.media import check_segments

    warnings: list[str] = _unused_media(bundle, data)
    n = data.num_utterances
    media_modalities = [m for m in bundle.modalities if bundle.feature_specs[m]["source"] != "text-encoder"]
    # Everything the input cannot give is refused, and every media file probed, before any work starts.
    routes = {m: _route(bundle, data, m) for m in media_modalities}
    for m in media_modalities:
        if routes[m] == "extract":
            check_segments(data.segments(m), "audio" if m == "a" else "video")
    avail = np.ones((n, len(MODALITIES)), dtype=bool)
    flat: dict[str, np.ndarray] = {}
    why: dict[str, str] = {}
    for m in bundle.modalities:
        spec = bundle.feature_specs[m]
        col = MODALITIES.index(m)
        if spec["source"] == "text-encoder":
            flat[m] = _text_features(bundle, data, show_progress)
            avail[:, col] = np.concatenate([data.text_present[c.id] for c in data.conversations])
        elif routes[m] == "provided":
            flat[m], avail[:, col], why[m] = _provided_features(bundle, data, m)
        elif routes[m] == "extract":
            flat[m], avail[:, col], why[m], extra = _media_features(spec, data, m, show_progress)
            warnings += extra
        else:
            flat[m] = np.zeros((n, spec["dim"]), np.float32)
            avail[:, col] = False
    model_cols = [MODALITIES.index(m) for m in bundle.modalities]
    if not avail[:, model_cols].any():
        raise DataError(
            f"{data.source}: none of the model's modalities ({''.join(bundle.modalities)}) is present in the input "
            f"({'; '.join(f'{m}: {_spec_phrase(bundle.feature_specs[m])}' for m in bundle.modalities)}): "
            "nothing to predict from"
        )
    for m, col in zip(bundle.modalities, model_cols):
        missing = int((~avail[:, col]).sum())
        if missing:
            reason = f" ({why[m]})" if why.get(m) else ""
            warnings.append(
                f"the model was trained with {''.join(bundle.modalities)}; {MODALITY_NAMES[m]} is missing for "
                f"{missing} of {n} utterances{reason}: predicting with the availability mask (missing features = "
                "the training mean; each row's modalities_missing says which)"
            )
    convs: list[Conversation] = []
    start = 0
    for conv in data.conversations:
        end = start + len(conv)
        convs.append(
            conv.replace(
                features={m: flat[m][start:end] for m in bundle.modalities},
                availability=avail[start:end] if not avail[start:end].all() else None,
                split="test",
            )
        )
        start = end
    dataset = MercDataset(
        name="predict",
        label_names=bundle.label_names,
        splits={"test": convs},
        modalities=bundle.modalities,
        speaker_vocab=bundle.speaker_vocab,
    )
    if bundle.statistics is not None:
        dataset = standardize_features(dataset, statistics=bundle.statistics, eps=bundle.eps)
    for conv in dataset.conversations():
        for m in bundle.modalities:
            if not np.isfinite(conv.features[m]).all():
                raise DataError(f"{data.source}: dialogue {conv.id!r}: {MODALITY_NAMES[m]} features contain NaN or inf")
    return dataset, warnings


def _spec_phrase(spec: dict[str, Any]) -> str:
    from merc.features.spec import describe_spec

    return describe_spec(spec)


def predict(
    bundle: Bundle,
    data: PredictInput,
    batch_size: int = 64,
    device: str = "cpu",
    unknown_speakers: str = "map",
    show_progress: bool = True,
    precision: str = "32",
) -> Prediction:
    """Predict every utterance of ``data`` with ``bundle``'s model (module docstring).

    Each row: ``dialogue_id``, ``utterance_index`` (0-based position in the dialogue),
    ``utterance_id``, ``speaker``, ``speaker_as`` (the training speaker a global-id model
    read, else ``None``), ``text``, ``label`` (predicted class name), ``probabilities``
    (``{class: p}``), ``modalities_present`` / ``modalities_missing`` (letters of the
    model's modalities, e.g. ``"t"`` / ``"av"``) and ``gold_label`` (the input's label,
    else ``None``).

    ``precision="bf16-mixed"`` runs the model under bfloat16 autocast, as
    ``training.precision`` does in training: about twice the throughput on CPUs with
    native bfloat16 (``bench/bench_predict.py``), probabilities within about 1e-2 of the
    float32 ones (``tests/inference/test_predict.py``); ``"32"`` (default) is the float32
    model exactly as ``merc evaluate`` runs it.

    Raises:
        ConfigError: An unknown ``unknown_speakers`` policy or ``precision``.
        DataError: Input the model cannot be applied to (see :func:`prepare`), a gold
            label the model does not know, an unseen speaker under ``"refuse"``.
    """
    if unknown_speakers not in UNKNOWN_SPEAKER_POLICIES:
        raise ConfigError(f"--unknown-speakers {unknown_speakers!r}: choose {' or '.join(UNKNOWN_SPEAKER_POLICIES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: choose {' or '.join(PRECISIONS)}")
    known = set(bundle.label_names)
    for dia, labels in data.gold.items():
        strange = [y for y in labels if y is not None and y not in known]
        if strange:
            raise DataError(
                f"{data.source}: dialogue {dia!r}: label {strange[0]!r} is not one of the model's labels "
                f"({', '.join(bundle.label_names)})"
            )
    model = bundle.build(device)
    dataset, warnings = prepare(bundle, data, show_progress)
    global_ids = uses_global_speakers(model)
    vocab = bundle.speaker_vocab
    cols = [MODALITIES.index(m) for m in bundle.modalities]
    items: list[ConversationTensors] = []
    speaker_as: dict[str, list[str | None]] = {}
    unseen_total: list[str] = []
    for conv in dataset.conversations():
        if global_ids:
            ids, unseen = speaker_ids(conv.speakers, vocab, unknown_speakers, f"dialogue {conv.id!r}")
            unseen_total += [s for s in unseen if s not in unseen_total]
            speaker_as[conv.id] = [vocab[ids[s]] for s in conv.speakers]
        else:
            ids = {s: 0 for s in conv.speakers}
            speaker_as[conv.id] = [None] * len(conv)
        items.append(conversation_tensors(conv, bundle.modalities, ids, cols))
    if unseen_total:
        warnings.append(
            f"{model.model_name} reads global speaker ids and {len(unseen_total)} speaker(s) were not seen in training "
            f"(e.g. {unseen_total[0]!r}): mapped to training speakers by order of appearance (speaker_as says to whom)"
        )
    for line in warnings:
        log.info(line)  # the command line prints them as warnings; library callers read Prediction.warnings
    probabilities: list[np.ndarray] = []
    low = precision == "bf16-mixed"
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=low):
        for batch in iterate_batches(items, bundle.modalities, batch_size):
            logits = model(batch.to(device)).logits.float()
            probabilities.append(torch.softmax(logits, dim=-1).cpu().numpy())
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, len(bundle.label_names)), np.float32)
    rows: list[dict[str, Any]] = []
    k = 0
    for conv, original in zip(dataset.conversations(), data.conversations):
        avail = conv.availability if conv.availability is not None else np.ones((len(conv), 3), bool)
        for i in range(len(conv)):
            present = "".join(m for m, c in zip(bundle.modalities, cols) if avail[i, c])
            rows.append(
                {
                    "dialogue_id": conv.id,
                    "utterance_index": i,
                    "utterance_id": conv.utterance_ids[i],
                    "speaker": conv.speakers[i],
                    "speaker_as": speaker_as[conv.id][i],
                    "text": (original.texts or [""] * len(conv))[i] if data.text_present[conv.id][i] else None,
                    "label": bundle.label_names[int(probs[k].argmax())],
                    "probabilities": {name: float(p) for name, p in zip(bundle.label_names, probs[k])},
                    "modalities_present": present,
                    "modalities_missing": "".join(m for m in bundle.modalities if m not in present),
                    "gold_label": data.gold[conv.id][i],
                }
            )
            k += 1
    return Prediction(rows, probs, warnings)


def output_format(out: str | Path) -> str:
    """``"jsonl"`` or ``"csv"`` from ``--out``'s suffix.

    Raises:
        ConfigError: Another suffix.
    """
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--out {out}: the predictions file must end in .jsonl or .csv")
    return OUTPUT_SUFFIXES[suffix]


def render(prediction: Prediction, label_names: Sequence[str], fmt: str) -> str:
    """The rows as JSONL (``probabilities`` an object) or CSV (one ``p_<class>`` column per class)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in prediction.rows)
    buffer = io.StringIO()
    fields = ["dialogue_id", "utterance_index", "utterance_id", "speaker", "speaker_as", "text", "label"]
    fields += [f"p_{name}" for name in label_names]
    fields += ["modalities_present", "modalities_missing", "gold_label"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in prediction.rows:
        flat = {k: ("" if v is None else v) for k, v in r.items() if k != "probabilities"}
        flat.update({f"p_{name}": f"{p:.6g}" for name, p in r["probabilities"].items()})
        writer.writerow(flat)
    return buffer.getvalue()


def write_predictions(prediction: Prediction, label_names: Sequence[str], out: str | Path) -> Path:
    """Write the predictions to ``out`` (format by suffix), all or nothing."""
    from merc.training.run_folder import atomic_write_text

    path = Path(out)
    text = render(prediction, label_names, output_format(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    readable_by_umask(path)
    return path

"""Readers of the published feature pickles and merc's native format.

Every fixture is written here, in ``tmp_path``, in the exact published layout with plain
``pickle.dump`` of dicts/lists/numpy arrays.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from merc.data.formats import native
from merc.data.formats.corect import read_corect_pickle
from merc.data.formats.dialoguegcn import (
    IEMOCAP4_LABELS,
    IEMOCAP6_LABELS,
    MELD_EMOTIONS,
    read_dialoguegcn_pickle,
    read_mmgcn_meld_pickle,
)
from merc.data.formats.native import read_native, write_native
from merc.data.schema import MercDataset
from merc.errors import DataError

# IEMOCAP-like: 5 dialogues of 1-6 utterances; dims as in IEMOCAP_features_raw.pkl.
LENGTHS = {"Ses01F_impro01": 1, "Ses01F_impro02": 6, "Ses02M_script01": 3, "Ses03F_impro03": 4, "Ses05M_impro04": 2}
DIMS = {"t": 100, "a": 100, "v": 512}
TRAIN = ["Ses01F_impro01", "Ses01F_impro02", "Ses02M_script01", "Ses03F_impro03"]
TEST = ["Ses05M_impro04"]


def _iemocap_fields(num_classes: int = 6, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    f: dict[str, Any] = {k: {} for k in ("ids", "spk", "lab", "t", "a", "v", "sent")}
    for i, (vid, n) in enumerate(LENGTHS.items()):
        f["ids"][vid] = [f"{vid}_{'FM'[j % 2]}{j:03d}" for j in range(n)]
        f["spk"][vid] = ["F" if (i + j) % 2 == 0 else "M" for j in range(n)]
        # Labels cycle through every class so the class count is visible in the data.
        f["lab"][vid] = [(i * 3 + j) % num_classes for j in range(n)]
        # Text/audio as lists of per-utterance arrays (float64, as in the file), visual as one array.
        f["t"][vid] = [rng.standard_normal(DIMS["t"]) for _ in range(n)]
        f["a"][vid] = [rng.standard_normal(DIMS["a"]).tolist() for _ in range(n)]
        f["v"][vid] = rng.standard_normal((n, DIMS["v"])).astype(np.float32)
        f["sent"][vid] = [f"utterance {j} of {vid}, café" for j in range(n)]
    f["lab"]["Ses01F_impro02"][-1] = num_classes - 1
    return f


def _nine_tuple(f: dict[str, Any], train: Any = None, test: Any = None) -> tuple[Any, ...]:
    return (
        f["ids"],
        f["spk"],
        f["lab"],
        f["t"],
        f["a"],
        f["v"],
        f["sent"],
        list(TRAIN) if train is None else train,
        list(TEST) if test is None else test,
    )


def _dump(obj: Any, path: Path, protocol: int = 2) -> Path:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


def _meld_fields() -> tuple[tuple[Any, ...], dict[int, list[list[int]]]]:
    """MMGCN's MELD_features_raw1.pkl layout: int ids, one-hot speakers (9), 10th item."""
    rng = np.random.default_rng(1)
    lengths = {0: 3, 1: 1, 2: 5, 1039: 2, 1040: 4}
    ids, spk, lab, t, a, v, sent = {}, {}, {}, {}, {}, {}, {}
    for d, n in lengths.items():
        ids[d] = list(range(n))
        spk[d] = [[1 if k == (d + j) % 9 else 0 for k in range(9)] for j in range(n)]
        lab[d] = [(d + j) % 7 for j in range(n)]
        t[d] = rng.standard_normal((n, 600)).astype(np.float32)
        a[d] = rng.standard_normal((n, 300)).astype(np.float32)
        v[d] = rng.standard_normal((n, 342)).astype(np.float32)
        sent[d] = [f"line {j}" for j in range(n)]
    lab[2][0] = 6
    extra = {d: [0] * n for d, n in lengths.items()}  # the ignored trailing item
    return (ids, spk, lab, t, a, v, sent, [0, 1, 2], [1039, 1040], extra), spk


def _corect_obj() -> dict[str, list[dict[str, Any]]]:
    f = _iemocap_fields()
    layout = {"train": TRAIN[:3], "dev": TRAIN[3:], "test": TEST}
    return {
        split: [
            {
                "vid": vid,
                "speakers": f["spk"][vid],
                "labels": f["lab"][vid],
                "text": f["t"][vid],
                "audio": f["a"][vid],
                "visual": f["v"][vid],
                "sentence": f["sent"][vid],
            }
            for vid in vids
        ]
        for split, vids in layout.items()
    }


def _assert_same(a: MercDataset, b: MercDataset) -> None:
    assert (a.name, a.label_names, a.modalities, a.speaker_vocab, a.description, a.meta) == (
        b.name,
        b.label_names,
        b.modalities,
        b.speaker_vocab,
        b.description,
        b.meta,
    )
    assert list(a.splits) == list(b.splits)
    for split in a.splits:
        assert [c.id for c in a.splits[split]] == [c.id for c in b.splits[split]]
        for x, y in zip(a.splits[split], b.splits[split], strict=True):
            assert (x.split, x.speakers, x.utterance_ids, x.texts, x.meta) == (
                y.split,
                y.speakers,
                y.utterance_ids,
                y.texts,
                y.meta,
            )
            assert x.labels.dtype == y.labels.dtype and x.labels.tolist() == y.labels.tolist()
            assert x.features.keys() == y.features.keys()
            for m in x.features:
                assert x.features[m].dtype == y.features[m].dtype == np.float32
                assert x.features[m].shape == y.features[m].shape
                assert x.features[m].tobytes() == y.features[m].tobytes()


# -- DialogueGCN 9-tuple ---------------------------------------------------------------


def test_dialoguegcn_reads_published_layout(tmp_path: Path) -> None:
    f = _iemocap_fields()
    ds = read_dialoguegcn_pickle(_dump(_nine_tuple(f), tmp_path / "IEMOCAP_features_raw.pkl"), name="iemocap6")
    assert ds.name == "iemocap6"
    assert ds.label_names == IEMOCAP6_LABELS
    assert ds.modalities == ("t", "a", "v")
    assert ds.dims == DIMS
    assert [c.id for c in ds.splits["test"]] == TEST
    # 10% of 4 train dialogues rounds to the minimum of one held out.
    assert len(ds.splits["valid"]) == 1
    held = ds.splits["valid"][0].id
    assert [c.id for c in ds.splits["train"]] == [v for v in TRAIN if v != held]
    assert ds.meta["valid_ids"] == [held]
    assert ds.speaker_vocab == ["F", "M"]
    for conv in ds.conversations():
        vid = conv.id
        assert conv.labels.tolist() == f["lab"][vid]
        assert conv.speakers == f["spk"][vid]
        assert conv.utterance_ids == f["ids"][vid]
        assert conv.texts == f["sent"][vid]
        np.testing.assert_array_equal(conv.features["t"], np.asarray(f["t"][vid], dtype=np.float32))
        np.testing.assert_array_equal(conv.features["a"], np.asarray(f["a"][vid], dtype=np.float32))
        np.testing.assert_array_equal(conv.features["v"], f["v"][vid])
        assert all(x.dtype == np.float32 for x in conv.features.values())


def test_dialoguegcn_valid_split_is_seeded_and_order_independent(tmp_path: Path) -> None:
    f = _iemocap_fields()
    as_list = _dump(_nine_tuple(f), tmp_path / "list.pkl")
    # The published files may hold trainVid as a set, whose order varies between processes.
    as_set = _dump(_nine_tuple(f, train=set(TRAIN), test=set(TEST)), tmp_path / "set.pkl")
    picks = {seed: read_dialoguegcn_pickle(as_list, seed=seed).meta["valid_ids"] for seed in range(8)}
    assert picks[3] == read_dialoguegcn_pickle(as_list, seed=3).meta["valid_ids"]
    assert picks[3] == read_dialoguegcn_pickle(as_set, seed=3).meta["valid_ids"]
    assert len({tuple(p) for p in picks.values()}) > 1, "the seed should change the held-out dialogue"
    half = read_dialoguegcn_pickle(as_list, valid_fraction=0.5)
    assert len(half.splits["valid"]) == 2 and len(half.splits["train"]) == 2


def test_dialoguegcn_explicit_valid_ids(tmp_path: Path) -> None:
    path = _dump(_nine_tuple(_iemocap_fields()), tmp_path / "f.pkl")
    ds = read_dialoguegcn_pickle(path, valid_ids=["Ses01F_impro02", "Ses03F_impro03"])
    assert [c.id for c in ds.splits["valid"]] == ["Ses01F_impro02", "Ses03F_impro03"]
    assert [c.id for c in ds.splits["train"]] == ["Ses01F_impro01", "Ses02M_script01"]
    assert all(c.split == "valid" for c in ds.splits["valid"])
    with pytest.raises(DataError, match="Ses05M_impro04"):
        read_dialoguegcn_pickle(path, valid_ids=["Ses05M_impro04"])  # a test dialogue
    with pytest.raises(DataError, match="no training data"):
        read_dialoguegcn_pickle(path, valid_ids=TRAIN)


def test_dialoguegcn_label_names_default_and_override(tmp_path: Path) -> None:
    path4 = _dump(_nine_tuple(_iemocap_fields(num_classes=4)), tmp_path / "iemocap4.pkl")
    assert read_dialoguegcn_pickle(path4).label_names == IEMOCAP4_LABELS
    path3 = _dump(_nine_tuple(_iemocap_fields(num_classes=3)), tmp_path / "three.pkl")
    assert read_dialoguegcn_pickle(path3).label_names == ["class0", "class1", "class2"]
    assert read_dialoguegcn_pickle(path3, label_names=["neg", "neu", "pos"]).label_names == ["neg", "neu", "pos"]


def test_dialoguegcn_one_hot_numpy_speakers(tmp_path: Path) -> None:
    f = _iemocap_fields()
    names = {}
    for vid, spk in f["spk"].items():
        # MOSEI style: numpy one-hot rows; speaker k of 3.
        ks = [j % 3 for j in range(len(spk))]
        f["spk"][vid] = np.eye(3, dtype=np.float32)[ks]
        names[vid] = [f"spk{k}" for k in ks]
    ds = read_dialoguegcn_pickle(_dump(_nine_tuple(f), tmp_path / "f.pkl"))
    for conv in ds.conversations():
        assert conv.speakers == names[conv.id]
    assert ds.speaker_vocab == ["spk0", "spk1", "spk2"]


def test_mmgcn_meld_ten_tuple(tmp_path: Path) -> None:
    obj, spk = _meld_fields()
    path = _dump(obj, tmp_path / "MELD_features_raw1.pkl", protocol=4)
    ds = read_mmgcn_meld_pickle(path, valid_ids=[1])
    assert ds.name == "meld"
    assert ds.label_names == MELD_EMOTIONS == ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
    assert [c.id for c in ds.splits["train"]] == ["0", "2"]
    assert [c.id for c in ds.splits["valid"]] == ["1"]
    assert [c.id for c in ds.splits["test"]] == ["1039", "1040"]
    assert ds.dims == {"t": 600, "a": 300, "v": 342}
    conv = ds.splits["train"][1]
    assert conv.speakers == [f"spk{int(np.argmax(s))}" for s in spk[2]] == ["spk2", "spk3", "spk4", "spk5", "spk6"]
    assert conv.labels.tolist() == [6, 3, 4, 5, 6]
    np.testing.assert_array_equal(conv.features["t"], obj[3][2])
    # The generic reader takes the 10-tuple too, with class names when not told otherwise.
    assert read_dialoguegcn_pickle(path).label_names == [f"class{k}" for k in range(7)]


def test_dialoguegcn_errors(tmp_path: Path) -> None:
    f = _iemocap_fields()
    good = pickle.dumps(_nine_tuple(f), protocol=2)
    (tmp_path / "cut.pkl").write_bytes(good[: len(good) // 3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_dialoguegcn_pickle(tmp_path / "cut.pkl")

    wrong = _dump({"videoIDs": f["ids"], "trainVid": TRAIN}, tmp_path / "dict.pkl")
    with pytest.raises(DataError, match=r"expected a 9-tuple .* got a dict with keys \['videoIDs', 'trainVid'\]"):
        read_dialoguegcn_pickle(wrong)
    with pytest.raises(DataError, match="got a tuple of 7 items"):
        read_dialoguegcn_pickle(_dump(_nine_tuple(f)[:7], tmp_path / "short.pkl"))
    corect = _dump(_corect_obj(), tmp_path / "data_iemocap.pkl")
    with pytest.raises(DataError, match="read_corect_pickle"):
        read_dialoguegcn_pickle(corect)

    missing = _iemocap_fields()
    del missing["a"]["Ses02M_script01"]
    with pytest.raises(DataError, match="missing from videoAudio, e.g. 'Ses02M_script01'"):
        read_dialoguegcn_pickle(_dump(_nine_tuple(missing), tmp_path / "missing.pkl"))

    short = _iemocap_fields()
    short["v"]["Ses01F_impro02"] = short["v"]["Ses01F_impro02"][:5]
    with pytest.raises(DataError, match=r"'Ses01F_impro02': 5 v feature rows for 6 labels"):
        read_dialoguegcn_pickle(_dump(_nine_tuple(short), tmp_path / "short_v.pkl"))
    spk = _iemocap_fields()
    spk["spk"]["Ses03F_impro03"].append("M")
    with pytest.raises(DataError, match="5 speakers for 4 labels"):
        read_dialoguegcn_pickle(_dump(_nine_tuple(spk), tmp_path / "spk.pkl"))

    nan = _iemocap_fields()
    nan["t"]["Ses03F_impro03"][2][7] = np.nan
    with pytest.raises(DataError, match="'Ses03F_impro03': text features contain NaN"):
        read_dialoguegcn_pickle(_dump(_nine_tuple(nan), tmp_path / "nan.pkl"))

    path6 = _dump(_nine_tuple(f), tmp_path / "six.pkl")
    with pytest.raises(DataError, match=r"'Ses01F_impro02': label 4 out of range; labels must be 0..3"):
        read_dialoguegcn_pickle(path6, label_names=IEMOCAP4_LABELS)

    with pytest.raises(DataError, match="listed twice"):
        read_dialoguegcn_pickle(_dump(_nine_tuple(f, test=[*TEST, TRAIN[0]]), tmp_path / "twice.pkl"))


# -- CORECT ----------------------------------------------------------------------------


def test_corect_reads_published_layout(tmp_path: Path) -> None:
    obj = _corect_obj()
    ds = read_corect_pickle(_dump(obj, tmp_path / "data_iemocap.pkl", protocol=4), name="iemocap6")
    assert ds.label_names == IEMOCAP6_LABELS
    assert {s: [c.id for c in convs] for s, convs in ds.splits.items()} == {
        "train": TRAIN[:3],
        "valid": TRAIN[3:],
        "test": TEST,
    }
    assert ds.splits["valid"][0].split == "valid"
    for split, src in (("train", "train"), ("valid", "dev"), ("test", "test")):
        for conv, dlg in zip(ds.splits[split], obj[src], strict=True):
            assert conv.labels.tolist() == dlg["labels"]
            assert conv.speakers == dlg["speakers"]
            assert conv.texts == dlg["sentence"]
            assert conv.utterance_ids == [f"{conv.id}_{i}" for i in range(len(conv))]
            np.testing.assert_array_equal(conv.features["t"], np.asarray(dlg["text"], dtype=np.float32))
            np.testing.assert_array_equal(conv.features["a"], np.asarray(dlg["audio"], dtype=np.float32))
            np.testing.assert_array_equal(conv.features["v"], dlg["visual"])


def test_corect_errors(tmp_path: Path) -> None:
    good = pickle.dumps(_corect_obj(), protocol=4)
    (tmp_path / "cut.pkl").write_bytes(good[:-10])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_corect_pickle(tmp_path / "cut.pkl")
    tuple_file = _dump(_nine_tuple(_iemocap_fields()), tmp_path / "IEMOCAP_features.pkl")
    with pytest.raises(DataError, match=r"expected CORECT's dict .* got a tuple of 9 items; .*read_dialoguegcn_pickle"):
        read_corect_pickle(tuple_file)
    no_dev = _corect_obj()
    del no_dev["dev"]
    with pytest.raises(DataError, match=r"got a dict with keys \['train', 'test'\]"):
        read_corect_pickle(_dump(no_dev, tmp_path / "nodev.pkl"))
    no_audio = _corect_obj()
    del no_audio["test"][0]["audio"]
    with pytest.raises(DataError, match=r"test\[0\] lacks key\(s\) audio"):
        read_corect_pickle(_dump(no_audio, tmp_path / "noaudio.pkl"))
    nan = _corect_obj()
    nan["dev"][0]["visual"][1, 3] = np.inf
    with pytest.raises(DataError, match="visual features contain NaN or inf"):
        read_corect_pickle(_dump(nan, tmp_path / "nan.pkl"))
    ragged = _corect_obj()
    ragged["train"][1]["labels"] = ragged["train"][1]["labels"][:-1]
    with pytest.raises(DataError, match="speakers for 5 labels"):
        read_corect_pickle(_dump(ragged, tmp_path / "ragged.pkl"))


# -- native ----------------------------------------------------------------------------


@pytest.fixture(params=["dialoguegcn", "mmgcn_meld", "corect"])
def published(request: pytest.FixtureRequest, tmp_path: Path) -> MercDataset:
    if request.param == "dialoguegcn":
        return read_dialoguegcn_pickle(_dump(_nine_tuple(_iemocap_fields()), tmp_path / "f.pkl"), name="iemocap6")
    if request.param == "mmgcn_meld":
        return read_mmgcn_meld_pickle(_dump(_meld_fields()[0], tmp_path / "m.pkl"))
    return read_corect_pickle(_dump(_corect_obj(), tmp_path / "c.pkl"), name="iemocap6")


def test_native_round_trip_is_identical(published: MercDataset, tmp_path: Path) -> None:
    published.splits["train"][0].meta["season"] = 3
    folder = write_native(published, tmp_path / "out" / "ds")
    assert sorted(p.name for p in folder.iterdir()) == ["conversations.jsonl", "features", "metadata.json"]
    assert sorted(p.name for p in (folder / "features").iterdir()) == [
        "a.safetensors",
        "t.safetensors",
        "v.safetensors",
    ]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["format_version"] == 1 and meta["dims"] == published.dims
    back = read_native(folder)
    _assert_same(published, back)
    assert back.splits["train"][0].meta == {"season": 3}
    # Loaded features are private copies the caller may modify.
    back.splits["train"][0].features["t"][0, 0] += 1.0
    # No temp folders left beside the result.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ds"]


def test_native_overwrite_rules(published: MercDataset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    folder = write_native(published, out / "ds")
    with pytest.raises(DataError, match="overwrite=True"):
        write_native(published, folder)
    published.splits["test"][0].labels[0] = 0
    write_native(published, folder, overwrite=True)
    assert read_native(folder).splits["test"][0].labels[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["ds"]
    other = out / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a merc native dataset"):
        write_native(published, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_native_interrupted_write_leaves_nothing(
    published: MercDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def failing_save(tensors: dict[str, np.ndarray], filename: Any, metadata: Any = None) -> None:
        calls.append(filename)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressing Ctrl-C mid-export
        save_file(tensors, filename, metadata=metadata)

    out = tmp_path / "out"
    monkeypatch.setattr(native, "save_file", failing_save)
    with pytest.raises(KeyboardInterrupt):
        write_native(published, out / "ds")
    assert list(out.iterdir()) == []
    # An existing dataset survives a failed overwrite untouched.
    monkeypatch.setattr(native, "save_file", save_file)
    folder = write_native(published, out / "ds")
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    calls.clear()
    monkeypatch.setattr(native, "save_file", failing_save)
    with pytest.raises(KeyboardInterrupt):
        write_native(published, folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.iterdir()] == ["ds"]


@pytest.fixture
def native_folder(tmp_path: Path) -> Path:
    ds = read_dialoguegcn_pickle(_dump(_nine_tuple(_iemocap_fields()), tmp_path / "f.pkl"), name="iemocap6")
    return write_native(ds, tmp_path / "ds")


def test_native_missing_files(native_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        read_native(tmp_path / "absent")
    (native_folder / "features" / "v.safetensors").unlink()
    with pytest.raises(DataError, match=r"v\.safetensors: missing"):
        read_native(native_folder)
    (native_folder / "conversations.jsonl").unlink()
    with pytest.raises(DataError, match=r"conversations\.jsonl: missing"):
        read_native(native_folder)
    (native_folder / "metadata.json").unlink()
    with pytest.raises(DataError, match="no metadata.json"):
        read_native(native_folder)


def test_native_bad_json_line_names_the_line(native_folder: Path) -> None:
    path = native_folder / "conversations.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"conversations\.jsonl:3: bad JSON"):
        read_native(native_folder)


def test_native_dim_mismatch(native_folder: Path) -> None:
    path = native_folder / "metadata.json"
    meta = json.loads(path.read_text())
    meta["dims"]["a"] = 64
    path.write_text(json.dumps(meta))
    with pytest.raises(
        DataError, match=r"a\.safetensors: features of .* have shape \(\d+, 100\), but metadata.json says dim 64"
    ):
        read_native(native_folder)


def test_native_features_for_unknown_conversation(native_folder: Path) -> None:
    path = native_folder / "features" / "t.safetensors"
    tensors = load_file(path)
    tensors["Ses09X_ghost"] = np.zeros((2, 100), np.float32)
    save_file(tensors, path)
    with pytest.raises(DataError, match="unknown conversation 'Ses09X_ghost'"):
        read_native(native_folder)


def test_native_label_out_of_range(native_folder: Path) -> None:
    path = native_folder / "conversations.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[1]["labels"][0] = 9
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError, match="label 9 out of range; labels must be 0..5"):
        read_native(native_folder)


def test_native_corrupt_safetensors_and_version(native_folder: Path) -> None:
    meta_path = native_folder / "metadata.json"
    meta = json.loads(meta_path.read_text())
    feat = native_folder / "features" / "a.safetensors"
    feat.write_bytes(feat.read_bytes()[:40])
    with pytest.raises(DataError, match="not a readable safetensors file"):
        read_native(native_folder)
    meta["format_version"] = 2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format_version 2"):
        read_native(native_folder)

"""The real corpora: counts must match the data README and the papers' dataset tables."""

from __future__ import annotations

import pytest

from merc.data.registry import load_dataset, resolve_data_root
from merc.errors import DataError

try:
    resolve_data_root()
    HAVE_DATA = True
except DataError:
    HAVE_DATA = False
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="../shared/data not present")


def _counts(name: str) -> dict[str, tuple[int, int]]:
    return {k: (v["dialogues"], v["utterances"]) for k, v in load_dataset(name).summary().items()}


@needs_data
def test_iemocap6_counts_and_split() -> None:
    # 151 dialogues / 7,433 utterances; COSMIC split 108/12/31, Session 5 (1,623) = test.
    assert _counts("iemocap6") == {"train": (108, 5163), "valid": (12, 647), "test": (31, 1623)}
    ds = load_dataset("iemocap6")
    assert ds.label_names == ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
    assert all(c.id.startswith("Ses05") for c in ds.splits["test"])
    assert not any(c.id.startswith("Ses05") for c in ds.conversations("train"))
    assert ds.speaker_vocab == ["F", "M"]
    assert ds.splits["train"][0].utterance_ids[0].startswith(ds.splits["train"][0].id)
    assert sum(ds.summary()["test"]["classes"].values()) == 1623


@needs_data
def test_iemocap4_is_the_5531_utterance_protocol() -> None:
    counts = _counts("iemocap4")
    assert counts["train"][1] + counts["valid"][1] == 4290
    assert counts["test"] == (31, 1241)
    assert sum(u for _, u in counts.values()) == 5531
    ds = load_dataset("iemocap4")
    assert ds.label_names == ["happy", "sad", "neutral", "angry"]


@needs_data
def test_iemocap4_cogmen_keeps_only_hap_sad_neu_ang() -> None:
    counts = _counts("iemocap4-cogmen")
    # CORECT Table 1: 4-way 3,200 + 400 train/valid (their split) and 943 test: 4,543 in all.
    assert counts["test"] == (31, 943)
    assert sum(u for _, u in counts.values()) == 4543
    six = load_dataset("iemocap6")
    four = load_dataset("iemocap4-cogmen")
    conv6 = next(c for c in six.conversations() if c.id == "Ses01F_impro01")
    conv4 = next(c for c in four.conversations() if c.id == "Ses01F_impro01")
    assert list(conv4.labels) == [int(x) for x in conv6.labels if x < 4]


@needs_data
@pytest.mark.parametrize("name", ["meld7", "meld3"])
def test_meld_official_split(name: str) -> None:
    # MELD: 13,708 utterances; train 9,989 / dev 1,109 / test 2,610.
    assert _counts(name) == {"train": (1038, 9989), "valid": (114, 1109), "test": (280, 2610)}
    ds = load_dataset(name)
    assert "Chandler" in ds.speaker_vocab and ds.max_parties > 2
    conv = ds.splits["train"][0]
    assert conv.texts is not None and "’" in conv.texts[0]  # typographic quotes kept, UTF-8


@needs_data
def test_meld7_label_distribution_matches_release() -> None:
    classes = load_dataset("meld7").summary()["test"]["classes"]
    assert classes == {
        "neutral": 1256,
        "surprise": 281,
        "fear": 50,
        "sadness": 208,
        "joy": 402,
        "disgust": 68,
        "anger": 345,
    }


def test_missing_data_root_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DataError, match="data root not found"):
        load_dataset("iemocap6", data_root=tmp_path / "nowhere")


def test_meld_unknown_label_is_reported_with_line(tmp_path) -> None:
    from merc.data.corpora import MELD7_LABELS, read_meld_csv

    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
    path = tmp_path / "train_sent_emo.csv"
    path.write_text(header + '1,Hi,Ross,neutral,neutral,0,0,1,1,"0","0"\n2,Ho,Rachel,bored,neutral,0,1,1,1,"0","0"\n')
    with pytest.raises(DataError, match=r"train_sent_emo.csv:3: unknown label 'bored'"):
        read_meld_csv(path, "train", "Emotion", MELD7_LABELS)

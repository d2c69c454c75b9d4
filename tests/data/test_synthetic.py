"""Synthetic data: structure, determinism and the properties the generator promises.

Each property test measures the effect the module docstring claims (imbalance, inertia,
exclusive pairs, fusion, speaker and context effects, calibration) with a cheap
scikit-learn classifier, so a generator that lost the property fails here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from merc.data import registry
from merc.data import synthetic as syn
from merc.data.schema import MercDataset
from merc.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    # The classifiers here are small; multithreaded BLAS only slows them on a busy machine.
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def default_ds() -> MercDataset:
    return syn.generate_synthetic(seed=0)


@pytest.fixture(scope="module")
def text_only_base() -> MercDataset:
    """A stand-in for iemocap6 with text features: ~2,000 utterances, "t" only."""
    return syn.generate_synthetic(
        num_dialogues=(60, 12, 20), min_len=10, max_len=34, dims={"t": 48}, informativeness={"t": 2.5}, seed=7
    ).with_modalities("t")


def _same_speaker_persistence(ds: MercDataset) -> float:
    """P(label of a speaker's utterance == label of its previous utterance in the dialogue)."""
    same = []
    for conv in ds.conversations():
        last: dict[str, int] = {}
        for spk, lab in zip(conv.speakers, conv.labels.tolist(), strict=True):
            if spk in last:
                same.append(last[spk] == lab)
            last[spk] = lab
    return float(np.mean(same))


# -- structure -----------------------------------------------------------------------------
def test_default_dataset_is_fast_valid_and_described() -> None:
    start = time.perf_counter()
    ds = syn.generate_synthetic()
    assert time.perf_counter() - start < 1.0
    ds.validate()
    assert ds.name == "synthetic"
    assert ds.modalities == ("t", "a", "v")
    assert ds.dims == {"t": 64, "a": 32, "v": 32}
    assert ds.label_names == ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
    assert [len(ds.splits[s]) for s in ("train", "valid", "test")] == [120, 20, 40]
    assert ds.speaker_vocab == [f"s{k}" for k in range(8)]
    assert "GENERATED" in ds.description
    assert ds.meta["params"]["seed"] == 0 and ds.meta["params"]["dims"] == ds.dims
    for conv in ds.conversations():
        assert 4 <= len(conv) <= 24
        assert 2 <= len(set(conv.speakers)) <= 4
        assert conv.texts is None
        assert conv.utterance_ids == [f"{conv.id}_{i}" for i in range(len(conv))]
        assert all(f.dtype == np.float32 for f in conv.features.values())


def test_options_shape_the_dataset() -> None:
    ds = syn.generate_synthetic(num_dialogues=(3, 2, 2), num_classes=8, dims={"a": 5, "t": 7}, min_len=6, max_len=6)
    ds.validate()
    assert ds.modalities == ("t", "a") and ds.dims == {"t": 7, "a": 5}
    assert ds.label_names == [f"c{k}" for k in range(8)]
    assert all(len(c) == 6 for c in ds.conversations())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 1},
        {"min_len": 5, "max_len": 4},
        {"num_speakers_range": (2, 9)},
        {"speaker_inertia": 1.5},
        {"class_prior": [1.0, 2.0]},
        {"num_dialogues": (3, 0, 1)},
    ],
)
def test_bad_options_raise(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        syn.generate_synthetic(**kwargs)


def test_same_seed_same_data_other_seed_other_data(default_ds: MercDataset) -> None:
    again = syn.generate_synthetic(seed=0)
    other = syn.generate_synthetic(seed=1)
    for a, b in zip(default_ds.conversations(), again.conversations(), strict=True):
        assert a.id == b.id and a.speakers == b.speakers
        np.testing.assert_array_equal(a.labels, b.labels)
        for m in "tav":
            np.testing.assert_array_equal(a.features[m], b.features[m])
    first, first_other = next(default_ds.conversations()), next(other.conversations())
    assert not np.array_equal(first.features["t"][:1], first_other.features["t"][:1])
    labels = np.concatenate([c.labels for c in default_ds.conversations()])
    labels_other = np.concatenate([c.labels for c in other.conversations()])
    assert labels.shape != labels_other.shape or not np.array_equal(labels, labels_other)


def test_each_modality_has_its_own_random_stream(default_ds: MercDataset) -> None:
    # Changing the visual dim must leave labels, speakers and text features untouched.
    ds = syn.generate_synthetic(dims={"t": 64, "a": 32, "v": 7}, seed=0)
    for a, b in zip(default_ds.conversations(), ds.conversations(), strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.features["t"], b.features["t"])
        assert a.speakers == b.speakers


# -- label dynamics ---------------------------------------------------------------------------
def test_classes_are_imbalanced_and_follow_the_prior() -> None:
    ds = syn.generate_synthetic(num_dialogues=(400, 20, 20), seed=3)
    labels = np.concatenate([c.labels for c in ds.conversations()])
    freq = np.bincount(labels, minlength=6) / labels.size
    prior = np.asarray(ds.meta["params"]["class_prior"])
    assert freq.max() / freq.min() > 2.0
    assert 0.5 * np.abs(freq - prior).sum() < 0.05  # the marginal is pi (module docstring, step 2)


def test_speaker_inertia_is_visible(default_ds: MercDataset) -> None:
    prior = np.asarray(default_ds.meta["params"]["class_prior"])
    chance = float((prior**2).sum())
    assert _same_speaker_persistence(default_ds) > max(0.7, chance + 0.4)
    no_dynamics = syn.generate_synthetic(speaker_inertia=0.0, interlocutor_influence=0.0, seed=0)
    assert abs(_same_speaker_persistence(no_dynamics) - chance) < 0.05


# -- features -------------------------------------------------------------------------------------
def test_each_exclusive_pair_is_separable_by_its_owner_only(default_ds: MercDataset) -> None:
    owners = default_ds.meta["exclusive_pairs"]
    assert owners == {"t": ["sad", "neutral"], "a": ["angry", "frustrated"], "v": ["happy", "excited"]}
    for owner, names in owners.items():
        pair = [default_ds.label_names.index(n) for n in names]
        for m in "tav":
            xs, ys = {}, {}
            for part, splits in [("fit", ["train"]), ("eval", ["valid", "test"])]:
                convs = [c for s in splits for c in default_ds.splits[s]]
                x = np.concatenate([c.features[m] for c in convs])
                y = np.concatenate([c.labels for c in convs])
                keep = np.isin(y, pair)
                xs[part], ys[part] = x[keep], y[keep]
            clf = LogisticRegression(max_iter=300, class_weight="balanced").fit(xs["fit"], ys["fit"])
            score = balanced_accuracy_score(ys["eval"], clf.predict(xs["eval"]))
            if m == owner:
                assert score > 0.6, (owner, m, score)
            else:
                assert score < 0.58, (owner, m, score)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fusion_beats_best_single_modality(seed: int) -> None:
    ds = syn.generate_synthetic(seed=seed)
    y_eval = np.concatenate([c.labels for s in ("valid", "test") for c in ds.splits[s]])
    majority = np.bincount(np.concatenate([c.labels for c in ds.splits["train"]])).argmax()
    chance = 100 * f1_score(y_eval, np.full_like(y_eval, majority), average="weighted")
    single = {m: syn.proxy_wf1(ds, m) for m in "tav"}
    fused = syn.proxy_wf1(ds, "tav")
    assert min(single.values()) > chance + 10, (chance, single)
    assert fused > max(single.values()) + 5, (single, fused)


def _two_stage_wf1(ds: MercDataset, use_speaker: bool, use_context: bool) -> float:
    """Weighted F1 of a logistic regression, optionally speaker-aware and contextual.

    Stage 1 scores single utterances (speaker one-hot appended if ``use_speaker``);
    stage 2 (if ``use_context``) re-classifies from the stage-1 log-probabilities of the
    utterance, its neighbours and the same speaker's previous/next utterance
    (out-of-fold on train, so stage 2 sees honest inputs).
    """
    spk_index = ds.speaker_index()
    xs, ys, splits, groups, neighbours = [], [], [], [], []
    offset = 0
    for d, (split, conv) in enumerate((s, c) for s in ("train", "valid", "test") for c in ds.splits[s]):
        n = len(conv)
        x = np.concatenate([conv.features[m] for m in ds.modalities], axis=1)
        if use_speaker:
            x = np.concatenate([x, np.eye(len(spk_index))[[spk_index[s] for s in conv.speakers]]], axis=1)
        idx = np.arange(n) + offset
        nb = np.full((n, 4), -1)
        nb[1:, 0], nb[:-1, 1] = idx[:-1], idx[1:]
        spk = np.asarray(conv.speakers)
        for s in set(conv.speakers):
            own = np.flatnonzero(spk == s)
            nb[own[1:], 2], nb[own[:-1], 3] = idx[own[:-1]], idx[own[1:]]
        xs.append(x)
        ys.append(conv.labels)
        splits += [split] * n
        groups += [d] * n
        neighbours.append(nb)
        offset += n
    x, y, split_arr = np.concatenate(xs), np.concatenate(ys), np.asarray(splits)
    fit, evaluate = split_arr == "train", split_arr != "train"
    x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-8)
    clf = LogisticRegression(max_iter=300, tol=1e-3)
    logp = np.zeros((len(y), ds.num_classes))
    if not use_context:
        clf.fit(x[fit], y[fit])
        return 100 * f1_score(y[evaluate], clf.predict(x[evaluate]), average="weighted")
    logp[fit] = cross_val_predict(
        clf, x[fit], y[fit], groups=np.asarray(groups)[fit], cv=GroupKFold(3), method="predict_log_proba"
    )
    clf.fit(x[fit], y[fit])
    logp[evaluate] = clf.predict_log_proba(x[evaluate])
    # Row -1 (a missing neighbour) gets the log prior.
    padded = np.vstack([logp, np.log(np.bincount(y[fit], minlength=ds.num_classes) / fit.sum())])
    nb = np.concatenate(neighbours)
    z = np.concatenate([logp] + [padded[nb[:, j]] for j in range(4)], axis=1)
    stage2 = LogisticRegression(max_iter=1000).fit(z[fit], y[fit])
    return 100 * f1_score(y[evaluate], stage2.predict(z[evaluate]), average="weighted")


def test_speaker_awareness_and_context_help() -> None:
    ds = syn.generate_synthetic(num_dialogues=(240, 10, 120), dims={"t": 32, "a": 16, "v": 16}, seed=0)
    plain = _two_stage_wf1(ds, use_speaker=False, use_context=False)
    speaker = _two_stage_wf1(ds, use_speaker=True, use_context=False)
    both = _two_stage_wf1(ds, use_speaker=True, use_context=True)
    assert speaker > plain + 2.5, (plain, speaker)
    assert both > speaker + 3.0, (speaker, both)


# -- semi-synthetic audio/visual ------------------------------------------------------------
def test_add_generated_av_reaches_calibration_targets(text_only_base: MercDataset) -> None:
    targets = {"a": 52.0, "v": 38.0}
    ds = syn.add_generated_av(text_only_base, target_unimodal_wf1=targets, seed=0)
    ds.validate()
    assert ds.modalities == ("t", "a", "v")
    assert ds.dims == {"t": 48, "a": 100, "v": 256}
    assert text_only_base.modalities == ("t",)  # input untouched
    assert "GENERATED" in ds.description
    cal = ds.meta["calibration"]
    for m, target in targets.items():
        assert abs(cal[m]["achieved"] - target) <= 4.0, cal[m]
        # The features returned are the calibrated ones: an independent re-score agrees.
        assert abs(syn.proxy_wf1(ds, m) - cal[m]["achieved"]) < 0.5
    assert cal["t"]["achieved"] == pytest.approx(syn.proxy_wf1(text_only_base, "t"))
    assert syn.proxy_wf1(ds, "tav") > max(syn.proxy_wf1(ds, m) for m in "tav") + 3
    assert ds.meta["generation"]["exclusive_pairs"] == {"a": ["angry", "frustrated"], "v": ["happy", "excited"]}
    for old, new in zip(text_only_base.conversations(), ds.conversations(), strict=True):
        assert old.id == new.id and old.speakers == new.speakers
        np.testing.assert_array_equal(old.labels, new.labels)
        assert new.features["t"] is old.features["t"]


def test_add_generated_av_targets_relative_to_text(text_only_base: MercDataset) -> None:
    ds = syn.add_generated_av(text_only_base, seed=1, text_reference_wf1=67.26, dims={"a": 32, "v": 32})
    cal = ds.meta["calibration"]
    scale = cal["t"]["achieved"] / 67.26
    for m, requested in {"a": 52.0, "v": 38.0}.items():
        assert cal[m]["requested_target"] == requested
        assert cal[m]["target"] == pytest.approx(requested * scale)
        assert abs(cal[m]["achieved"] - cal[m]["target"]) <= 4.0, cal[m]
    assert cal["t"]["achieved"] > cal["a"]["achieved"] > cal["v"]["achieved"]


def test_add_generated_av_is_deterministic_and_resolves_abbreviations(text_only_base: MercDataset) -> None:
    base = dataclasses.replace(text_only_base, label_names=["hap", "sad", "neu", "ang", "exc", "fru"])
    kwargs = {"calibrate": False, "informativeness": {"a": 1.5, "v": 1.0}, "dims": {"a": 8, "v": 8}}
    one, two = syn.add_generated_av(base, seed=3, **kwargs), syn.add_generated_av(base, seed=3, **kwargs)
    other = syn.add_generated_av(base, seed=4, **kwargs)
    a1 = np.concatenate([c.features["a"] for c in one.conversations()])
    np.testing.assert_array_equal(a1, np.concatenate([c.features["a"] for c in two.conversations()]))
    assert not np.allclose(a1, np.concatenate([c.features["a"] for c in other.conversations()]))
    assert one.meta["generation"]["exclusive_pairs"] == {"a": ["ang", "fru"], "v": ["hap", "exc"]}
    assert one.meta["calibration"]["a"]["informativeness"] == 1.5


def test_add_generated_av_rejects_bad_input(text_only_base: MercDataset, default_ds: MercDataset) -> None:
    with pytest.raises(DataError, match="no text features"):
        syn.add_generated_av(default_ds.with_modalities("av"))
    with pytest.raises(ConfigError):
        syn.add_generated_av(text_only_base, target_unimodal_wf1={"t": 50.0})


# -- registry ----------------------------------------------------------------------------------
@pytest.fixture
def registry_without_corpora(monkeypatch: pytest.MonkeyPatch) -> None:
    # merc.data.corpora is written separately; without it, look only at this module.
    if importlib.util.find_spec("merc.data.corpora") is None:
        monkeypatch.setattr(registry, "_import_builtin_datasets", lambda: None)


def test_registered_synthetic_loader(registry_without_corpora: None, default_ds: MercDataset) -> None:
    spec = registry.get_dataset_spec("synthetic")
    assert spec.modalities == ("t", "a", "v") and not spec.needs_data_root
    assert "GENERATED" in spec.description
    ds = spec.loader(seed=0)
    for a, b in zip(default_ds.conversations(), ds.conversations(), strict=True):
        np.testing.assert_array_equal(a.features["v"], b.features["v"])
    assert spec.loader(seed=0, num_dialogues=(2, 1, 1)).summary()["train"]["dialogues"] == 2


def test_registered_iemocap6_synthav_loader(
    registry_without_corpora: None, text_only_base: MercDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = registry.get_dataset_spec("iemocap6-synthav")
    assert spec.modalities == ("t", "a", "v") and spec.needs_data_root
    assert "GENERATED" in spec.description
    calls = []
    fake = dataclasses.replace(text_only_base, name="iemocap6", meta={"text_cache_key": "iemocap6"})

    def fake_load(name: str, **kwargs: object) -> MercDataset:
        calls.append((name, kwargs))
        return fake

    monkeypatch.setattr(syn, "load_dataset", fake_load)
    ds = spec.loader("/nowhere", seed=1, calibrate=False)
    assert calls == [("iemocap6", {"modalities": "t", "data_root": "/nowhere"})]
    assert ds.name == "iemocap6-synthav" and ds.modalities == ("t", "a", "v")
    assert ds.meta["text_cache_key"] == "iemocap6"
    assert ds.description == spec.description


def test_imbalance_preset_is_registered_with_its_profile() -> None:
    from merc.data.registry import load_dataset
    from merc.data.synthetic import IMBALANCE_PRESET

    ds = load_dataset("synthetic-imbalance")
    assert ds.name == "synthetic-imbalance" and ds.meta["preset"] == "imbalance"
    assert ds.dims == IMBALANCE_PRESET["dims"]
    assert ds.meta["params"]["informativeness"] == IMBALANCE_PRESET["informativeness"]
    # Text owns no pair the others need: it merges audio's and visual's pairs.
    assert ds.meta["exclusive_pairs"] == {
        "t": ["sad", "neutral"],
        "a": ["angry", "frustrated"],
        "v": ["happy", "excited"],
    }
    # Same labels and dialogues as `synthetic` (only the features differ).
    plain = load_dataset("synthetic")
    assert [c.labels.tolist() for c in ds.splits["train"]] == [c.labels.tolist() for c in plain.splits["train"]]
    # Text is the strongest single modality under the context-free proxy, as the preset says.
    from merc.data.synthetic import proxy_wf1

    scores = {m: proxy_wf1(ds, m) for m in "tav"}
    assert scores["t"] > max(scores["a"], scores["v"])


def test_registered_iemocap4_synthav_loader(
    registry_without_corpora: None, text_only_base: MercDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = registry.get_dataset_spec("iemocap4-synthav")
    assert spec.modalities == ("t", "a", "v") and spec.needs_data_root and spec.annotations_of == "iemocap4"
    assert "GENERATED" in spec.description
    calls = []
    fake = dataclasses.replace(text_only_base, name="iemocap4", meta={"text_cache_key": "iemocap4"})

    def fake_load(name: str, **kwargs: object) -> MercDataset:
        calls.append((name, kwargs))
        return fake

    monkeypatch.setattr(syn, "load_dataset", fake_load)
    ds = spec.loader("/nowhere", seed=1, calibrate=False)
    assert calls == [("iemocap4", {"modalities": "t", "data_root": "/nowhere"})]
    assert ds.name == "iemocap4-synthav" and ds.modalities == ("t", "a", "v")
    assert ds.meta["text_cache_key"] == "iemocap4" and ds.meta["generation"]["exclusive_pairs"] == {}
    with_frames = spec.loader("/nowhere", seed=1, calibrate=False, sequences="a")
    assert all(set(c.sequences) == {"a"} for c in with_frames.conversations())

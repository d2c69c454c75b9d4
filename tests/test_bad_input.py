"""The bad-input suite: one row per hostile-but-realistic input, each a one-line error.

Every row gives the command (built in a fresh folder from a tiny native dataset and a
finished run) and a fragment of the message it must print. Each must exit with status 2,
print exactly one line ``merc: error: ...`` and no traceback, and leave every file as it
was: nothing written, nothing half-written (no ``*.tmp``, no new run folder).

Families: training / model / data overrides, override syntax, command-line arguments,
recipe files, the ``--out`` folder, merc's native format, published pickles, run-folder
contents (fingerprint, checkpoints, weights, config), ``merc evaluate``.
"""

from __future__ import annotations

import errno
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from bad_input_env import (
    Env,
    Shared,
    both,
    build_shared,
    edit_metadata,
    edit_record,
    edit_records,
    one_error_line,
    remove,
    snapshot,
    truncate,
    write_bytes,
)
from merc.cli import main


@dataclass(frozen=True)
class Case:
    """One row: ``build(env)`` returns the argv; its error line must contain ``fragment``."""

    id: str
    build: Callable[[Env], list[str]]
    fragment: str


def _train(*extra: str) -> Callable[[Env], list[str]]:
    return lambda env: env.train(*extra)


def _data(mutate: Callable[[Path], None], *extra: str) -> Callable[[Env], list[str]]:
    return lambda env: env.train(*extra, dataset=env.dataset(mutate))


def _argv(*words: str) -> Callable[[Env], list[str]]:
    """A command with ``{ds}``, ``{out}``, ``{run}`` and ``{tmp}`` filled in."""

    def build(env: Env) -> list[str]:
        names = {"ds": env.dataset(), "out": env.tmp / "out", "tmp": env.tmp}
        if any("{run}" in w for w in words):
            names["run"] = env.run()
        return [w.format(**names) for w in words]

    return build


def _features(modality: str, change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / "features" / f"{modality}.safetensors"
        tensors = dict(load_file(path))
        change(tensors)
        save_file(tensors, path)

    return mutate


def _set(key: str, value: object) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        d[key] = value

    return change


def _drop(key: str) -> Callable[[dict], None]:
    return lambda d: d.pop(key)


def _first(key: str, value: object) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        d[key][0] = value

    return change


#: Fixed noise (the same bytes every run, so each row has one expected message).
_RANDOM_BYTES = np.random.default_rng(0).bytes(512)


class _Evil:
    def __reduce__(self):  # pragma: no cover - never called: the unpickler refuses it
        return (os.system, ("echo pwned",))


# -- 1. training options ----------------------------------------------------------------------------
TRAINING = [
    ("lr=-1", "expected a finite number > 0"),
    ("lr=nan", "expected a finite number > 0"),
    ("lr=inf", "expected a finite number > 0"),
    ("lr=0", "expected a finite number > 0"),
    ("lr=fast", "expected a finite number > 0"),
    ("lr=[0.1]", "expected a finite number > 0"),
    ("lr={a: 1}", "expected a finite number > 0"),
    ("lr=1e400", "expected a finite number > 0"),
    ("lr=", "expected a finite number > 0"),
    ("epochs=0", "expected an integer in [1, 1000000]"),
    ("epochs=2.7", "not a fraction"),
    ("epochs=-3", "expected an integer in [1, 1000000]"),
    ("epochs=true", "expected an integer in [1, 1000000]"),
    ("epochs=ten", "expected an integer in [1, 1000000]"),
    ("epochs=1e30", "expected an integer in [1, 1000000]"),
    ("batch_size=0", "expected an integer >= 1"),
    ("batch_size=-2", "expected an integer >= 1"),
    ("batch_size=1.5", "not a fraction"),
    ("eval_batch_size=0", "expected an integer >= 1"),
    ("patience=-1", "expected an integer >= 0"),
    ("patience=1.5", "not a fraction"),
    ("warmup_epochs=-2", "expected an integer >= 0"),
    ("step_size=0", "expected an integer >= 1"),
    ("weight_decay=-0.1", "expected a finite number >= 0"),
    ("clip_grad_norm=-1", "expected a finite number >= 0"),
    ("gamma=0", "expected a number in (0, 1]"),
    ("gamma=1.5", "expected a number in (0, 1]"),
    ("momentum=1", "expected a number in [0, 1)"),
    ("momentum=-0.1", "expected a number in [0, 1)"),
    ("num_threads=-1", "expected an integer in [0, 1024]"),
    ("num_threads=100000", "expected an integer in [0, 1024]"),
    ("seed=-1", "expected an integer in [0, 2**63)"),
    ("seed=123456789012345678901", "expected an integer in [0, 2**63)"),
    ("optimizer=adan", "choose one of: adam, adamw, sgd"),
    ("scheduler=cosin", "choose one of"),
    ("selection_metric=f2", "choose one of: accuracy, macro_f1, ua, weighted_f1"),
    ("selection_metric=loss", "choose one of"),
    ("precision=fp16", "choose one of: 32, bf16-mixed"),
    ("class_weighted_loss=ture", "expected a boolean"),
    ("class_weighted_loss=2", "expected a boolean"),
    ("show_progress=maybe", "expected a boolean"),
    ("device=tpu", "expected cpu, cuda or cuda:N"),
    ("device=meta", "expected cpu, cuda or cuda:N"),
    ("device=[cpu]", "expected a string"),
    ("learning_rate=0.1", "unknown training option(s) learning_rate"),
]
CASES = [Case(f"training.{o}", _train(f"training.{o}"), f) for o, f in TRAINING]

# -- 2. model options (bc-LSTM) -----------------------------------------------------------------------
MODEL = [
    ("dropout=2.0", "model.dropout=2.0: expected a number in [0, 1)"),
    ("dropout=1", "expected a number in [0, 1)"),
    ("dropout=-0.1", "expected a number in [0, 1)"),
    ("dropout=abc", "model.dropout='abc': expected a finite number"),
    ("dropout=nan", "model.dropout"),
    ("hidden_size=0", "model.hidden_size=0: expected an integer in [1, 65536]"),
    ("hidden_size=-3", "expected an integer in [1, 65536]"),
    ("hidden_size=2.5", "not a fraction"),
    ("hidden_size=abc", "model.hidden_size='abc': expected an integer"),
    ("hidden_size=true", "model.hidden_size"),
    ("hidden_size=1e30", "expected an integer in [1, 65536]"),
    ("dense_size=0", "model.dense_size=0"),
    ("unimodal_loss_weight=-1", "model.unimodal_loss_weight=-1.0: expected a number >= 0"),
    ("fusion=concta", "choose one of: concat, hierarchical"),
    ("fusion=3", "expected one of hierarchical, concat"),
    ("bidirectional=maybe", "expected true or false"),
    ("nope=1", "has no argument model.nope"),
    ("in_dims=3", "has no argument model.in_dims"),
]
CASES += [Case(f"model.{o}", _train(f"model.{o}"), f) for o, f in MODEL]

# -- 3. data options ---------------------------------------------------------------------------------
DATA = [
    ("standardize=maybe", "data.standardize='maybe': expected a boolean"),
    ("max_utterances_per_dialogue=0", "data.max_utterances_per_dialogue=0: expected an integer >= 1"),
    ("max_utterances_per_dialogue=2.5", "not a fraction"),
    ("max_feature_gib=-1", "data.max_feature_gib=-1: expected a finite number > 0"),
    ("max_feature_gib=nan", "data.max_feature_gib"),
    ("nope=1", "unknown data option(s) nope"),
]
CASES += [Case(f"data.{o}", _train(f"data.{o}"), f) for o, f in DATA]

# -- 3b. plug-in sections (checked before data loads, like the core sections) ------------------------
PLUGIN = [
    ("curriculum.buckets=0", "curriculum.buckets must be a positive integer"),
    ("curriculum.buckets=2.5", "curriculum.buckets must be a positive integer"),
    ("curriculum.buckets=abc", "curriculum.buckets must be a positive integer"),
    ("curriculum.strategy=easy-first", "curriculum strategy"),
    ("curriculum.pace=2", "unknown curriculum option(s) pace"),
]
CASES += [Case(o, _train(o), f) for o, f in PLUGIN]

# -- 4. override syntax ------------------------------------------------------------------------------
CASES += [
    Case(
        "override without =",
        _argv("train", "--model", "bclstm", "--dataset", "{ds}", "--out", "{out}", "lr"),
        "is not key=value",
    ),
    Case("override without section", _train("lr=3"), "must start with a section"),
    Case("override of unknown section", _train("nope.lr=1"), "must start with a section"),
    Case("override of a whole section", _train("training=3"), "must start with a section"),
    Case("override into a value", _train("training.lr.x=1"), "'lr' is not a section"),
    Case("override with a typo'd section", _train("trainig.lr=1"), "must start with a section"),
]

# -- 5. command-line arguments -----------------------------------------------------------------------
CLI = [
    (["--seeds", "0,0"], "seed 0 is given twice"),
    (["--seeds", "1,2,1"], "seed 1 is given twice"),
    (["--seeds", "a"], "seeds must be comma-separated integers"),
    (["--seeds", "1.5"], "seeds must be comma-separated integers"),
    (["--seeds", "-1"], "is not an integer in [0, 2**63)"),
    (["--seeds", "12345678901234567890"], "is not an integer in [0, 2**63)"),
    (["--seeds", ","], "no seeds given"),
    (["--device", "tpu"], "--device='tpu': expected cpu, cuda or cuda:N"),
    (["--device", "meta"], "expected cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "expected cpu, cuda or cuda:N"),
    (["--modalities", "x"], "unknown modality 'x'"),
    (["--modalities", "tt"], "modality repeated"),
    (["--modalities", "tv"], "has no v features"),
    (["--epochs", "3"], "unrecognized arguments: --epochs 3"),
    (["--buckets", "3"], "--buckets needs --curriculum"),
    (["--curriculum", "nope"], "invalid choice"),
]
CASES += [Case(f"train {' '.join(a)}", _train(*a), f) for a, f in CLI]
CASES += [
    Case("unknown model", _argv("train", "--model", "nope", "--dataset", "{ds}", "--out", "{out}"), "unknown model"),
    Case(
        "unknown dataset", _argv("train", "--model", "bclstm", "--dataset", "nope", "--out", "{out}"), "unknown dataset"
    ),
    Case("missing --out", _argv("train", "--model", "bclstm", "--dataset", "{ds}"), "required: --out"),
    Case("no command", _argv(), "required: command"),
    Case("unknown command", _argv("trian"), "invalid choice: 'trian'"),
    Case("evaluate without folder", _argv("evaluate"), "required: run_dir"),
    Case("datasets with junk", _argv("datasets", "synthetic", "x=1"), "unrecognized arguments: x=1"),
    Case("datasets of an unknown name", _argv("datasets", "x=1"), "unknown dataset 'x=1'"),
    Case("datasets of a missing folder", _argv("datasets", "{tmp}/none/"), "dataset path not found"),
    Case(
        "dataset path missing",
        _argv("train", "--model", "bclstm", "--dataset", "{tmp}/none/", "--out", "{out}"),
        "dataset path not found",
    ),
    Case(
        "data root missing",
        _argv("train", "--model", "bclstm", "--dataset", "iemocap6", "--data-root", "{tmp}/x", "--out", "{out}"),
        "data root not found",
    ),
]


# -- 6. recipe files (--config) ----------------------------------------------------------------------
def _recipe(content: bytes | str, *extra: str) -> Callable[[Env], list[str]]:
    def build(env: Env) -> list[str]:
        path = env.tmp / "recipe.yaml"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return env.train("--config", str(path), *extra)

    return build


CASES += [
    Case("recipe missing", lambda env: env.train("--config", str(env.tmp / "no.yaml")), "recipe not found"),
    Case("recipe is a folder", lambda env: env.train("--config", str(env.tmp)), "recipe not found"),
    Case("recipe not YAML", _recipe("model: [1,\n"), "not valid YAML"),
    Case("recipe a list", _recipe("- 1\n- 2\n"), "a recipe is a mapping with sections"),
    Case("recipe section a list", _recipe("model: [1, 2]\n"), "section 'model' must be a mapping"),
    Case("recipe section a scalar", _recipe("training: 3\n"), "section 'training' must be a mapping"),
    Case("recipe unknown section", _recipe("optim: {lr: 1}\n"), "unknown section(s) optim"),
    Case("recipe non-UTF-8", _recipe(b"training:\n  lr: 0.1 \xff\xfe\n"), "not UTF-8 text"),
    Case("recipe bad lr", _recipe("training:\n  lr: -1\n"), "training.lr=-1"),
    Case("recipe bad dropout", _recipe("model:\n  dropout: 3\n"), "model.dropout=3"),
    Case("recipe bad data option", _recipe("data:\n  standardize: perhaps\n"), "data.standardize"),
    Case("recipe numeric keys", _recipe("training:\n  1: 2\n"), "unknown training option(s) 1"),
]


# -- 7. the --out folder -----------------------------------------------------------------------------
def _out_is_file(env: Env) -> list[str]:
    (env.tmp / "file").write_text("x")
    return env.train(out=env.tmp / "file")


def _out_under_file(env: Env) -> list[str]:
    (env.tmp / "file").write_text("x")
    return env.train(out=env.tmp / "file" / "run")


def _out_read_only(env: Env) -> list[str]:
    # Root ignores permission bits: the filesystem's answer is simulated at the mkdir.
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.name == "ro":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    env.monkeypatch.setattr(Path, "mkdir", mkdir)
    return env.train(out=env.tmp / "ro")


def _out_not_writable(env: Env) -> list[str]:
    folder = env.tmp / "locked"
    folder.mkdir()
    real_open = os.open

    def deny(path: object, *args: object, **kwargs: object) -> int:
        if str(path).startswith(str(folder)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    env.monkeypatch.setattr(os, "open", deny)
    return env.train(out=folder)


def _disk_full(env: Env) -> list[str]:
    import merc.training.run_folder as run_folder

    def full(fh: object, data: bytes, path: Path) -> None:
        fh.write(data[: len(data) // 2])  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    env.monkeypatch.setattr(run_folder, "_write_all", full)
    return env.train()


def _holds_strangers(env: Env) -> list[str]:
    out = env.tmp / "out"
    (out / "seed_0").mkdir(parents=True)
    (out / "seed_0" / "metrics.json").write_text("{}")
    return env.train(out=out)


def _overwrite_foreign(env: Env) -> list[str]:
    out = env.tmp / "out"
    (out / "seed_0").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    return env.train("--overwrite", out=out)


CASES += [
    Case("--out is a file", _out_is_file, "exists and is not a folder"),
    Case("--out under a file", _out_under_file, "a parent of it is a file"),
    Case("--out on a read-only filesystem", _out_read_only, "read-only file system"),
    Case("--out not writable", _out_not_writable, "permission denied"),
    Case("--out on a full disk", _disk_full, "no space left on device"),
    Case("--out holds seed folders only", _holds_strangers, "holds run files but no fingerprint.json"),
    Case("--overwrite of a foreign folder", _overwrite_foreign, "refusing to delete them"),
]

# -- 8. merc's native format -------------------------------------------------------------------------
NATIVE = [
    ("metadata missing", remove("metadata.json"), "no metadata.json"),
    ("metadata bad JSON", write_bytes("metadata.json", b"{"), "bad JSON at line 1"),
    ("metadata non-UTF-8", write_bytes("metadata.json", b'{"name": "\xff"}'), "not UTF-8 text"),
    ("metadata a list", write_bytes("metadata.json", b"[]"), "expected a JSON object"),
    ("metadata lacks dims", edit_metadata(_drop("dims")), "missing key(s) dims"),
    ("metadata format 2", edit_metadata(_set("format_version", 2)), "format_version 2"),
    ("dims a list", edit_metadata(_set("dims", [12, 6])), "'dims' must be an object"),
    ("dims a string", edit_metadata(_set("dims", {"t": "12", "a": 6})), "dims['t'] = '12'"),
    ("dims a float", edit_metadata(_set("dims", {"t": 12.5, "a": 6})), "dims['t'] = 12.5"),
    ("dims a bool", edit_metadata(_set("dims", {"t": True, "a": 6})), "dims['t'] = True"),
    ("dims zero", edit_metadata(_set("dims", {"t": 0, "a": 6})), "dims['t'] = 0"),
    ("dims negative", edit_metadata(_set("dims", {"t": -12, "a": 6})), "dims['t'] = -12"),
    ("dims huge", edit_metadata(_set("dims", {"t": 10**30, "a": 6})), "a feature dim is an integer"),
    ("dims disagree", edit_metadata(_set("dims", {"t": 13, "a": 6})), "metadata.json says dim 13"),
    ("dims lack a modality", edit_metadata(_set("dims", {"t": 12})), "'dims' lacks modality 'a'"),
    ("label_names a string", edit_metadata(_set("label_names", "c0,c1")), "'label_names' must be a list of strings"),
    ("label_names ints", edit_metadata(_set("label_names", [0, 1, 2])), "'label_names' must be a list of strings"),
    ("label_names one class", edit_metadata(_set("label_names", ["c0"])), "at least 2 classes"),
    ("label_names repeat", edit_metadata(_set("label_names", ["a", "a", "b"])), "each once"),
    ("speaker_vocab nested", edit_metadata(_set("speaker_vocab", [["s0"], "s1"])), "'speaker_vocab' must be a list"),
    ("modalities a string", edit_metadata(_set("modalities", "ta")), "'modalities' must be a list of strings"),
    ("modalities unknown", edit_metadata(_set("modalities", ["t", "x"])), "unknown modality 'x'"),
    ("name not a string", edit_metadata(_set("name", 5)), "'name' must be a non-empty string"),
    ("meta a list", edit_metadata(_set("meta", [1])), "'meta' must be an object"),
    ("conversations missing", remove("conversations.jsonl"), "conversations.jsonl: missing"),
    ("conversations bad JSON", write_bytes("conversations.jsonl", b'{"id": \n'), "conversations.jsonl:1: bad JSON"),
    ("conversations non-UTF-8", write_bytes("conversations.jsonl", b'{"id": "\xc3\x28"}\n'), ":1: not UTF-8 text"),
    ("record a list", write_bytes("conversations.jsonl", b"[1, 2]\n"), "expected a JSON object, got list"),
    ("record lacks labels", edit_record(_drop("labels")), "missing key(s) labels"),
    ("record id an int", edit_record(_set("id", 7)), "'id' must be a string"),
    ("record split dev", edit_record(_set("split", "dev")), "split 'dev' is not one of train, valid, test"),
    ("speakers a string", edit_record(_set("speakers", "s0")), "'speakers' must be a list"),
    ("speakers ints", edit_record(_first("speakers", 3)), "'speakers' must be strings"),
    ("speaker unknown", edit_record(_first("speakers", "zed")), "speaker 'zed' is not in metadata.json"),
    ("labels strings", edit_record(_first("labels", "hap")), "'labels' must be integers"),
    ("label a float", edit_record(_first("labels", 1.0)), "'labels' must be integers"),
    ("label a bool", edit_record(_first("labels", True)), "'labels' must be integers"),
    ("label 10**30", edit_record(_first("labels", 10**30)), "label 1000000000000000000000000000000 out of range"),
    ("label 9", edit_record(_first("labels", 9)), "label 9 out of range"),
    ("label -2", edit_record(_first("labels", -2)), "label -2 out of range"),
    ("texts an int", edit_record(_set("texts", 3)), "'texts' must be a list of strings or null"),
    ("texts too few", edit_record(_set("texts", ["a"])), "1 texts for 3 labels"),
    ("utterance ids ints", edit_record(_set("utterance_ids", [1, 2, 3])), "'utterance_ids' must be strings"),
    ("utterance ids too few", edit_record(_set("utterance_ids", ["x"])), "1 utterance ids for 3 labels"),
    ("record meta a list", edit_record(_set("meta", [])), "'meta' must be an object"),
    ("speakers too few", edit_record(_set("speakers", ["s0"])), "1 speakers for 3 labels"),
    ("empty dialogue", edit_record(lambda r: r.update(labels=[], speakers=[], utterance_ids=[])), "empty dialogue"),
    ("id repeats", edit_record(_set("id", "train-d0"), line=1), "repeats an earlier line"),
    ("no test split", edit_records(lambda r: r.update(split="train") if r["split"] == "test" else None), "no 'test'"),
    ("features missing", remove("features/a.safetensors"), "a.safetensors: missing"),
    ("features truncated", truncate("features/a.safetensors"), "not a readable safetensors file"),
    ("features empty", write_bytes("features/a.safetensors", b""), "not a readable safetensors file"),
    ("features garbage", write_bytes("features/a.safetensors", _RANDOM_BYTES[:256]), "not a readable safetensors file"),
    ("features a pickle", write_bytes("features/t.safetensors", pickle.dumps(_Evil())), "not a readable safetensors"),
    ("features wrong dim", _features("t", lambda d: d.update({"train-d0": d["train-d0"][:, :5]})), "have shape (3, 5)"),
    ("features wrong rows", _features("t", lambda d: d.update({"train-d0": d["train-d0"][:2]})), "2 rows for 3"),
    ("features 1-d", _features("t", lambda d: d.update({"train-d0": d["train-d0"][:, 0].copy()})), "have shape (3,)"),
    (
        "features unknown id",
        _features("a", lambda d: d.update({"ghost": d["train-d0"]})),
        "unknown conversation 'ghost'",
    ),
    ("features lack an id", _features("a", lambda d: d.pop("test-d1")), "no features for conversation 'test-d1'"),
    ("features ints", _features("a", lambda d: d.update({"train-d0": np.ones((3, 6), np.int32)})), "dtype int32"),
    ("features NaN", _features("t", lambda d: d["valid-d1"].__setitem__((0, 0), np.nan)), "contain NaN or inf"),
    ("features inf", _features("a", lambda d: d["test-d2"].__setitem__((1, 1), np.inf)), "contain NaN or inf"),
]
CASES += [Case(f"native: {name}", _data(mutate), fragment) for name, mutate, fragment in NATIVE]


def _unlabel(split: str) -> Callable[[Path], None]:
    def change(record: dict) -> None:
        if record["split"] == split:
            record["labels"] = [-1] * len(record["labels"])

    return edit_records(change)


CASES += [
    Case("native: no labelled train utterance", _data(_unlabel("train")), "the train split has no labelled utterance"),
    Case("native: no labelled valid utterance", _data(_unlabel("valid")), "the valid split has no labelled utterance"),
    Case("native: no labelled test utterance", _data(_unlabel("test")), "the test split has no labelled utterance"),
    Case(
        "native: dialogue over the length limit",
        _data(lambda f: None, "data.max_utterances_per_dialogue=4"),
        "5 utterances, over data.max_utterances_per_dialogue=4",
    ),
    Case(
        "native: features over the memory limit",
        _data(lambda f: None, "data.max_feature_gib=1e-9"),
        "raise the limit with data.max_feature_gib",
    ),
]


# -- 9. published pickles ----------------------------------------------------------------------------
def _pickle(data: bytes) -> Callable[[Env], list[str]]:
    def build(env: Env) -> list[str]:
        path = env.tmp / "feats.pkl"
        path.write_bytes(data)
        return env.train(dataset=path)

    return build


_GOOD_TUPLE = pickle.dumps(({"d": ["u"]}, {"d": ["M"]}, {"d": [0]}, {}, {}, {}, {}, ["d"], []), protocol=2)
CASES += [
    Case("pickle: malicious", _pickle(pickle.dumps({"train": [_Evil()]})), "refused to load"),
    Case("pickle: truncated", _pickle(_GOOD_TUPLE[:40]), "truncated"),
    Case("pickle: empty", _pickle(b""), "not a readable pickle (EOFError"),
    Case("pickle: random bytes", _pickle(b"\x80\x02garbage" * 3), "not a readable pickle"),
    Case("pickle: an int", _pickle(pickle.dumps(3)), "expected a 9-tuple"),
    Case("pickle: short tuple", _pickle(pickle.dumps((1, 2, 3))), "got a tuple of 3 items"),
    Case("pickle: dict without splits", _pickle(pickle.dumps({"a": 1})), "expected CORECT's dict with keys"),
]


# -- 10. rerunning into a run folder -----------------------------------------------------------------
def _rerun(*extra: str, modalities: str = "ta") -> Callable[[Env], list[str]]:
    return lambda env: env.rerun(*extra, modalities=modalities)


def _rerun_changed_data(env: Env) -> list[str]:
    ds = env.dataset(edit_record(_first("labels", 0), line=5))
    return env.rerun(dataset=ds)


def _rerun_with(mutate: Callable[[Path], None], *extra: str) -> Callable[[Env], list[str]]:
    def build(env: Env) -> list[str]:
        env.run(mutate)
        return env.rerun(*extra)

    return build


def _unfinish(folder: Path) -> None:
    (folder / "seed_0" / "metrics.json").unlink()
    (folder / "results.json").unlink()


def _seed_file(name: str, data: bytes) -> Callable[[Path], None]:
    return write_bytes(f"seed_0/{name}", data)


def _foreign_checkpoint(env_folder: Path, shared: Shared, name: str) -> None:
    (env_folder / "seed_0" / name).write_bytes((shared.other_dims_run / "seed_0" / name).read_bytes())


_EVIL_PT = pickle.dumps(_Evil())
CASES += [
    Case("rerun: other lr", _rerun("training.lr=0.5"), "training.lr=0.5 here"),
    Case("rerun: other dropout", _rerun("model.dropout=0.1"), "model.dropout=0.1 here"),
    Case("rerun: other modalities", _rerun(modalities="t"), "--modalities t here, ta in the run"),
    Case("rerun: other seeds", _rerun("--seeds", "0,1"), "--seeds 0,1 here, 0 in the run"),
    Case("rerun: standardize off", _rerun("data.standardize=false"), "data.standardize=false here"),
    Case("rerun: other data", _rerun_changed_data, "the dataset's content differs"),
    Case(
        "rerun: fingerprint corrupt",
        _rerun_with(write_bytes("fingerprint.json", b"{")),
        "fingerprint.json is unreadable",
    ),
    Case(
        "rerun: fingerprint non-UTF-8",
        _rerun_with(write_bytes("fingerprint.json", b"\xff\xfe")),
        "fingerprint.json is unreadable",
    ),
    Case(
        "rerun: fingerprint of another version",
        _rerun_with(write_bytes("fingerprint.json", b'{"version": 9, "config": {}}')),
        "is not a merc fingerprint",
    ),
    Case(
        "rerun: legacy config of another run",
        _rerun_with(lambda f: (f / "fingerprint.json").unlink(), "training.lr=0.5"),
        "training.lr=0.5 here",
    ),
    Case(
        "rerun: legacy config non-UTF-8",
        _rerun_with(lambda f: ((f / "fingerprint.json").unlink(), (f / "config.yaml").write_bytes(b"\xff"))),
        "config.yaml: not UTF-8 text",
    ),
    Case(
        "resume: checkpoint truncated, no previous",
        _rerun_with(lambda f: (_unfinish(f), truncate("seed_0/checkpoint.pt")(f))),
        "truncated or corrupt",
    ),
    Case(
        "resume: checkpoint empty, no previous",
        _rerun_with(lambda f: (_unfinish(f), _seed_file("checkpoint.pt", b"")(f))),
        "checkpoint file is empty",
    ),
    Case(
        "resume: checkpoint malicious",
        _rerun_with(lambda f: (_unfinish(f), _seed_file("checkpoint.pt", _EVIL_PT)(f))),
        "refused to load the checkpoint",
    ),
    Case(
        "resume: checkpoint is plain weights",
        _rerun_with(lambda f: (_unfinish(f), _seed_file("checkpoint.pt", (f / "seed_0" / "best.pt").read_bytes())(f))),
        "not a merc checkpoint",
    ),
]


def _foreign(name: str, *, unfinish: bool) -> Callable[[Env], list[str]]:
    def build(env: Env) -> list[str]:
        folder = env.run()
        if unfinish:
            _unfinish(folder)
        _foreign_checkpoint(folder, env.shared, name)
        return env.rerun() if unfinish else ["evaluate", str(folder)]

    return build


CASES += [
    Case("resume: checkpoint of other dims", _foreign("checkpoint.pt", unfinish=True), "does not fit bclstm"),
    Case("evaluate: best.pt of other dims", _foreign("best.pt", unfinish=False), "the weights do not fit bclstm"),
]


# -- 11. merc evaluate -------------------------------------------------------------------------------
def _argv_run(command: str, mutate: Callable[[Path], None]) -> Callable[[Env], list[str]]:
    """``merc <command> RUN --out ...`` on a copy of the shared run changed by ``mutate``."""
    return lambda env: [command, str(env.run(mutate)), "--out", str(env.tmp / "model.merc")]


def _predict_run_mutated(mutate: Callable[[Path], None]) -> Callable[[Env], list[str]]:
    return lambda env: [
        "predict",
        str(env.run(mutate)),
        "--input",
        str(env.dataset()),
        "--out",
        str(env.tmp / "pred.jsonl"),
    ]


def _evaluate(mutate: Callable[[Path], None] | None = None, *extra: str) -> Callable[[Env], list[str]]:
    def build(env: Env) -> list[str]:
        return ["evaluate", str(env.run(mutate)), *extra]

    return build


def _edit_config(old: str, new: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        text = (folder / "config.yaml").read_text()
        assert old in text, text
        (folder / "config.yaml").write_text(text.replace(old, new, 1))

    return mutate


def _evaluate_changed_data(env: Env) -> list[str]:
    run = env.run()
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    changed = env.dataset(edit_record(_first("labels", 0), line=9))
    cfg["data"]["dataset_arg"] = str(changed)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return ["evaluate", str(run)]


def _config_without(key: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        import yaml

        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        if "." in key:
            section, name = key.split(".")
            cfg[section].pop(name)
        else:
            cfg.pop(key)
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))

    return mutate


CASES += [
    Case("evaluate: no such folder", lambda env: ["evaluate", str(env.tmp / "none")], "is not a folder"),
    Case("evaluate: a file", lambda env: ["evaluate", str(env.dataset() / "metadata.json")], "is not a folder"),
    Case("evaluate: not a run", lambda env: ["evaluate", str(env.dataset())], "no config.yaml"),
    Case("evaluate: config non-UTF-8", _evaluate(write_bytes("config.yaml", b"data:\n  x: \xff\n")), "not UTF-8"),
    Case("evaluate: config not YAML", _evaluate(write_bytes("config.yaml", b"data: [\n")), "not valid YAML"),
    Case("evaluate: config a list", _evaluate(write_bytes("config.yaml", b"- 1\n")), "a recipe is a mapping"),
    Case("evaluate: config without data", _evaluate(_config_without("data")), "has no data section"),
    Case("evaluate: config without seeds", _evaluate(_config_without("data.seeds")), "its data section lacks seeds"),
    Case("evaluate: config without model", _evaluate(_config_without("data.model_name")), "lacks model_name"),
    Case("evaluate: seeds not ints", _evaluate(_edit_config("seeds:\n  - 0", "seeds:\n  - x")), "data.seeds"),
    Case("evaluate: unknown model", _evaluate(_edit_config("model_name: bclstm", "model_name: nope")), "unknown model"),
    Case("evaluate: edited lr", _evaluate(_edit_config("lr: 0.001", "lr: 0.5")), "training.lr=0.5 here"),
    Case("evaluate: edited dropout", _evaluate(_edit_config("dropout: 0.3", "dropout: 3.0")), "model.dropout=3.0"),
    Case("evaluate: changed data", _evaluate_changed_data, "the dataset's content differs"),
    Case("evaluate: unfinished seed", _evaluate(remove("seed_0/metrics.json")), "has not finished"),
    Case("evaluate: best.pt missing", _evaluate(remove("seed_0/best.pt")), "has not finished"),
    Case("evaluate: best.pt truncated", _evaluate(truncate("seed_0/best.pt")), "truncated or corrupt"),
    Case("evaluate: best.pt empty", _evaluate(_seed_file("best.pt", b"")), "selected weights file is empty"),
    Case(
        "evaluate: best.pt malicious",
        _evaluate(_seed_file("best.pt", _EVIL_PT)),
        "refused to load the selected weights",
    ),
    Case("evaluate: best.pt random", _evaluate(_seed_file("best.pt", _RANDOM_BYTES)), "refused to load"),
    Case(
        "evaluate: best.pt a tensor",
        lambda env: ["evaluate", str(env.run(lambda f: torch.save(torch.ones(3), f / "seed_0" / "best.pt")))],
        "the weights do not fit",
    ),
    Case("evaluate: fingerprint corrupt", _evaluate(write_bytes("fingerprint.json", b"[")), "fingerprint.json"),
    Case("evaluate --device tpu", _evaluate(None, "--device", "tpu"), "--device='tpu'"),
]


# -- 12. merc bundle / merc predict ------------------------------------------------------------------
def _bundle(change: Callable[[dict], None] | None = None) -> Callable[[Env], Path]:
    """A bundle of the shared run (its manifest changed by ``change``), written before the snapshot."""

    def build(env: Env) -> Path:
        import json

        from safetensors import safe_open
        from safetensors.torch import save_file as save_torch

        path = env.tmp / "model.merc"
        assert main(["bundle", str(env.run()), "--out", str(path)]) == 0
        if change is not None:
            with safe_open(str(path), "pt") as fh:
                manifest = json.loads(fh.metadata()["merc_bundle"])
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            change(manifest)
            save_torch(tensors, str(path), metadata={"merc_bundle": json.dumps(manifest)})
        return path

    return build


def _predict(
    source: Callable[[Env], Path] | None = None, write: tuple[str, str] | None = None, *extra: str
) -> Callable[[Env], list[str]]:
    """``merc predict`` of ``source`` (default: the shared run) on the dataset, or on a file ``write = (name, text)``."""

    def build(env: Env) -> list[str]:
        model = source(env) if source is not None else env.run()
        if write is not None:
            (env.tmp / write[0]).write_text(write[1])
            data = env.tmp / write[0]
        else:
            data = env.dataset()
        return ["predict", str(model), "--input", str(data), "--out", str(env.tmp / "pred.jsonl"), *extra]

    return build


def _predict_on(mutate: Callable[[Path], None], *extra: str) -> Callable[[Env], list[str]]:
    return lambda env: [
        "predict",
        str(env.run()),
        "--input",
        str(env.dataset(mutate)),
        "--out",
        str(env.tmp / "pred.jsonl"),
        *extra,
    ]


def _file(name: str, data: bytes) -> Callable[[Env], Path]:
    def build(env: Env) -> Path:
        (env.tmp / name).write_bytes(data)
        return env.tmp / name

    return build


_CSV = "dialogue_id,speaker,text\nd1,s0,hello\n"
CASES += [
    Case("bundle: no finished seed", _argv_run("bundle", remove("seed_0/metrics.json")), "has no finished seed"),
    Case(
        "bundle: unknown seed",
        lambda env: ["bundle", str(env.run()), "--out", str(env.tmp / "m"), "--seed", "7"],
        "--seed 7: ",
    ),
    Case(
        "bundle: not a run",
        lambda env: ["bundle", str(env.dataset()), "--out", str(env.tmp / "m")],
        "not a merc run folder",
    ),
    Case("bundle: weights truncated", _argv_run("bundle", truncate("seed_0/best.pt")), "truncated or corrupt"),
    Case(
        "bundle: --out a foreign file",
        lambda env: ["bundle", str(env.run()), "--out", str(env.dataset() / "metadata.json")],
        "exists and is not a merc bundle",
    ),
    Case("predict: bundle random bytes", _predict(_file("m.merc", _RANDOM_BYTES)), "not a merc bundle"),
    Case("predict: bundle empty", _predict(_file("m.merc", b"")), "not a merc bundle"),
    Case("predict: bundle a pickle", _predict(_file("m.merc", pickle.dumps(_Evil()))), "not a merc bundle"),
    Case(
        "predict: foreign safetensors",
        _predict(lambda env: env.dataset() / "features" / "a.safetensors"),
        "without a merc manifest",
    ),
    Case("predict: bundle version 2", _predict(_bundle(_set("version", 2))), "merc bundle version 2"),
    Case("predict: bundle of another format", _predict(_bundle(_set("format", "x"))), "not a merc bundle"),
    Case(
        "predict: bundle label names disagree",
        _predict(_bundle(_set("label_names", ["a", "b"]))),
        "2 label names for a model of 3 classes",
    ),
    Case(
        "predict: bundle of an unknown model",
        _predict(_bundle(lambda m: m["model"].update(name="nope"))),
        "unknown model 'nope'",
    ),
    Case(
        "predict: bundle dims disagree",
        _predict(_bundle(lambda m: m["model"]["in_dims"].update(t=13))),
        "features['t'] is 12-d, the model's input 13-d",
    ),
    Case("predict: --seed for a bundle", _predict(_bundle(), None, "--seed", "3"), "holds seed 0 only"),
    Case("predict: run without finished seed", _predict_run_mutated(remove("seed_0/best.pt")), "has no finished seed"),
    Case(
        "predict: --out .txt",
        lambda env: ["predict", str(env.run()), "--input", str(env.dataset()), "--out", str(env.tmp / "p.txt")],
        "must end in .jsonl or .csv",
    ),
    Case(
        "predict: input missing",
        lambda env: ["predict", str(env.run()), "--input", str(env.tmp / "x.csv"), "--out", str(env.tmp / "p.jsonl")],
        "not found",
    ),
    Case("predict: input .xlsx", _predict(None, ("in.xlsx", "x")), "unknown format .xlsx"),
    Case(
        "predict: csv without speaker",
        _predict(None, ("in.csv", "dialogue_id,text\nd,hi\n")),
        "missing field(s) speaker",
    ),
    Case("predict: csv empty", _predict(None, ("in.csv", "")), "no utterances"),
    Case("predict: csv header only", _predict(None, ("in.csv", "dialogue_id,speaker,text\n")), "no utterances"),
    Case(
        "predict: csv empty dialogue id",
        _predict(None, ("in.csv", "dialogue_id,speaker,text\n,s0,hi\n")),
        "'dialogue_id' must be a non-empty string",
    ),
    Case(
        "predict: csv bad utterance_index",
        _predict(None, ("in.csv", "dialogue_id,speaker,text,utterance_index\nd,s0,hi,first\n")),
        "utterance_index must be an integer",
    ),
    Case(
        "predict: csv utterance_index repeats",
        _predict(None, ("in.csv", "dialogue_id,speaker,text,utterance_index\nd,s0,hi,1\nd,s1,yo,1\n")),
        "utterance_index 1 repeats",
    ),
    Case(
        "predict: csv unknown label",
        _predict(None, ("in.csv", "dialogue_id,speaker,text,label\nd,s0,hi,joy\n")),
        "label 'joy' is not one of the model's labels",
    ),
    Case("predict: jsonl bad JSON", _predict(None, ("in.jsonl", '{"dialogue_id": \n')), "in.jsonl:1: bad JSON"),
    Case("predict: jsonl a list", _predict(None, ("in.jsonl", "[1]\n")), "expected a JSON object per utterance"),
    Case("predict: txt without speaker", _predict(None, ("in.txt", "hello there\n")), "expected 'SPEAKER: text'"),
    Case("predict: text into a provided-features model", _predict(None, ("in.csv", _CSV)), "nothing to predict from"),
    Case(
        "predict: native NaN features",
        _predict_on(_features("t", lambda d: d["test-d1"].__setitem__((0, 0), np.nan))),
        "contain NaN or inf",
    ),
    Case(
        "predict: native features of other dims",
        _predict_on(
            both(
                _features("a", lambda d: d.update({k: np.zeros((len(v), 5), np.float32) for k, v in d.items()})),
                edit_metadata(lambda m: m["dims"].update(a=5)),
            )
        ),
        "its audio features are 5-d, the model was trained on 6-d",
    ),
    # Media fields of the utterance table: the native format's checks, the input file and dialogue named.
    Case(
        "predict: media for a provided-features model",
        _predict(None, ("in.csv", "dialogue_id,speaker,text,audio\nd1,s0,hello,sound.wav\n")),
        "the model's audio features are provided features (6-d) that came with its training data (not computed "
        "by merc), so they cannot be recomputed from the input's media",
    ),
    Case(
        "predict: csv times without a media file",
        _predict(None, ("in.csv", "dialogue_id,speaker,text,start,end\nd1,s0,hi,0,1\n")),
        "in.csv: dialogue 'd1': 'start'/'end' given but no 'audio' or 'video' file they refer to",
    ),
    Case(
        "predict: csv start without end",
        _predict(None, ("in.csv", "dialogue_id,speaker,text,audio,start\nd1,s0,hi,a.wav,0\n")),
        "in.csv: dialogue 'd1': 'start' given without 'end'; give both",
    ),
    Case(
        "predict: csv empty segment",
        _predict(None, ("in.csv", "dialogue_id,speaker,text,audio,start,end\nd1,s0,hi,a.wav,1,1\n")),
        "utterance 'd1_0': empty segment (start 1 s, end 1 s)",
    ),
    Case(
        "predict: csv one file for two utterances without times",
        _predict(None, ("in.csv", "dialogue_id,speaker,text,audio\nd1,s0,hi,a.wav\nd1,s1,yo,a.wav\n")),
        "'audio' a.wav is named by 2 utterances, so each needs its 'start' and 'end' seconds; utterance 'd1_0'",
    ),
    Case(
        "predict: jsonl times not numbers",
        _predict(
            None,
            (
                "in.jsonl",
                '{"dialogue_id": "d", "speaker": "s0", "text": "hi", "audio": "a.wav", "start": "soon", "end": 1}\n',
            ),
        ),
        "utterance 'd_0': 'start' must be a number of seconds, got 'soon'",
    ),
    Case(
        "predict: jsonl audio a number",
        _predict(None, ("in.jsonl", '{"dialogue_id": "d", "speaker": "s0", "text": "hi", "audio": 3}\n')),
        "utterance 'd_0': 'audio' must be a file name or null, got 3",
    ),
    Case("predict: --split dev", _predict(None, None, "--split", "dev"), "--split 'dev' is not one of"),
    Case("predict: --split of a csv", _predict(None, ("in.csv", _CSV), "--split", "test"), "only a native dataset"),
    Case("predict: --batch-size 0", _predict(None, None, "--batch-size", "0"), "--batch-size 0"),
    Case("predict: --device tpu", _predict(None, None, "--device", "tpu"), "--device='tpu'"),
]


# -- 13. merc report ---------------------------------------------------------------------------------
def _report(mutate: Callable[[Path], None] | None = None, out: str = "report.html") -> Callable[[Env], list[str]]:
    """``merc report`` of a copy of the shared run changed by ``mutate``, into ``<tmp>/<out>``."""
    return lambda env: ["report", str(env.run(mutate)), "--out", str(env.tmp / out)]


CASES += [
    Case(
        "report: no such folder",
        lambda env: ["report", str(env.tmp / "none"), "--out", str(env.tmp / "r.html")],
        "is not a folder",
    ),
    Case(
        "report: a dataset folder",
        lambda env: ["report", str(env.dataset()), "--out", str(env.tmp / "r.html")],
        "not a merc run",
    ),
    Case("report: unfinished run", _report(remove("results.json")), "has not finished (no results.json)"),
    Case("report: results.json corrupt", _report(write_bytes("results.json", b"{")), "not valid JSON"),
    Case("report: results.json a list", _report(write_bytes("results.json", b"[]")), "is not what `merc train`"),
    Case("report: history corrupt", _report(write_bytes("seed_0/history.json", b"[{")), "not valid JSON"),
    Case("report: history not UTF-8", _report(write_bytes("seed_0/history.json", b"\xff")), "not UTF-8"),
    Case("report: unfinished seed", _report(remove("seed_0/metrics.json")), "has not finished (no metrics.json)"),
    Case("report: robustness corrupt", _report(write_bytes("robustness.json", b"{")), "not a robustness.json"),
    Case("report: --out a folder", lambda env: ["report", str(env.run()), "--out", str(env.tmp)], "is a folder"),
]


# -- 14. media in merc's native format, merc extract -------------------------------------------------
def _media(keys: dict, modality: str | None = None) -> Callable[[Path], None]:
    """Media files in the folder (a 2 s wav, a 2 s silent video, junk bytes) and ``keys`` on its first record."""

    def mutate(folder: Path) -> None:
        from media_helpers import blank_image, speech_like, write_video, write_wav

        write_wav(folder / "sound.wav", speech_like(2.0))
        write_video(folder / "silent.mp4", [blank_image(64)] * 10, fps=5)
        (folder / "junk.wav").write_bytes(_RANDOM_BYTES)
        edit_record(lambda r: r.update(keys))(folder)
        if modality is not None:  # declared as if it had been extracted
            edit_metadata(
                lambda m: m.update(modalities=[*m["modalities"], modality], dims={**m["dims"], modality: 665})
            )(folder)

    return mutate


def _extract(mutate: Callable[[Path], None] | None, *words: str) -> Callable[[Env], list[str]]:
    return lambda env: ["extract", "--dataset", str(env.dataset(mutate)), *words]


_WAV = {"audio": "sound.wav"}
_TIMES = {"start": [0, 0.5, 1.0], "end": [0.5, 1.0, 2.0]}
MEDIA = [
    (
        "audio a number",
        {"audio": 3},
        "'audio' must be a file name (one for the dialogue), a list of file names or null",
    ),
    ("video list too short", {"video": ["silent.mp4"]}, "1 'video' files for 3 utterances"),
    ("start without end", {**_WAV, "start": [0, 1, 2]}, "'start' given without 'end'"),
    ("dialogue file without times", _WAV, "so every utterance needs its 'start' and 'end' seconds"),
    ("empty segment", {**_WAV, "start": [0, 1, 1], "end": [1, 1, 2]}, "utterance 'd0_1': empty segment"),
    ("negative segment", {**_WAV, "start": [0, 1.5, 1], "end": [1, 1, 2]}, "negative segment (start 1.5 s, end 1 s)"),
    ("negative start", {**_WAV, "start": [-1, 0.5, 1], "end": [0.5, 1, 2]}, "start -1 s is negative"),
    ("times not numbers", {**_WAV, "start": ["0", 0.5, 1], "end": [0.5, 1, 2]}, "'start' must be a number of seconds"),
]
CASES += [Case(f"native: media {name}", _data(_media(keys)), fragment) for name, keys, fragment in MEDIA]
CASES += [Case(f"extract: media {name}", _extract(_media(keys), "--modalities", "v"), f) for name, keys, f in MEDIA]
CASES += [
    Case(
        "extract: media file missing",
        _extract(_media({"video": ["none.mp4", None, None]}), "--modalities", "v"),
        "dialogue 'train-d0', utterance 'd0_0' (video none.mp4): media file not found",
    ),
    Case(
        "extract: media file unreadable",
        _extract(_media({"video": ["junk.wav", None, None]}), "--modalities", "v"),
        "(video junk.wav): cannot read",
    ),
    Case(
        "extract: audio file as video",
        _extract(_media({"video": ["sound.wav", None, None]}), "--modalities", "v"),
        "sound.wav has no video stream",
    ),
    Case(
        "extract: segment past the end of the file",
        _extract(_media({"video": "silent.mp4", "start": [0, 1, 1.5], "end": [1, 1.5, 2.5]}), "--modalities", "v"),
        "utterance 'd0_2' (video silent.mp4): segment ends at 2.5 s, after the end of the file (2.000 s)",
    ),
    Case(
        "extract: segment starting after the end of the file",
        _extract(_media({"video": "silent.mp4", "start": [0, 1, 3], "end": [1, 2, 4]}), "--modalities", "v"),
        "segment starts at 3 s, at or after the end of the file",
    ),
    Case("extract: no media", _extract(None, "--modalities", "v"), "no conversation names visual media"),
    Case(
        "extract: features there already",
        _extract(_media({"video": "silent.mp4", **_TIMES}), "--modalities", "a"),
        "already has audio features (provided features (6-d)); pass --overwrite",
    ),
    Case(
        "extract: unknown audio extractor",
        _extract(_media(_TIMES | _WAV), "--modalities", "a", "--audio-extractor", "gemaps"),
        "unknown audio extractor 'gemaps'; choose one of: compare, egemaps, librosa",
    ),
    Case("extract: --fps 0", _extract(_media(_TIMES | _WAV), "--modalities", "v", "--fps", "0"), "visual fps must be"),
    Case("extract: unknown modality", _extract(None, "--modalities", "x"), "unknown modality 'x'"),
    Case(
        "extract: audio of a registered dataset",
        lambda env: ["extract", "--dataset", "iemocap6", "--modalities", "a"],
        "computed from the media files of a native dataset folder",
    ),
    Case(
        "native: media listed, features not extracted",
        _data(_media({"video": "silent.mp4", **_TIMES}, modality="v")),
        "v.safetensors: missing; metadata.json lists modality 'v' and the conversations point to media",
    ),
    Case(
        "train: media without features",
        lambda env: env.train("--modalities", "tv", dataset=env.dataset(_media({"video": "silent.mp4", **_TIMES}))),
        "no visual features yet, but its conversations name media files: compute them once with `merc extract",
    ),
]

if not torch.cuda.is_available():
    CASES.append(Case("train --device cuda without CUDA", _train("--device", "cuda"), "PyTorch sees no CUDA device"))


def test_the_suite_covers_at_least_150_cases() -> None:
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES), "case ids repeat"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    return build_shared(tmp_path_factory.mktemp("shared"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: Case, shared: Shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = Env(tmp_path, shared, monkeypatch)
    argv = case.build(env)
    before = snapshot(tmp_path)
    line = one_error_line(capsys, argv)
    assert case.fragment in line
    monkeypatch.undo()
    assert snapshot(tmp_path) == before, "the failing command changed files"
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"

"""The run folder: atomic writes, a lock while it trains, and a fingerprint of what it holds.

A run folder (``merc train --out DIR``) must never claim results it does not hold:

- **Atomic writes.** Every file merc writes there (``config.yaml``, ``fingerprint.json``,
  checkpoints, ``best.pt``, metrics, results) is written to a temporary sibling and
  renamed over the target (:func:`atomic_write_bytes`); a kill, an error or a full disk
  leaves the previous file intact and no temporary file behind.
- **A lock** (:class:`RunLock`, file ``merc.lock``) while a process trains into or
  evaluates the folder, so two processes never write the same files. The lock is an
  ``flock`` on that file, which the kernel releases when the process dies (``kill -9``
  included); a lock file left by a dead process is reported as stale and taken over.
- **A fingerprint** (``fingerprint.json``, :func:`run_fingerprint`): the model, the
  modalities, the seeds, the resolved recipe and a content hash of the dataset (labels,
  speakers and features), written before the first epoch. Resuming, rerunning and
  ``merc evaluate`` compare it and refuse a folder that holds something else
  (:func:`fingerprint_differences`), so finished seeds of other settings are never reused
  and a run is never re-scored against data that has changed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import socket
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from merc.data.schema import MercDataset
from merc.errors import CheckpointError, RunFolderError
from merc.evaluation.imbalance import ALONE_REPORT_STEM

log = logging.getLogger(__name__)

LOCK_FILE = "merc.lock"
FINGERPRINT_FILE = "fingerprint.json"
#: Version of the fingerprint layout; a folder with another version is refused.
FINGERPRINT_VERSION = 1
#: Training options that change how fast a run goes, not what it computes: a resume may
#: change them (another device, more threads, no progress bar).
NON_RESULT_TRAINING_KEYS = ("device", "num_threads", "show_progress")
#: ``data`` keys merc writes itself (bookkeeping), not recipe options.
#: ``protocol`` (a ``--protocol loso`` run's record) is compared on its own: the fingerprint's
#: ``protocol`` part (:func:`run_fingerprint`).
RECORDED_DATA_KEYS = (
    "recipe_file",
    "recipe_base",
    "dataset",
    "dataset_arg",
    "modalities",
    "seeds",
    "model_name",
    "protocol",
)
#: Names merc writes into a run folder; ``--overwrite`` removes only a folder made of these.
#: What the model's inputs were: the dataset facts the model was built for (label names,
#: speaker vocabulary, parties, dims), how each modality's features were made
#: (:mod:`merc.features.spec`) and whether they were standardised; written before the
#: first epoch. ``merc bundle`` / ``merc predict`` read it.
INPUTS_FILE = "inputs.json"
#: Per-modality mean and std of the training split (``<m>.mean``, ``<m>.std``, float32 ``[d_m]``).
STATISTICS_FILE = "standardization.safetensors"
#: Per-epoch unimodal scores of a run (written by the runner).
IMBALANCE_PLOT = "imbalance.png"
#: A ``--protocol loso`` run: the dialogue ids of every fold's splits, and one folder per fold.
FOLDS_FILE = "folds.json"
FOLD_PREFIX = "fold_"
#: ``merc imbalance``: the alone runs' sub-folder and the comparison's file stem.
ALONE_DIR = "alone"
RUN_FOLDER_NAMES = (
    "config.yaml",
    FINGERPRINT_FILE,
    "results.json",
    "evaluation.json",
    INPUTS_FILE,
    STATISTICS_FILE,
    LOCK_FILE,
    # Written by merc train (the per-epoch unimodal scores) and merc imbalance (its
    # comparison and the alone runs, which --overwrite discards with the run).
    IMBALANCE_PLOT,
    FOLDS_FILE,
    *(f"{ALONE_REPORT_STEM}.{suffix}" for suffix in ("json", "md", "png")),
    ALONE_DIR,
)


# -- atomic writes ---------------------------------------------------------------------------------
def _write_all(fh: Any, data: bytes, path: Path) -> None:
    """Write ``data`` to the open file for ``path`` and force it to disk (a hook the disk-full tests replace)."""
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing.

    The bytes go to a uniquely named temporary file in the same folder, which is then
    renamed over ``path`` (:func:`os.replace` is atomic on one filesystem). On any
    error (a full disk, a kill signal turned into an exception) the temporary file is
    removed and ``path`` keeps its previous content.

    Raises:
        OSError: The write failed (``ENOSPC``, ``EACCES`` ...); nothing is left behind.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_all(fh, data, path)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        # Named after the file the user knows, not the temporary one.
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """:func:`atomic_write_bytes` of indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` all or nothing.

    Serialised to memory first, so that a failing disk shows up as the ``OSError`` of
    :func:`atomic_write_bytes` (torch's own file writer reports it as a ``RuntimeError``
    and leaves a partial file).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete ``.<name>.*.tmp`` files a killed writer left in ``folder`` (call it under the lock)."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


def load_torch_file(path: str | Path, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with every failure as one :class:`CheckpointError`.

    Args:
        path: A checkpoint or weights file.
        what: How the message names the file's role (e.g. ``"selected weights"``).
        map_location: Device to load tensors onto.

    Raises:
        CheckpointError: The file is empty, truncated, corrupt, or holds objects other
            than tensors and plain containers (refused before any of it is built).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: {what} file is empty (truncated)")
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of foreign files; the error below says it all.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError:
        # torch's weights-only unpickler: a pickle of objects (malicious or not) or garbage.
        raise CheckpointError(
            f"{path}: refused to load the {what}: not a tensor file written by merc (corrupt, or it holds "
            "objects other than tensors; never load it with weights_only=False)"
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: {what} file is truncated or corrupt ({_first_line(exc)})") from None
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot read the {what} ({exc.strerror or exc}); it may be truncated or corrupt"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# -- the output folder -----------------------------------------------------------------------------
def prepare_out_dir(out: Path) -> bool:
    """Create ``--out`` (and its parents) if needed; return whether it was created.

    Raises:
        RunFolderError: ``out`` is a file, lies under a file, or cannot be created or
            written (permissions, read-only or full filesystem), said in one line.
    """
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} exists and is not a folder; choose another --out")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise RunFolderError(f"--out {out}: a parent of it is a file, not a folder; choose another --out") from None
    except OSError as exc:
        raise RunFolderError(f"cannot create --out {out} ({describe_os_error(exc)}); choose another --out") from None
    return created


def describe_os_error(exc: OSError) -> str:
    """``"no space left on device"``-style text for an ``OSError``, with what to do where it helps."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device: free some space or choose another --out"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    elif exc.errno == errno.EROFS:
        reason = "read-only file system"
    return reason


def is_run_folder(out: Path) -> bool:
    """Whether ``out`` holds any of the files or ``seed_<k>/`` (``fold_<k>/``) folders a run writes."""
    return (
        any((out / name).exists() for name in RUN_FOLDER_NAMES if name != LOCK_FILE)
        or any(out.glob("seed_*"))
        or any(out.glob(f"{FOLD_PREFIX}*"))
    )


def clear_run_folder(out: Path) -> None:
    """Remove a previous run's files from ``out`` (``--overwrite``), keeping the lock.

    Raises:
        RunFolderError: ``out`` holds other files than a run's: it is not deleted.
    """
    entries = [p for p in out.iterdir() if p.name != LOCK_FILE]
    foreign = [
        p.name
        for p in entries
        if p.name not in RUN_FOLDER_NAMES
        and not p.name.startswith(("seed_", FOLD_PREFIX))
        and not p.name.endswith(".tmp")
    ]
    if foreign:
        raise RunFolderError(
            f"--overwrite: {out} holds files that are not a merc run's ({', '.join(sorted(foreign)[:3])}); "
            "refusing to delete them, choose another --out"
        )
    for path in entries:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


# -- the lock --------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except (OverflowError, ValueError):
        return False
    return True


class RunLock:
    """An exclusive lock on a run folder while one process works in it.

    Used as a context manager; released on every way out (return, exception, Ctrl-C)
    and by the kernel when the process is killed. The lock file holds the owner's pid,
    host and start time, so a second process can say who holds it.

    Args:
        folder: The run folder (must exist).

    Raises:
        RunFolderError: On entry, when another live process holds the lock
            (``run folder in use by pid N``) or the folder is not writable.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def _owner(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _in_use(self, owner: Mapping[str, Any]) -> RunFolderError:
        who = f"pid {owner['pid']}" if "pid" in owner else "another process"
        since = f" since {owner['started']}" if "started" in owner else ""
        return RunFolderError(
            f"run folder {self.path.parent} in use by {who}{since}; wait for it to finish or choose another --out"
        )

    def acquire(self) -> None:
        """Take the lock, taking over a stale one (its process is gone)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: pid check only
            fcntl = None  # type: ignore[assignment]
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunFolderError(
                    f"cannot write to run folder {self.path.parent} ({describe_os_error(exc)}); choose another --out"
                ) from None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise self._in_use(self._owner()) from None
                # The file may have been unlinked by its previous owner between our open
                # and our flock: then we hold a lock nobody else sees; start again.
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            owner = self._owner()
            if owner.get("pid") not in (None, os.getpid()):
                if fcntl is None and owner.get("host") == socket.gethostname() and _pid_alive(int(owner["pid"])):
                    os.close(fd)
                    raise self._in_use(owner)
                log.warning(
                    "run folder %s: lock of pid %s (%s) is stale, its process is gone; taking it over",
                    self.path.parent,
                    owner.get("pid"),
                    owner.get("host", "?"),
                )
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
            except OSError as exc:
                os.close(fd)
                raise RunFolderError(
                    f"cannot write to run folder {self.path.parent} ({describe_os_error(exc)}); choose another --out"
                ) from None
            self._fd = fd
            return
        raise self._in_use(self._owner())

    @classmethod
    def held(cls, folder: str | Path) -> bool:
        """Whether a live process holds the lock of ``folder`` now (a stale lock file is not held)."""
        path = Path(folder) / LOCK_FILE
        if not path.is_file():
            return False
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: pid check only
            owner = cls(folder)._owner()
            return owner.get("host") == socket.gethostname() and _pid_alive(int(owner.get("pid", -1)))
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops a lock this probe took
        return False

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


# -- the fingerprint -------------------------------------------------------------------------------
def dataset_hash(dataset: MercDataset) -> str:
    """SHA-256 of what a model sees of ``dataset``: per split and dialogue, in order, the
    id, labels, speakers, availability and the float32 features of each attached modality.

    Names, descriptions and transcripts do not enter: relabelling one utterance or
    changing one feature value changes the hash, renaming the dataset does not.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"labels": list(dataset.label_names), "modalities": list(dataset.modalities)}).encode())
    for split in sorted(dataset.splits):
        for conv in dataset.splits[split]:
            h.update(json.dumps([split, conv.id, list(conv.speakers)]).encode("utf-8"))
            h.update(np.ascontiguousarray(conv.labels, dtype=np.int64).tobytes())
            if conv.availability is not None:
                h.update(np.ascontiguousarray(conv.availability, dtype=bool).tobytes())
            for m in dataset.modalities:
                feat = np.ascontiguousarray(conv.features[m], dtype=np.float32)
                h.update(f"{m}{feat.shape}".encode())
                h.update(feat.tobytes())
    return h.hexdigest()


def result_config(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved recipe that decides a run's results.

    Every section, less the training options of :data:`NON_RESULT_TRAINING_KEYS` and
    the bookkeeping ``data`` keys (:data:`RECORDED_DATA_KEYS`). Round-tripped through
    JSON so that it compares equal to what ``fingerprint.json`` holds.
    """
    out: dict[str, Any] = {}
    for section, values in recipe.items():
        values = dict(values or {})
        if section == "training":
            values = {k: v for k, v in values.items() if k not in NON_RESULT_TRAINING_KEYS and k != "seed"}
        elif section == "data":
            values = {k: v for k, v in values.items() if k not in RECORDED_DATA_KEYS}
        if values:
            out[section] = values
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def run_fingerprint(
    model: str,
    modalities: str,
    seeds: Sequence[int],
    recipe: Mapping[str, Any],
    dataset: MercDataset | None,
    protocol: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a run folder holds: model, modalities, seeds, result-deciding recipe and dataset.

    Args:
        model: Registered model name.
        modalities: e.g. ``"ta"``.
        seeds: The run's seeds (a set; stored sorted).
        recipe: The resolved recipe (see :func:`result_config`).
        dataset: The loaded dataset before transforms; ``None`` leaves the dataset part
            out (the configuration can be compared before any data loads).
        protocol: The evaluation protocol of a ``--protocol loso`` run (name, validation
            share, split seed); ``None`` (the dataset's own splits) adds nothing, so such
            fingerprints are those of runs written before protocols existed.
    """
    out: dict[str, Any] = {
        "version": FINGERPRINT_VERSION,
        "model": model,
        "modalities": modalities,
        "seeds": sorted(int(s) for s in seeds),
        "config": result_config(recipe),
    }
    if protocol is not None:
        out["protocol"] = json.loads(json.dumps(dict(protocol), sort_keys=True))
    if dataset is not None:
        out["dataset"] = {
            "name": dataset.name,
            "sha256": dataset_hash(dataset),
            "dialogues": sum(len(c) for c in dataset.splits.values()),
            "utterances": sum(len(conv) for conv in dataset.conversations()),
        }
    return out


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}."))
    return out


def fingerprint_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, one phrase per difference (empty: the same run).

    Only parts both hold are compared (the dataset part is absent before data loads).
    """
    diffs: list[str] = []
    for key, flag in (("model", "--model"), ("modalities", "--modalities"), ("seeds", "--seeds")):
        if stored.get(key) != current.get(key):
            diffs.append(f"{flag} {_show(current.get(key))} here, {_show(stored.get(key))} in the run")
    if stored.get("protocol") != current.get("protocol"):
        diffs.append(f"--protocol {_protocol(current)} here, {_protocol(stored)} in the run")
    old, new = _leaves(stored.get("config", {})), _leaves(current.get("config", {}))
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            diffs.append(f"{key}={_show(new.get(key, '<unset>'))} here, {_show(old.get(key, '<unset>'))} in the run")
    if "dataset" in stored and "dataset" in current:
        a, b = stored["dataset"], current["dataset"]
        if a.get("sha256") != b.get("sha256"):
            diffs.append(
                f"the dataset's content differs from the run's: sha256 {str(b.get('sha256'))[:12]} here, "
                f"{str(a.get('sha256'))[:12]} in the run ({b.get('utterances')} and {a.get('utterances')} utterances)"
            )
    return diffs


def _protocol(fingerprint: Mapping[str, Any]) -> str:
    protocol = fingerprint.get("protocol")
    if not isinstance(protocol, Mapping):
        return "split"
    details = ", ".join(f"{k} {v}" for k, v in sorted(protocol.items()) if k != "name")
    return f"{protocol.get('name')} ({details})" if details else str(protocol.get("name"))


def _show(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return ",".join(str(v) for v in value)
    return json.dumps(value) if not isinstance(value, str) else value


def read_fingerprint(out: Path) -> dict[str, Any] | None:
    """``out/fingerprint.json``, or ``None`` when the folder has none.

    Raises:
        RunFolderError: The file exists but is not a fingerprint merc can read.
    """
    path = out / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        raise RunFolderError(
            f"{path} is unreadable ({_first_line(exc)}); the run folder cannot be trusted: "
            "use --overwrite or another --out"
        ) from None
    if not isinstance(data, dict) or data.get("version") != FINGERPRINT_VERSION or "config" not in data:
        raise RunFolderError(
            f"{path} is not a merc fingerprint (version {FINGERPRINT_VERSION}); use --overwrite or another --out"
        )
    return data


# -- the input record ------------------------------------------------------------------------------
def input_record(
    dataset: MercDataset, specs: Mapping[str, Mapping[str, Any]], standardize: bool, eps: float
) -> dict[str, Any]:
    """The content of ``inputs.json`` for a run on ``dataset`` (see :data:`INPUTS_FILE`)."""
    return {
        "version": 1,
        "dataset": {
            "name": dataset.name,
            "label_names": list(dataset.label_names),
            "speaker_vocab": list(dataset.speaker_vocab),
            "num_parties": dataset.max_parties,
            "dims": dataset.dims,
        },
        "modalities": list(dataset.modalities),
        "specs": {m: dict(v) for m, v in specs.items()},
        "standardize": standardize,
        "eps": eps,
    }


def write_input_record(
    out: Path, record: Mapping[str, Any], statistics: Mapping[str, tuple[np.ndarray, np.ndarray]] | None
) -> None:
    """Write ``inputs.json`` (and ``standardization.safetensors`` when standardised) into ``out``.

    What ``merc bundle`` / ``merc predict`` need to make new inputs look like the
    training inputs: the dataset facts, per modality how its features were made, and
    the training split's mean and std the model's inputs were z-scored with.

    Args:
        out: The run folder.
        record: :func:`input_record`.
        statistics: ``{modality: (mean [d], std [d])}``; ``None`` when the run does not
            standardise (``data.standardize=false``).
    """
    from safetensors.numpy import save as save_safetensors

    if statistics is not None:
        tensors = {}
        for m, (mean, std) in statistics.items():
            tensors[f"{m}.mean"] = np.ascontiguousarray(mean, dtype=np.float32)
            tensors[f"{m}.std"] = np.ascontiguousarray(std, dtype=np.float32)
        atomic_write_bytes(out / STATISTICS_FILE, save_safetensors(tensors, metadata={"format": "merc-statistics"}))
    atomic_write_json(out / INPUTS_FILE, record)


def read_input_record(out: Path) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]] | None] | None:
    """``(features.json content, statistics or None)`` of a run folder; ``None`` if it has no record.

    Raises:
        RunFolderError: The record is unreadable or incomplete (say so, and how to redo it).
    """
    from safetensors.numpy import load as load_safetensors

    path = out / INPUTS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(record, dict) or record.get("version") != 1 or not isinstance(record.get("specs"), dict):
            raise ValueError("not a merc input record (version 1)")
        statistics = None
        if record.get("standardize"):
            tensors = load_safetensors((out / STATISTICS_FILE).read_bytes())
            statistics = {m: (tensors[f"{m}.mean"], tensors[f"{m}.std"]) for m in record["specs"]}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the safetensors reader's panics derive from BaseException
        raise RunFolderError(
            f"{path} or {STATISTICS_FILE} is unreadable ({_first_line(exc)}); rerun the same `merc train` "
            "command to rewrite it"
        ) from None
    return record, statistics


@contextlib.contextmanager
def removed_if_left_empty(out: Path, created: bool) -> Iterator[None]:
    """Remove ``out`` again when this call created it and fails before writing into it."""
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                if not any(p for p in out.iterdir() if p.name != LOCK_FILE):
                    (out / LOCK_FILE).unlink(missing_ok=True)
                    out.rmdir()
        raise


__all__ = [
    "INPUTS_FILE",
    "FINGERPRINT_FILE",
    "FOLDS_FILE",
    "FOLD_PREFIX",
    "STATISTICS_FILE",
    "LOCK_FILE",
    "RunLock",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "clear_run_folder",
    "dataset_hash",
    "describe_os_error",
    "fingerprint_differences",
    "is_run_folder",
    "load_torch_file",
    "prepare_out_dir",
    "input_record",
    "read_input_record",
    "read_fingerprint",
    "remove_stale_temporaries",
    "removed_if_left_empty",
    "result_config",
    "run_fingerprint",
    "write_input_record",
]

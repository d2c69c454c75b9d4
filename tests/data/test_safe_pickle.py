"""The restricted unpickler admits plain data and numpy arrays, nothing that could run code."""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from merc.data.safe_pickle import safe_load_pickle, safe_loads
from merc.errors import DataError, UnsafePickleError


class _Touch:
    """Pickles to ``os.system("touch <target>")``: what a hostile feature file would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.target}",))


def _py2_str(raw: bytes) -> bytes:
    # SHORT_BINSTRING: how Python 2 pickled a ``str`` (bytes) under protocol 2.
    return b"U" + bytes([len(raw)]) + raw


def _python2_pickle(data: np.ndarray) -> bytes:
    """A protocol-2 pickle as Python 2 + numpy 1.x wrote it (the published IEMOCAP file's kind).

    ``{'café': array(data, float32), 'spk': set(['M', 'F'])}`` with every string a py2
    ``str``, the array data a latin1 byte string, ``numpy.core`` and ``__builtin__`` names.
    """
    return (
        b"\x80\x02}("
        + _py2_str("café".encode("latin1"))
        + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + _py2_str(b"b")
        + b"\x87R"
        + b"(K\x01"
        + bytes([0x4B, data.size])
        + b"\x85cnumpy\ndtype\n"
        + _py2_str(b"f4")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + _py2_str(b"<")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89"
        + _py2_str(data.astype("<f4").tobytes())
        + b"tb"
        + _py2_str(b"spk")
        + b"c__builtin__\nset\n]("
        + _py2_str(b"M")
        + _py2_str(b"F")
        + b"e\x85R"
        + b"u."
    )


def test_malicious_reduce_is_refused_and_never_runs(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    payload = pickle.dumps({"x": [1, _Touch(target)]}, protocol=2)
    # Control: the same kind of payload does run its command under plain pickle.loads.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Touch(control), protocol=2))
    assert control.exists()
    with pytest.raises(UnsafePickleError, match="refused"):
        safe_loads(payload)
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        safe_load_pickle(path)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_counter_is_refused(protocol: int) -> None:
    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        safe_loads(pickle.dumps(collections.Counter("aab"), protocol=protocol))


def test_custom_class_and_builtins_callables_are_refused() -> None:
    custom = b"\x80\x02cmy_features\nSample\n)\x81}b."  # NEWOBJ of a user class
    with pytest.raises(UnsafePickleError, match="my_features.Sample"):
        safe_loads(custom)
    evil_eval = b"\x80\x02cbuiltins\neval\nX\x06\x00\x00\x001 + 1\x85R."
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_loads(evil_eval)
    # copyreg._reconstructor is allowed, but only to build allowed classes.
    via_reconstructor = b"\x80\x02ccopyreg\n_reconstructor\ncmy_features\nSample\ncbuiltins\nobject\nN\x87R."
    with pytest.raises(UnsafePickleError, match="my_features.Sample"):
        safe_loads(via_reconstructor)


def test_codecs_encode_only_in_the_latin1_form_pickle_emits() -> None:
    ok = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R."
    assert safe_loads(ok) == b"\xff"
    other_codec = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(UnsafePickleError, match="latin1"):
        safe_loads(other_codec)


@pytest.mark.parametrize("protocol", [2, 4])
def test_plain_containers_and_numpy_load(protocol: int) -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    obj = {
        "Ses01F_impro01": [arr, np.array([1, 0, 5], dtype=np.int64)],
        3: ("M", "F", b"\xff\x00"),
        "ids": {"a", "b"},
        "od": collections.OrderedDict(x=1.5),
        "dd": collections.defaultdict(list, {"k": [None, True]}),
        "scalar": np.float64(2.5),
    }
    out = safe_loads(pickle.dumps(obj, protocol=protocol))
    assert out.keys() == obj.keys()
    np.testing.assert_array_equal(out["Ses01F_impro01"][0], arr)
    assert out["Ses01F_impro01"][0].dtype == np.float32
    assert out["Ses01F_impro01"][1].tolist() == [1, 0, 5]
    assert out[3] == ("M", "F", b"\xff\x00")
    assert out["ids"] == {"a", "b"}
    assert out["od"] == {"x": 1.5} and isinstance(out["od"], collections.OrderedDict)
    assert out["dd"]["k"] == [None, True]
    assert out["scalar"] == 2.5


def test_python2_latin1_pickle_loads(tmp_path: Path) -> None:
    data = np.array([1.5, -2.0, 0.25], dtype=np.float32)
    path = tmp_path / "py2.pkl"
    path.write_bytes(_python2_pickle(data))
    out = safe_load_pickle(path)
    assert set(out) == {"café", "spk"}
    np.testing.assert_array_equal(out["café"], data)
    assert out["café"].dtype == np.float32
    assert out["spk"] == {"M", "F"}


def test_truncated_and_missing_files_raise_data_error(tmp_path: Path) -> None:
    payload = pickle.dumps({"a": np.zeros((4, 4), np.float32), "b": list(range(100))}, protocol=4)
    for cut in (1, len(payload) // 2, len(payload) - 1):
        with pytest.raises(DataError, match="truncated or corrupt") as info:
            safe_loads(payload[:cut])
        assert not isinstance(info.value, UnsafePickleError)
    path = tmp_path / "cut.pkl"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError, match="cut.pkl"):
        safe_load_pickle(path)
    with pytest.raises(DataError, match="file not found"):
        safe_load_pickle(tmp_path / "nope.pkl")
    with pytest.raises(DataError):
        safe_loads(b"this is not a pickle")

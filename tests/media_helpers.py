"""Media built at test time: speech-like audio from numpy, a video of a real face photograph.

Nothing is downloaded. The face is scikit-image's ``astronaut`` sample image (a
photograph of Eileen Collins that ships inside the scikit-image wheel); frames without a
face are flat grey.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16000
#: Formants (Hz) of a few vowels (Peterson & Barney 1952, male averages).
VOWELS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240), "e": (530, 1840, 2480)}


def speech_like(seconds: float, rate: int = RATE, f0: float = 130.0, seed: int = 0) -> np.ndarray:
    """Voiced syllables (harmonics of a gliding f0 under formant resonances) separated by pauses.

    About four syllables a second, three to a word, a 0.25 s pause between words, a
    little breath noise: enough structure for pitch, formant and loudness descriptors.

    Returns:
        ``float32 [round(seconds * rate)]`` in [-1, 1].
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    out = np.zeros(n)
    t0 = 0.05
    syllable = 0
    while t0 < seconds - 0.2:
        dur = float(rng.uniform(0.15, 0.24))
        m = int(dur * rate)
        start = int(t0 * rate)
        m = min(m, n - start)
        t = np.arange(m) / rate
        glide = f0 * (1 + 0.15 * np.sin(2 * np.pi * t / dur + syllable)) * rng.uniform(0.9, 1.2)
        phase = 2 * np.pi * np.cumsum(glide) / rate
        formants = VOWELS["aieu"[syllable % 4]]
        voice = np.zeros(m)
        for k in range(1, 30):
            freq = k * glide.mean()
            if freq > rate / 2 - 500:
                break
            # A glottal source falling 6 dB an octave, shaped by the vowel's formant resonances.
            gain = (1 + 3 * sum(np.exp(-(((freq - f) / (80 + 0.06 * f)) ** 2)) for f in formants)) / k
            voice += gain * np.sin(k * phase)
        envelope = np.sin(np.pi * np.arange(m) / m) ** 0.6
        out[start : start + m] += 0.3 * envelope * voice / max(1e-9, np.abs(voice).max())
        syllable += 1
        t0 += dur + (0.25 if syllable % 3 == 0 else 0.04)
    out += 0.003 * rng.standard_normal(n)
    return np.clip(out, -1, 1).astype(np.float32)


def write_wav(path: Path, signal: np.ndarray, rate: int = RATE, channels: int = 1) -> Path:
    """16-bit PCM wav with the standard library's ``wave`` (``channels`` copies of the signal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(signal, -1, 1) * 32767).astype("<i2")
    pcm = np.repeat(pcm[:, None], channels, axis=1).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def write_sound(path: Path, signal: np.ndarray, rate: int = RATE) -> Path:
    """flac / mp3 / wav by suffix, through soundfile."""
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), signal, rate)
    return path


def espeak(path: Path, text: str) -> Path | None:
    """Real synthetic speech from Debian's ``espeak-ng`` binary, or ``None`` without it."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([binary, "-w", str(path), text], check=True, capture_output=True, timeout=60)
    return path


def face_image(size: int = 256) -> np.ndarray:
    """The astronaut photograph (RGB uint8), resized to ``size`` x ``size``."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def blank_image(size: int = 256) -> np.ndarray:
    return np.full((size, size, 3), 128, dtype=np.uint8)


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: int = 10,
    audio: np.ndarray | None = None,
    rate: int = RATE,
) -> Path:
    """An H.264 mp4 (with an AAC audio track when ``audio`` is given) through PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "18"}
        as_ = None
        if audio is not None:
            as_ = out.add_stream("aac", rate=rate)
            as_.layout = "mono"
        for img in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if as_ is not None and audio is not None:
            block = 1024
            pts = 0
            for start in range(0, len(audio), block):
                chunk = audio[start : start + block]
                frame = av.AudioFrame.from_ndarray(chunk[None, :].astype(np.float32), format="fltp", layout="mono")
                frame.sample_rate = rate
                frame.pts = pts
                frame.time_base = Fraction(1, rate)
                pts += len(chunk)
                for packet in as_.encode(frame):
                    out.mux(packet)
            for packet in as_.encode():
                out.mux(packet)
    return path


def face_video(path: Path, face_seconds: float = 2.0, blank_seconds: float = 1.0, fps: int = 10, **kw: Any) -> Path:
    """``face_seconds`` of the astronaut, then ``blank_seconds`` of grey (no face)."""
    frames = [face_image()] * int(face_seconds * fps) + [blank_image()] * int(blank_seconds * fps)
    return write_video(path, frames, fps=fps, **kw)


def add_media(folder: Path, media: dict[str, dict[str, Any]]) -> None:
    """Add media keys (``audio``, ``video``, ``start``, ``end``) to records of a native folder's conversations."""
    path = folder / "conversations.jsonl"
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    for r in records:
        r.update(media.get(r["id"], {}))
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def media_dataset(folder: Path) -> Path:
    """A native folder with texts and media in every layout, no feature files.

    - ``train-d0``: one wav per utterance (1 s each, the second stereo at 44.1 kHz);
    - ``train-d1``: one mp4 for the dialogue (2 s of the face, 1 s of grey; AAC audio
      track) with ``start``/``end``: audio comes from the video's track, and the third
      utterance shows no face;
    - ``valid-d0``: per-utterance flac and mp3, and a per-utterance video for the first
      utterance only (the second has none);
    - ``test-d0``: one wav for the dialogue with ``start``/``end``, no video.
    """
    from merc.data.formats.native import write_native
    from merc.data.schema import Conversation, MercDataset

    texts = ["I am so happy today!", "This is terrible.", "Okay, see you at noon."]

    def conv(cid: str, split: str, n: int) -> Conversation:
        return Conversation(
            id=cid,
            speakers=[f"s{i % 2}" for i in range(n)],
            labels=np.arange(n) % 3,
            texts=[texts[i % 3] for i in range(n)],
            split=split,
        )

    splits = {
        "train": [conv("train-d0", "train", 3), conv("train-d1", "train", 3)],
        "valid": [conv("valid-d0", "valid", 2)],
        "test": [conv("test-d0", "test", 2)],
    }
    write_native(MercDataset("media", ["joy", "sad", "neutral"], splits), folder)
    for i in range(3):
        if i == 1:
            write_wav(folder / "wav" / f"train-d0_{i}.wav", speech_like(1.0, 44100, f0=180, seed=i), 44100, channels=2)
        else:
            write_wav(folder / "wav" / f"train-d0_{i}.wav", speech_like(1.0, seed=i, f0=120 + 40 * i))
    face_video(folder / "video" / "train-d1.mp4", audio=speech_like(3.0, seed=5))
    write_sound(folder / "wav" / "valid-d0_0.flac", speech_like(1.2, seed=6))
    write_sound(folder / "wav" / "valid-d0_1.mp3", speech_like(0.8, seed=7, f0=220))
    face_video(folder / "video" / "valid-d0_0.mp4", face_seconds=1.0, blank_seconds=0.0)
    write_wav(folder / "wav" / "test-d0.wav", speech_like(2.5, seed=8))
    add_media(
        folder,
        {
            "train-d0": {"audio": [f"wav/train-d0_{i}.wav" for i in range(3)]},
            "train-d1": {"video": "video/train-d1.mp4", "start": [0.0, 1.0, 2.0], "end": [1.0, 2.0, 3.0]},
            "valid-d0": {
                "audio": ["wav/valid-d0_0.flac", "wav/valid-d0_1.mp3"],
                "video": ["video/valid-d0_0.mp4", None],
            },
            "test-d0": {"audio": "wav/test-d0.wav", "start": [0.0, 1.2], "end": [1.1, 2.5]},
        },
    )
    return folder

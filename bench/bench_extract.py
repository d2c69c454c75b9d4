"""Throughput of merc's media feature extractors: seconds of media described per second.

Builds its own media in a temporary folder (the test suite's generators,
``tests/media_helpers.py``: speech-like audio from numpy, a video of scikit-image's
astronaut photograph on a 640 x 360 canvas at 25 fps, the last fifth without the face),
cut into utterances of ``--utterance-seconds``, and times, cold (empty cache) and warm:

- audio: ``egemaps`` (eGeMAPSv02 functionals), ``compare`` (ComParE_2016 functionals),
  ``librosa`` (log-mel + MFCC statistics), from one 16 kHz wav per dialogue;
- video: ``faces`` (OpenCV Haar face + eyes + smile, HOG of the aligned crop) at the
  default 5 sampled frames per second, from one H.264 mp4 per dialogue.

Writes ``bench/results/extract.json``.

Run: ``.venv/bin/python bench/bench_extract.py [--audio-seconds 120] [--video-seconds 30] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# The media generators of the tests (no download, no data set): one definition for both.
sys.path.insert(0, str(HERE.parent / "tests"))


def _segments(path: Path, seconds: float, step: float, field: str):
    from merc.data.formats.native import MediaSegment

    starts = np.arange(0.0, seconds - 1e-9, step)
    return [
        MediaSegment(path, float(s), float(min(s + step, seconds)), path.name, field, "bench", f"u{i}", True)
        for i, s in enumerate(starts)
    ]


def _time(segments, extractor) -> tuple[float, float]:
    from merc.features.extract import extract_segments

    start = time.perf_counter()
    extract_segments(segments, extractor, show_progress=False)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    extract_segments(segments, extractor, show_progress=False)
    return cold, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--audio-seconds", type=float, default=120.0)
    parser.add_argument("--video-seconds", type=float, default=30.0)
    parser.add_argument("--utterance-seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (openSMILE and librosa use one)")
    parser.add_argument("--out", default=str(HERE / "results" / "extract.json"))
    args = parser.parse_args()

    import cv2

    from media_helpers import face_image, speech_like, write_video, write_wav
    from merc.features.audio import build_audio_extractor
    from merc.features.media import frame_times
    from merc.features.visual import build_visual_extractor

    cv2.setNumThreads(args.threads)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MERC_CACHE_DIR"] = str(Path(tmp) / "cache")
        wav = write_wav(Path(tmp) / "dialogue.wav", speech_like(args.audio_seconds, seed=1))
        audio_segs = _segments(wav, args.audio_seconds, args.utterance_seconds, "audio")
        # Warm-up: imports and openSMILE's configuration parsing are paid once per process.
        for name in ("egemaps", "compare", "librosa"):
            build_audio_extractor(name).compute(speech_like(0.5), 16000)
        for name in ("egemaps", "compare", "librosa"):
            cold, warm = _time(audio_segs, build_audio_extractor(name))
            rows[f"audio {name}"] = {
                "media_seconds": args.audio_seconds,
                "utterances": len(audio_segs),
                "cold_s": cold,
                "media_s_per_s": args.audio_seconds / cold,
                "utterances_per_s": len(audio_segs) / cold,
                "warm_cache_s": warm,
            }

        canvas = np.zeros((360, 640, 3), np.uint8)
        face = face_image(256)
        canvas[52:308, 192:448] = face
        fps = 25
        n_face = int(0.8 * args.video_seconds * fps)
        frames = [canvas] * n_face + [np.zeros_like(canvas)] * (int(args.video_seconds * fps) - n_face)
        mp4 = write_video(Path(tmp) / "dialogue.mp4", frames, fps=fps)
        video_segs = _segments(mp4, args.video_seconds, args.utterance_seconds, "video")
        extractor = build_visual_extractor()
        extractor.describe_frame(cv2.cvtColor(canvas, cv2.COLOR_RGB2GRAY))  # loads the cascades
        cold, warm = _time(video_segs, extractor)
        sampled = sum(len(frame_times(s.start, s.end, extractor.fps)) for s in video_segs)
        rows["video faces"] = {
            "media_seconds": args.video_seconds,
            "utterances": len(video_segs),
            "frame_size": "640x360 @ 25 fps, H.264",
            "sampled_fps": extractor.fps,
            "sampled_frames": sampled,
            "cold_s": cold,
            "media_s_per_s": args.video_seconds / cold,
            "frames_per_s": sampled / cold,
            "warm_cache_s": warm,
        }

    import importlib.metadata as md

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": os.getloadavg()[0],
        "threads": args.threads,
        "versions": {p: md.version(p) for p in ("opensmile", "librosa", "av", "opencv-python-headless")},
        "results": rows,
    }
    for name, row in rows.items():
        rate = (
            f"{row['utterances_per_s']:.1f} utt/s"
            if "utterances_per_s" in row
            else f"{row['frames_per_s']:.1f} frames/s"
        )
        print(
            f"{name:16s} {row['media_s_per_s']:8.1f} s of media / s ({rate}; warm cache {row['warm_cache_s'] * 1e3:.0f} ms)"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

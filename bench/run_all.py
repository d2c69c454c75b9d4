"""``make bench``: run every benchmark that needs nothing outside merc, one after another.

Each writes its own ``bench/results/*.json``. ``bench_corect.py`` compares with the
authors' CORECT code only when ``MERC_CORECT_REFERENCE`` names a folder holding its
``corect`` package (it is not part of merc); without it merc alone is timed, into
``bench/results/corect_merc_only.json``. The
robustness tables come from ``merc robustness`` runs (see the README), not from here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    corect = ["--repeats", "5", "--threads", "2,1", "--precision", "32,bf16-mixed", "--runs", "3"]
    reference = os.environ.get("MERC_CORECT_REFERENCE")
    # Without the reference, merc-only timings go to their own file so that the committed
    # comparison in corect.json stays whole.
    corect += ["--reference", reference] if reference else ["--out", str(HERE / "results" / "corect_merc_only.json")]
    jobs = [
        ("bench_cpu_kernels.py", []),
        ("bench_text_features.py", []),
        ("bench_multidag.py", []),
        ("bench_corect.py", corect),
        ("bench_corect_ops.py", []),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    for script, args in jobs:
        print(f"== {script} {' '.join(args)}", flush=True)
        done = subprocess.run([sys.executable, str(HERE / script), *args], env=env, check=False)
        if done.returncode:
            print(f"{script} failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())

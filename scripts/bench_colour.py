"""Boundary F-measure of the stencil on the generated colour-edge test sets.

Prints F / precision / recall on the "equal" (equal-L* colour edges) and "brightness" sets for the
stencil engine of this tree ("after"), the one at `--before` (a git revision, default the branch's
first commit: the luminance-only algorithm) and the blur + Canny reference; then the ink fraction on
flat noisy images. The images and the metric are those of tests/tasks/test_colour_edges.py.

    python scripts/bench_colour.py [--before REV] [--seeds 1 2 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.stencil import stencil  # noqa: E402
from tests.tasks.test_colour_edges import canny_ink, flat_noisy, scores, stencil_ink  # noqa: E402

BEFORE = "8083e01"


def engine_at(revision: str):
    """`stencil` of tasks/stencil.py as it was at `revision`."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:tasks/stencil.py"],
                            check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"stencil_{revision}", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{revision}:tasks/stencil.py", "exec"), module.__dict__)
    return module.stencil


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' engine")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    before = engine_at(args.before)
    methods = {
        f"inkq before ({args.before})": lambda img: stencil_ink(img, before),
        "inkq after": stencil_ink,
        "blur + Canny": canny_ink,
    }
    print(f"{'method':<24} {'set':<11} {'F':>6} {'P':>6} {'R':>6} {'s/img':>6}")
    for name, method in methods.items():
        for kind in ("equal", "brightness"):
            start = time.perf_counter()
            f, p, r = scores(kind, method, args.seeds)
            per = (time.perf_counter() - start) / len(args.seeds)
            print(f"{name:<24} {kind:<11} {f:6.3f} {p:6.3f} {r:6.3f} {per:6.2f}")
    print("\nink fraction on flat noisy images (sensor σ, texture σ L*):")
    for sensor, texture in ((3.0, 1.0), (8.0, 3.0), (16.0, 4.0)):
        img = flat_noisy(sensor=sensor, texture=texture)
        row = "  ".join(f"{name.split(' (')[0]} {stencil_ink(img, engine).mean():.4%}"
                        for name, engine in (("before", before), ("after", stencil)))
        print(f"  σ {sensor:4.1f}, texture {texture:3.1f}: {row}")


if __name__ == "__main__":
    main()

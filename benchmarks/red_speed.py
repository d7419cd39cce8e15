"""Seconds per field of the call ``segment`` makes for red cells (benchmarks/red_cells.py's
:func:`smear_cells`: white cells, scale estimate, red cells and platelets, morphology) for the source tree
given, so that two versions are timed in one session, alternately (these machines are noisy):

    git worktree add ../old 933dca1
    for t in ../old . ../old .; do .venv/bin/python benchmarks/red_speed.py $t; done

The first 30 held-out fields of Chula (640x480, 0.19 um/px) and of BCCD (640x480, 0.07 um/px), scale
estimated, 2 threads; the first field of each is run once before timing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

tree = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
sys.path[:0] = [str(tree / "src"), str(tree / "benchmarks")]

import torch  # noqa: E402

import hemaseg  # noqa: E402
from hemaseg.model import default_model  # noqa: E402
from hemaseg.predict import ModelMethod, SegmentConfig  # noqa: E402
from hemaseg.segment import Job  # noqa: E402
from real_sources import held_out  # noqa: E402
from red_cells import smear_cells  # noqa: E402


def main() -> None:
    assert Path(hemaseg.__file__).resolve().is_relative_to(tree), f"imported {hemaseg.__file__}, not {tree}"
    torch.set_num_threads(2)
    method = ModelMethod.from_checkpoint(default_model(), SegmentConfig())
    job = Job.of(Path("runs/red_speed"), method, SegmentConfig(smear_cells=True))
    out = {}
    for source in ("chula", "bccd"):
        paths = held_out(source)[:30]
        smear_cells(job, paths[0])
        t = time.perf_counter()
        for p in paths:
            smear_cells(job, p)
        out[source] = round((time.perf_counter() - t) / len(paths), 3)
    print(tree, "seconds per field", out, flush=True)


if __name__ == "__main__":
    main()

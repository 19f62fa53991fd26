"""Benchmarks for aevents against bare-primitive floors and peer libraries.

Run `python -m benchmarks --help`; see benchmarks/README.md. The modules:

- `systems/`   one adapter per system (aevents, floors, peers, SQLite floors)
- `workloads`  what is measured and the driver that measures it (runs in a worker)
- `payload`    the realistic payload and the shared counting receivers (correctness guard)
- `worker`     one measurement per fresh interpreter
- `runner`     plans interleaved repetitions and runs the workers
- `summary`    medians, ranges, ratios and the goals
- `report`     rich tables
- `machine`    machine, Python and library versions
- `cli`        the command line
- `plot`       `python -m benchmarks.plot results.json` → PNG charts
"""

from __future__ import annotations

from benchmarks.systems import BASELINE, SYSTEMS
from benchmarks.workloads import WORKLOADS

__all__ = ["BASELINE", "SYSTEMS", "WORKLOADS"]

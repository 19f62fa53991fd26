"""Run one (system, workload, size) measurement in this process and print it as JSON.

The runner starts one fresh interpreter per measurement, so no system inherits another's
imports, loop state, garbage or peak RSS:

    python -m benchmarks.worker '{"system": "aevents-asyncio", "workload": "throughput", "n": 1000}'

The last stdout line is `BENCH-RESULT {...}` with `status` "ok", "unavailable" or "error".
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

from benchmarks.systems import SYSTEMS, Unavailable
from benchmarks.workloads import WORKLOADS

MARKER = "BENCH-RESULT "


def measure(system_name: str, workload_key: str, n: int) -> dict[str, Any]:
    system = SYSTEMS[system_name]
    workload = WORKLOADS[workload_key]
    reason = system.supports(workload_key)
    if reason is not None:
        return {"status": "unsupported", "reason": reason}
    try:
        metrics = workload.driver(system, n)
    except Unavailable as unavailable:
        return {"status": "unavailable", "reason": str(unavailable)}
    return {"status": "ok", "metrics": metrics}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    try:
        result = measure(spec["system"], spec["workload"], int(spec["n"]))
    except BaseException as error:  # report anything, including a broken adapter
        traceback.print_exc()
        result = {"status": "error", "error": f"{type(error).__name__}: {error}"}
    sys.stdout.flush()
    print(MARKER + json.dumps(result), flush=True)
    return 0 if result["status"] != "error" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""A job handler for the tests, following nexa's external-handler contract.

It reads the job from $NEXA_JOB_FILE, prints log lines and `NEXA_PROGRESS` lines, and writes
$NEXA_OUTPUT_DIR/result.json with metrics, an artifact, and the job it was given (so tests can
see what reached the handler). Hyperparameters (train jobs) steer it:

- `sleep_seconds`: take this long, printing a line about every 0.2 s;
- `fail`: exit 3 after printing, so the job fails;
- `lines`: print this many numbered lines (default 3).
"""

import json
import os
import sys
import time
from typing import Any, Dict


def plain(value: object) -> object:
    """A hyperparameter as a plain value, whether or not it arrives tagged (`{"Int": 3}`)."""
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value.values()))
    return value


def main() -> int:
    with open(os.environ["NEXA_JOB_FILE"]) as f:
        job = json.load(f)
    params = job.get("params") or {}
    hyper: Dict[str, Any] = {k: plain(v) for k, v in (params.get("hyperparameters") or {}).items()}
    sleep_seconds = float(hyper.get("sleep_seconds", 0))
    lines = int(hyper.get("lines", 3))

    print(f"handler: {job.get('job_type')} job {job.get('job_id')} attempt {job.get('attempt')}", flush=True)
    for i in range(lines):
        print(f"line {i}", flush=True)
    print("NEXA_PROGRESS 0.5", flush=True)

    deadline = time.monotonic() + sleep_seconds
    tick = 0
    while time.monotonic() < deadline:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        print(f"tick {tick}", flush=True)
        tick += 1

    if hyper.get("fail"):
        print("handler: failing as asked", file=sys.stderr, flush=True)
        return 3

    print("NEXA_PROGRESS 1.0", flush=True)
    print("handler: done", flush=True)
    out = os.environ["NEXA_OUTPUT_DIR"]
    result = {
        "metrics": {"loss": 0.125, "lines": float(lines)},
        "artifacts": {"report": "file://" + os.path.join(out, "report.txt")},
        "job": job,
    }
    with open(os.path.join(out, "report.txt"), "w") as f:
        f.write("ok\n")
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

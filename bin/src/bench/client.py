"""The Python peer of `nexa bench --client python`: clients on the Python SDK
(`NexaForgeClient`), each in a thread, submitting and waiting in a closed loop.

Its one argument is the settings as JSON. It runs the warm-up, prints "ready", waits for a
line on stdin, runs the measured jobs and prints them as one JSON array of
[submitted, seen, attempts, succeeded] (time.monotonic seconds).
"""

import json
import sys
import threading
import time

settings = json.loads(sys.argv[1])
if settings.get("sdk_path"):
    sys.path.insert(0, settings["sdk_path"])
from nexa_forge import NexaForgeClient  # noqa: E402

job = {"job_type": settings["job_type"], "params": settings["params"]}
batch = settings["batch"]


def run(jobs, deadline, records):
    lock = threading.Lock()
    left = [jobs]
    failures = []

    def take():
        with lock:
            if deadline is not None and time.monotonic() >= deadline:
                return 0
            n = min(batch, left[0])
            left[0] -= n
            return n

    def client():
        sdk = NexaForgeClient(settings["api_url"], timeout=120)
        try:
            while True:
                n = take()
                if n == 0:
                    return
                submitted = time.monotonic()
                if n == 1:
                    done = [sdk.wait(sdk.submit(job["job_type"], job["params"]))]
                else:
                    ids = sdk.submit_many([job] * n)
                    done, _ = sdk.wait_many(ids)
                seen = time.monotonic()
                with lock:
                    for j in done:
                        records.append(
                            [submitted, seen, len(j.attempts), j.status.value == "succeeded"]
                        )
        except Exception as e:  # reported, and the run fails
            with lock:
                failures.append(repr(e))
        finally:
            sdk.close()

    threads = [threading.Thread(target=client) for _ in range(settings["clients"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit("a Python client failed: " + failures[0])


run(settings["warmup"], None, [])
print("ready", flush=True)
sys.stdin.readline()
records = []
duration = settings.get("duration") or 0
if duration > 0:
    run(1 << 62, time.monotonic() + duration, records)
else:
    run(settings["jobs"], None, records)
print(json.dumps(records), flush=True)

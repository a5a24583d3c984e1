"""A train handler for the dashboard test: a few log lines, progress, and a result.

The worker runs it with the job in the file named by NEXA_JOB_FILE and an output folder in
NEXA_OUTPUT_DIR; stdout lines become the job's log, `NEXA_PROGRESS x` lines its progress.
With `epochs` of 100 or more it instead ticks for a minute, for a test to cancel it; with
`model_id` "flaky" its first attempt fails.
"""
import json
import os
import time

with open(os.environ["NEXA_JOB_FILE"]) as f:
    job = json.load(f)
params = job.get("params") or {}
epochs = int(params.get("epochs") or 1)

print(f"starting {job.get('job_id')} attempt {job.get('attempt')}", flush=True)
print(f"model {params.get('model_id')} on {params.get('dataset_uri')}", flush=True)
note = (params.get("hyperparameters") or {}).get("note")
if note is not None:
    print(f"note: {note}", flush=True)

if params.get("model_id") == "flaky" and job.get("attempt") == 1:
    print("attempt 1 fails on purpose", flush=True)
    time.sleep(0.3)
    raise SystemExit(3)

if epochs >= 100:
    for tick in range(200):
        print(f"tick {tick}", flush=True)
        print(f"NEXA_PROGRESS {tick / 200}", flush=True)
        time.sleep(0.3)
    raise SystemExit("nobody cancelled the long job")

for step in range(1, 4):
    time.sleep(0.4)
    print(f"epoch 1/{epochs} step {step}/3 loss {0.5 / step:.3f}", flush=True)
    if step == 2:
        print("NEXA_PROGRESS 0.5", flush=True)
time.sleep(0.4)
with open(os.path.join(os.environ["NEXA_OUTPUT_DIR"], "result.json"), "w") as f:
    json.dump({"metrics": {"loss": 0.1}}, f)
print("training done", flush=True)

"""The baseline of scripts/bench-serving: a Nexa Forge model served the way the original
platform served models, FastAPI + uvicorn + PyTorch, with the same plain protocol as a
replica's `POST /predict` (`{"inputs": [[...]]}` → `{"predictions": [...], "classes": [...]}`).

    python serve_torch.py MODEL.safetensors PORT

The model file is the safetensors a train job makes: `layers.{i}.weight` (fan_in × fan_out),
`layers.{i}.bias` (1 × fan_out), optional `input_norm.*` and `target_norm.*` (mean and std),
and its configuration as JSON in the metadata key `nexa.model_config`.
"""

import json
import sys

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from safetensors import safe_open

torch.set_num_threads(1)
torch.set_grad_enabled(False)


def load(path):
    with safe_open(path, framework="pt") as f:
        config = json.loads(f.metadata()["nexa.model_config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    layers = []
    i = 0
    while f"layers.{i}.weight" in tensors:
        layers.append((tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]))
        i += 1
    norm = lambda name: (
        (tensors[f"{name}_norm.mean"], tensors[f"{name}_norm.std"])
        if f"{name}_norm.mean" in tensors
        else None
    )
    return config, layers, norm("input"), norm("target")


config, layers, input_norm, target_norm = load(sys.argv[1])
activation = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda x: x}[
    config["activation"]
]
classifier = config["head"] == "classification"


def predict(x):
    if input_norm is not None:
        x = (x - input_norm[0]) / input_norm[1]
    for index, (weight, bias) in enumerate(layers):
        x = x @ weight + bias
        if index + 1 < len(layers):
            x = activation(x)
    if target_norm is not None:
        x = x * target_norm[1] + target_norm[0]
    return x


app = FastAPI()


class Rows(BaseModel):
    inputs: list[list[float]]


@app.post("/predict")
def serve(rows: Rows):
    if not rows.inputs or any(len(r) != config["inputs"] for r in rows.inputs):
        raise HTTPException(400, f"every row must have {config['inputs']} values")
    out = predict(torch.tensor(rows.inputs, dtype=torch.float32))
    answer = {"predictions": out.tolist()}
    if classifier:
        answer["classes"] = out.argmax(dim=1).tolist()
    return answer


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")

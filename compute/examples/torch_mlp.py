#!/usr/bin/env python3
"""The PyTorch baseline of the compute throughput benchmark (examples/throughput.rs).

Trains the same MLP the same way as `nexa_compute::train`: inputs standardised, ReLU hidden
layers, softmax cross-entropy, AdamW (weight decay on weights only), linear warmup then cosine
decay to a floor, gradient clipping by global norm, a fresh shuffle each epoch, the loss read
back every step (to stop on divergence), fp32, eager mode. Prints one JSON line:
{"samples_per_sec": ..., "last_loss": ..., "threads": ..., "device": ...}.

    torch_mlp.py DATA.jsonl --hidden 256,256,256 [--epochs 2] [--batch 256] [--threads 1]

DATA.jsonl and DATA.jsonl.schema.json are written by `throughput --torch`.
"""

import argparse
import json
import math
import time

import torch
from torch import nn


def load(path):
    with open(path + ".schema.json") as f:
        schema = json.load(f)
    task = schema["task"]
    if task["kind"] != "classification":
        raise SystemExit(f"{path}: only classification datasets are benchmarked")
    features, (label,) = schema["features"], schema["labels"]
    xs, ys = [], []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            xs.append([float(row[c]) for c in features])
            ys.append(int(row[label]))
    return torch.tensor(xs, dtype=torch.float32), torch.tensor(ys), task["classes"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--hidden", required=True, help="hidden widths, e.g. 256,256,256")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    # nexa_compute's defaults (TrainConfig, AdamWConfig).
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument(
        "--warm-up-rows",
        type=int,
        default=0,
        help="first train a throw-away model one epoch on this many rows, untimed (on a GPU: "
        "CUDA's and cuBLAS's first calls, as the nexa side does before it is timed)",
    )
    a = p.parse_args()

    if a.threads > 0:  # 0: PyTorch's own default
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    x, y, classes = load(a.data)
    x = ((x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-12)).to(device)
    y = y.to(device)

    widths = [x.shape[1]] + [int(w) for w in a.hidden.split(",")]

    def fit(x, y, epochs):
        """Trains a fresh model; the samples it saw, its last loss and the seconds taken."""
        layers = []
        for fan_in, fan_out in zip(widths, widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], classes))
        model = nn.Sequential(*layers).to(device)

        weights = [m.weight for m in model if isinstance(m, nn.Linear)]
        biases = [m.bias for m in model if isinstance(m, nn.Linear)]
        opt = torch.optim.AdamW(
            [
                {"params": weights, "weight_decay": a.weight_decay},
                {"params": biases, "weight_decay": 0.0},
            ],
            lr=a.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
        )
        n = x.shape[0]
        per_epoch = math.ceil(n / a.batch)
        total = per_epoch * epochs
        warmup = round(total * a.warmup)

        def lr_factor(step):
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        loss_fn = nn.CrossEntropyLoss()

        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        seen = 0
        last = float("nan")
        for _ in range(epochs):
            order = torch.randperm(n, device=device)
            for start in range(0, n, a.batch):
                rows = order[start : start + a.batch]
                loss = loss_fn(model(x[rows]), y[rows])
                last = loss.item()
                if not math.isfinite(last):
                    raise SystemExit(f"diverged: loss {last}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), a.clip)
                opt.step()
                schedule.step()
                seen += rows.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seen, last, time.perf_counter() - started

    if a.warm_up_rows > 0:
        fit(x[: a.warm_up_rows], y[: a.warm_up_rows], 1)
    seen, last, elapsed = fit(x, y, a.epochs)
    print(
        json.dumps(
            {
                "samples_per_sec": seen / elapsed,
                "last_loss": last,
                "threads": torch.get_num_threads(),
                "device": str(device),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()

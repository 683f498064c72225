"""Train the benchmarks' judge: a small CNN on MNIST, independent of every vd model.

    VD_DATA_ROOT=../shared/datasets python bench/classifier.py      # trains it once (~1 min), prints test accuracy

The network (``common.Judge``: two conv blocks and a linear head, LeNet-like) is trained for 2
epochs of Adam with ±2-pixel shifts, so it is robust to where a generated digit sits, and saved to
bench/runs/classifier.safetensors, where ``common.load_judge()`` finds it (and calls ``train``
first when it is missing). Its test accuracy is recorded in bench/results.jsonl.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from common import JUDGE, Judge, data_root, judge, load_judge, record  # noqa: F401 (judge, load_judge: older scripts import them from here)
from safetensors.torch import save_file

from vdcli.data import load_split, to_float
from vdcli.recipe import DataConfig


@torch.enable_grad()  # load_judge may call it from a script that turned gradients off
def train(epochs: int = 2, seed: int = 0) -> Judge:
    torch.manual_seed(seed)
    data = load_split(DataConfig(name="mnist", image_size=28), "train", data_root())
    test = load_split(DataConfig(name="mnist", image_size=28), "test", data_root())
    model, t0 = Judge(), time.perf_counter()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * (len(data) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for step in range(steps):
        if step % (len(data) // 128) == 0:
            perm = torch.randperm(len(data))
        rows = perm[(step % (len(data) // 128)) * 128 :][:128]
        x = to_float(data.images[rows])
        dx, dy = torch.randint(-2, 3, (2,)).tolist()
        x = torch.roll(x, (dy, dx), dims=(2, 3))
        loss = F.cross_entropy(model(x)[0], data.labels[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    probs, _ = judge(model, test.images)
    accuracy = (probs.argmax(1) == test.labels).float().mean().item()
    seconds = time.perf_counter() - t0
    print(f"judge: MNIST test accuracy {accuracy:.2%} after {epochs} epochs in {seconds:.0f} s")
    JUDGE.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(JUDGE), metadata={"test_accuracy": f"{accuracy:.4f}"})
    record({"bench": "classifier", "test_accuracy": round(accuracy, 4), "epochs": epochs, "seed": seed,
            "seconds": round(seconds, 1)})
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    train(args.epochs, args.seed)

"""The judge for the benchmarks: a small CNN trained on MNIST, independent of every vd model.

    VD_DATA_ROOT=../shared/datasets python bench/classifier.py      # trains it once (~1 min), prints test accuracy

Two conv blocks and a linear head (LeNet-like), 2 epochs of Adam with ±2-pixel shifts, so it is
robust to where a generated digit sits. It is saved to bench/runs/classifier.safetensors and
loaded by ``load_judge()``, which trains it first when the file is missing. ``judge(images)``
takes uint8 digits at 28x28 or the LDM's zero-padded 32x32 and returns class probabilities and
the 64-d penultimate features (for a Fréchet distance).
"""

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vdcli.data import load_split, to_float
from vdcli.recipe import DataConfig

PATH = Path(os.path.relpath(Path(__file__).parent)) / "runs" / "classifier.safetensors"


class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
            nn.Flatten(), nn.Linear(64 * 49, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f), f


def centre28(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, S, S] -> float [N, 1, 28, 28]: the LDM's 32x32 digits are MNIST padded by 2."""
    if images.shape[-1] != 28:
        off = (images.shape[-1] - 28) // 2
        images = images[..., off : off + 28, off : off + 28]
    return to_float(images)


def train(epochs: int = 2, seed: int = 0) -> Judge:
    torch.manual_seed(seed)
    data = load_split(DataConfig(name="mnist", image_size=28), "train")
    test = load_split(DataConfig(name="mnist", image_size=28), "test")
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
    print(f"judge: MNIST test accuracy {accuracy:.2%} after {epochs} epochs in {time.perf_counter() - t0:.0f} s")
    PATH.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(PATH), metadata={"test_accuracy": f"{accuracy:.4f}"})
    return model


def load_judge() -> Judge:
    if not PATH.is_file():
        return train()
    model = Judge()
    model.load_state_dict(load_file(str(PATH)))
    return model.eval()


@torch.no_grad()
def judge(model: Judge, images: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(class probabilities [N, 10], features [N, 64]) of uint8 digits."""
    outs = [model(centre28(images[i : i + batch])) for i in range(0, len(images), batch)]
    return torch.cat([o[0] for o in outs]).softmax(1), torch.cat([o[1] for o in outs])


if __name__ == "__main__":
    torch.set_num_threads(2)
    train()

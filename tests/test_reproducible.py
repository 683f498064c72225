"""Same seed, same run: two fresh runs of a training command write the same weights, bit for bit.

Resuming is covered in test_trainer.py; this is about runs that both start from nothing, which
depends on the initial weights being drawn from the recipe's seed (``trainer.seeded_init``).
"""

from pathlib import Path

import pytest
import torch
from test_cli import TINY_CLIP, TINY_LDM, TINY_VAE, TINY_VIT, ok, recipe

from vdcli.checkpoint import load_checkpoint
from vdcli.models.vit import ViT, ViTConfig
from vdcli.trainer import seeded_init

COMMANDS = {"vit": ("train-vit", TINY_VIT), "vae": ("train-vae", TINY_VAE), "ldm": ("train-ldm", TINY_LDM),
            "clip": ("train-clip", TINY_CLIP)}


def weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run / "checkpoint.safetensors")
    return {k: ckpt.tensors[k] for k in sorted(ckpt.tensors)}


def train(tmp_path, kind: str, out: str, *extra) -> dict[str, torch.Tensor]:
    command, tiny = COMMANDS[kind]
    ok(command, recipe(tmp_path, "r", kind), *tiny, "--out", tmp_path / out, "--quiet", *extra)
    return weights(tmp_path / out / "r" / "latest")


@pytest.mark.parametrize("kind", ["vit", "vae", "ldm", "clip"])
def test_two_fresh_runs_with_one_seed_write_identical_weights(tmp_path, kind):
    first = train(tmp_path, kind, "a", "--seed", 3)
    torch.manual_seed(12345)  # whatever the process's RNG holds before a run must not matter
    second = train(tmp_path, kind, "b", "--seed", 3)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("kind", ["vit", "vae", "ldm", "clip"])
def test_another_seed_gives_other_weights(tmp_path, kind):
    first, second = train(tmp_path, kind, "a", "--seed", 3), train(tmp_path, kind, "b", "--seed", 4)
    # (--seed is train.seed: the LDM's VAE stage keeps its own, vae.train.seed, so only the denoiser moves)
    assert any(not torch.equal(first[k], second[k]) for k in first if k.startswith("model."))


def test_each_stage_draws_its_own_initial_weights_from_the_seed():
    cfg = ViTConfig(dim=16, depth=1, heads=2, patch_size=7)

    def build(stage: str, seed: int = 0) -> torch.Tensor:
        with seeded_init(seed, stage):
            return torch.cat([p.flatten() for p in ViT(cfg, 28, 1, 10).parameters()])

    torch.manual_seed(1)
    a = build("vit")
    torch.rand(100)  # draws in between change nothing
    assert torch.equal(a, build("vit"))
    assert not torch.equal(a, build("denoiser"))
    assert not torch.equal(a, build("vit", seed=1))


def test_seeded_init_leaves_the_callers_random_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with seeded_init(0, "vit"):
        torch.rand(10)
    assert torch.equal(torch.rand(3), expected)

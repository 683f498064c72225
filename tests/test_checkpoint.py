"""Checkpoints are safetensors with vd metadata; they round-trip exactly and say what they are."""

import pytest
import torch
from safetensors.torch import save_file

from vdcli.checkpoint import load_checkpoint, load_train_state, save_checkpoint, save_train_state
from vdcli.errors import VdError


def net():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))


def test_checkpoint_round_trip_is_bitwise(tmp_path):
    model = net()
    save_checkpoint(tmp_path / "c.safetensors", "vit", {"model": model}, {"model": {"dim": 4}, "step": 7})
    ckpt = load_checkpoint(tmp_path / "c.safetensors", "vit")
    assert ckpt.kind == "vit" and ckpt.meta == {"model": {"dim": 4}, "step": 7}
    for name, value in model.state_dict().items():
        assert torch.equal(ckpt.weights("model")[name], value)


def test_wrong_checkpoint_kind_says_what_it_is_and_what_was_expected(tmp_path):
    save_checkpoint(tmp_path / "c.safetensors", "vae", {"model": net()}, {})
    with pytest.raises(VdError, match="is a VAE .* needs a ViT classifier"):
        load_checkpoint(tmp_path / "c.safetensors", "vit")


def test_foreign_safetensors_file_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(VdError, match="not a vd checkpoint"):
        load_checkpoint(tmp_path / "x.safetensors")


def test_a_pickle_file_is_refused_not_unpickled(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(VdError, match="not a safetensors checkpoint"):
        load_checkpoint(tmp_path / "model.pt")


def test_optimizer_state_round_trip(tmp_path):
    model = net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    save_train_state(tmp_path / "c.safetensors", opt, step=3)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    load_train_state(tmp_path / "c.safetensors", fresh, step=3)
    for a, b in zip(opt.state.values(), fresh.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_write_is_atomic_no_temporary_file_left(tmp_path):
    save_checkpoint(tmp_path / "c.safetensors", "vit", {"model": net()}, {})
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_resuming_needs_a_state_of_the_weights_step(tmp_path):
    model = net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    save_train_state(tmp_path / "c.safetensors", opt, step=3)
    with pytest.raises(VdError, match="weights are from step 5, but it has the state of step 3"):
        load_train_state(tmp_path / "c.safetensors", opt, step=5)

"""Shared fixtures: every test runs in its own temporary folder, on data it makes itself."""

import pytest
import torch

# The models in tests are tiny: one thread is fastest, and keeps the suite fast on a busy machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Runs, outputs and datasets go to a fresh folder; nothing depends on ../shared."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VD_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("VD_RUNS", raising=False)
    torch.manual_seed(0)

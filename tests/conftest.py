"""Shared fixtures: every test runs in its own temporary folder, on data it makes itself."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Runs, outputs and datasets go to a fresh folder; nothing depends on ../shared."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VD_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("VD_RUNS", raising=False)
    torch.manual_seed(0)

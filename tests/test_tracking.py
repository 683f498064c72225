"""Experiment tracking: TensorBoard's event file holds what the run logged; vd runs compare draws runs together."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vdcli import tracking
from vdcli.errors import VdError
from vdcli.recipe import TrainConfig, load_recipe
from vdcli.runs import new_run
from vdcli.trainer import fit

CPU = torch.device("cpu")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra")


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    return x, (x[:, :3].sum(1) > 0).long()


def loss_fn(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y), {"extra": torch.tensor(0.5)}


def train(tmp_path, name="a", **cfg):
    cfg = TrainConfig(**{"steps": 10, "batch_size": 16, "lr": 1e-2, "warmup_steps": 2, "log_every": 5, "eval_every": 5,
                         "checkpoint_every": 10, **cfg})
    run = new_run(tmp_path / "runs", name)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 2))

    def evaluate(model, step):  # as the tasks' evaluations do: a metric and a sample grid on disk
        Image.new("RGB", (12, 8), (step * 20, 0, 0)).save(run.dir / f"samples_{step:06d}.png")
        return {"accuracy": step / 10}

    return fit(model, loss_fn, data(), cfg, run, kind="vit", meta={}, device=CPU, evaluate=evaluate, quiet=True)


@needs_tensorboard
def test_event_file_holds_the_scalars_and_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tmp_path, log_to="tensorboard")
    events = EventAccumulator(str(result.run.dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/images_per_second", "train/extra", "eval/accuracy"} <= set(tags["scalars"])
    logged = [json.loads(line) for line in result.run.metrics.read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r}
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(losses)
    assert {e.step: e.value for e in events.Scalars("eval/accuracy")} == pytest.approx({5: 0.5, 10: 1.0})
    grids = events.Images("images/samples")
    assert [g.step for g in grids] == [5, 10]  # each evaluation's new grid, at its step
    assert (grids[0].width, grids[0].height) == (12, 8)


@needs_tensorboard
def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Killed after logging step 8 with its checkpoint at step 5: the resumed run's events replace 6 to 8."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = tracking.tracker("tensorboard", tmp_path, rank=0)
    for step in range(1, 9):
        first.scalars("train", {"loss": float(step)}, step)
    first.close()
    resumed = tracking.tracker("tensorboard", tmp_path, rank=0, resumed_at=5)
    for step in range(6, 11):
        resumed.scalars("train", {"loss": step + 0.5}, step)
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == \
        [(s, float(s)) for s in range(1, 6)] + [(s, s + 0.5) for s in range(6, 11)]


def test_without_log_to_nothing_is_written(tmp_path):
    result = train(tmp_path)
    assert not (result.run.dir / "tensorboard").exists()


def test_missing_package_is_one_line_before_any_work(monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VdError, match=r'train.log_to: tensorboard needs the tensorboard package.*pip install -e "\.\[tensorboard\]"') as e:
        load_recipe(RECIPES / "mnist_vit.yaml", "vit", ["train.log_to=tensorboard"])
    assert "\n" not in str(e.value)


def test_other_ranks_write_nothing(tmp_path):
    assert isinstance(tracking.tracker("tensorboard", tmp_path, rank=1), tracking.NoTracker)
    assert not (tmp_path / "tensorboard").exists()


def vd(*args):
    from typer.testing import CliRunner

    from vdcli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_runs_compare_draws_every_run(tmp_path):
    a, b = train(tmp_path, "a").run.dir, train(tmp_path, "b", lr=1e-3).run.dir
    out = tmp_path / "compare.png"
    result = vd("runs", "compare", a, b / "checkpoint.safetensors", "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 runs" in result.output
    picture = Image.open(out)
    assert picture.height > 2 * picture.width * 3.2 / 7 * 0.9  # the loss axis and one axis for the eval metric


def test_runs_compare_refuses_a_bad_path_in_one_line(tmp_path):
    a = train(tmp_path, "a").run.dir
    for bad, says in [(tmp_path / "nope", "no such run folder"), (tmp_path, "not a run folder")]:
        result = vd("runs", "compare", a, bad)
        assert result.exit_code == 2
        assert says in result.output and len(result.output.strip().splitlines()) == 1

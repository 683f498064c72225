"""The training loop every ``vd train-*`` command shares.

A task (``tasks/vit.py`` ...) hands over a model, a loss function, its data as columns (CPU
tensors, or files read at each step: ``streaming.py``) and an evaluation function; the loop does
the rest: AdamW with linear warm-up and cosine decay, gradient clipping, optional EMA of the
weights, bf16 autocast on CUDA, periodic evaluation and atomic checkpoints, ``metrics.jsonl``, a
loss curve, and Ctrl-C/SIGTERM that save before exiting.

Speed: the loss stays on the device between logging steps (``LossWatch``); reading it is a host
sync that would stall a GPU every step. It is read, and checked for NaN/inf, on the steps that
log, evaluate or checkpoint, and before a stop saves, so no checkpoint is written from a
diverged model. ``train.compile`` runs the loss through ``torch.compile``d network.

Also: ``train.micro_batch`` runs a step's batch through the network in micro-batches whose
gradients sum to the whole batch's, one optimiser step (``accumulate.py``: how a split step keeps
the unsplit step's random draws); a recipe's ``init_from`` starts the run from another run's
weights (``finetune.py``); ``train.log_to: tensorboard`` mirrors the logs and grids (``tracking.py``).

Reproducibility: a network's initial weights are drawn inside ``seeded_init(seed, stage)``, from
(seed, stage) alone; the batch order of epoch e is a permutation seeded by (seed, e); and the
global RNG is reseeded from (seed, step) before every step. So two fresh runs with one seed start
from the same weights, step s sees the same batch and the same random draws (noise, dropout,
label drops) whether the run started at 0 or resumed at s, and on the CPU both a repeated run and
a resumed run are bitwise identical to the first, uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from vdcli import distributed
from vdcli.accumulate import micro_batches, whole_batch_draws
from vdcli.checkpoint import load_checkpoint, load_train_state, read_header, save_resumable
from vdcli.device import autocast, compiled, prepare
from vdcli.errors import VdError
from vdcli.finetune import init_from
from vdcli.images import loss_curve
from vdcli.progress import Reporter, console, format_metrics
from vdcli.recipe import TrainConfig
from vdcli.runs import Run
from vdcli.streaming import Column, step_batches
from vdcli.tracking import pictures, tracker, written

LossFn = Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[nn.Module, int], "dict[str, float] | None"]


class TrainingInterrupted(VdError):
    """Ctrl-C or SIGTERM: the checkpoint was saved; the message says how to resume."""


@dataclass
class TrainResult:
    run: Run
    model: nn.Module  # what was evaluated and what commands use: the EMA model when there is one
    step: int
    seconds: float
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def seeded_init(seed: int, stage: str):
    """Build a network inside this block and its initial weights depend on (seed, stage) only.

    torch's layer constructors draw from the global RNG (they take no generator), so the block
    forks it, seeds it, and restores the caller's state afterwards. ``stage`` names the network
    ("vit", "vae", "denoiser", ...) so that each stage of a multi-stage run draws its own weights:
    reusing a trained VAE does not change the denoiser's initial weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(stage.encode()))
        yield


def use_deterministic_algorithms(on: bool) -> None:
    """train.deterministic: bitwise-repeatable runs on CUDA too, at some cost in speed.

    The CPU path is deterministic anyway. On CUDA, cuBLAS needs a fixed workspace (set before its
    first use) and several kernels (scatter-add, some convolution algorithms) have slower
    deterministic variants; torch raises an error for an op that has none.
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over warmup_steps, then cosine decay to zero at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and tokens, as one fused kernel.

    Fused, it updates every parameter in one call; torch's default on the CPU is a Python loop of
    about ten small ops per parameter tensor (185 tensors in the recipe's U-Net: 6.5 ms a step
    against 2.0, ``bench/optimizer_step.py``). Both are Loshchilov & Hutter's update, rounded differently.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def clip_gradients(model: nn.Module, max_norm: float) -> None:
    """Scale the gradients so that their global L2 norm is at most ``max_norm``, in multi-tensor calls."""
    nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)


class EMA:
    """Exponential moving average of a model's weights, with the usual warm-up of the decay."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


class BatchOrder:
    """Which rows of the data step s trains on: epoch permutations seeded by (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.per_epoch = n // self.batch_size
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]


class LossWatch:
    """The training loss, kept on the device until a step that reads it.

    ``add`` costs no host sync: it keeps the step's loss and, in a tensor, the first step whose
    loss was not finite. ``read`` syncs once and returns (the latest loss, the first non-finite
    step or 0, that step's loss).
    """

    def __init__(self):
        self.loss: torch.Tensor | None = None
        self.bad_step: torch.Tensor | None = None
        self.bad_loss: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, step: int) -> None:
        self.loss = loss.detach().float()
        if self.bad_step is None:
            self.bad_step, self.bad_loss = torch.zeros_like(self.loss), torch.zeros_like(self.loss)
        first = (self.bad_step == 0) & ~torch.isfinite(self.loss)
        self.bad_step = torch.where(first, float(step), self.bad_step)  # float32 holds steps exactly up to 2^24
        self.bad_loss = torch.where(first, self.loss, self.bad_loss)

    def read(self) -> tuple[float, int, float]:
        loss, bad_step, bad_loss = torch.stack([self.loss, self.bad_step, self.bad_loss]).tolist()  # the one sync
        return loss, int(bad_step), bad_loss


class StopFlag:
    """The first Ctrl-C/SIGTERM asks the loop to save and stop; a second one stops at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def request(self, *_) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self.request)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class Snapshot:
    """A copy of the evaluated weights (the EMA's when there is one) taken after step ``at`` into
    ``module``, saved in the checkpoint under ``name`` from then on and read back on resume:
    autoguidance's guide, the model's own weights early in training (Karras et al. 2024)."""

    name: str
    at: int
    module: nn.Module


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    data: tuple[Column, ...],
    cfg: TrainConfig,
    run: Run,
    *,
    kind: str,
    meta: dict,
    device: torch.device,
    evaluate: EvalFn | Sequence[EvalFn] = (),
    extra: dict[str, nn.Module | dict] | None = None,
    snapshots: Sequence[Snapshot] = (),
    resume: bool = False,
    quiet: bool = False,
    stop: StopFlag | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` for cfg.steps steps from cfg.seed; checkpoint as ``kind`` with ``meta``.

    loss_fn(model, batch) -> (loss, logs), batch being the rows of each tensor in ``data``
    for one step, moved to ``device``. ``evaluate``: one function or several, each
    evaluate(model, step) -> metrics (or None) at every cfg.eval_every steps and at the end, on the
    EMA model when there is one; their metrics are merged. ``extra`` modules (an LDM's frozen
    VAE) are saved in the checkpoint too, and so are the ``snapshots`` once they are taken.
    """
    evaluations = [evaluate] if callable(evaluate) else list(evaluate)
    seed = cfg.seed
    use_deterministic_algorithms(cfg.deterministic)
    prepare(model, device, compiled=cfg.compile)
    rank, world = distributed.rank(), distributed.world_size()
    net = model  # what loss_fn calls: under torchrun, the DDP wrapper that averages gradients over the ranks
    ddp = None  # the DDP wrapper, whose no_sync() skips the all-reduce of all but a step's last micro-batch
    if world > 1:
        if cfg.batch_size % world:
            raise VdError(f"train.batch_size {cfg.batch_size} is the global batch and does not split evenly over {world} processes; "
                          f"use a multiple of {world}")
        if cfg.micro_batch and (cfg.batch_size // world) % cfg.micro_batch:
            raise VdError(f"train.micro_batch {cfg.micro_batch} does not divide the per-process batch {cfg.batch_size // world} "
                          f"(train.batch_size {cfg.batch_size} over {world} processes); use a divisor of it")
        net = ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        quiet = quiet or rank > 0
    if cfg.compile:  # the wrapper only runs the loss; ``model`` is what is saved, so no ``_orig_mod.`` in the keys
        net = compiled(net)
    source = (meta.get("recipe") or {}).get("init_from")
    continuing = resume and run.checkpoint.is_file()
    if source and not continuing:  # fine-tuning: another run's weights, before the EMA copies them and before any step
        meta = {**meta, "init_from": str(_init_from(model, source, kind, extra, quiet or rank > 0))}
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    start = 0
    if continuing:
        ckpt = load_checkpoint(run.checkpoint, expect=kind)
        model.load_state_dict(ckpt.weights("model"))
        if ema:
            ema.model.load_state_dict(ckpt.weights("ema"))
        start = ckpt.meta["step"]
        for snap in snapshots:
            if start >= snap.at:
                snap.module.load_state_dict(ckpt.weights(snap.name))
        load_train_state(run.checkpoint, optimizer, start)
        _truncate_metrics(run, start)
    if start >= cfg.steps:
        raise VdError(f"{run.dir} already finished its {cfg.steps} steps; raise train.steps with --set train.steps=N to continue")

    order = BatchOrder(len(data[0]), cfg.batch_size, seed)
    metrics: dict[str, float] = {}
    loss_value = float("nan")
    watch = LossWatch()
    stop = stop or StopFlag()

    def save(step: int) -> None:
        taken = {snap.name: snap.module for snap in snapshots if step >= snap.at}  # a snapshot only once it is one
        modules = {"model": model, **({"ema": ema.model} if ema else {}), **(extra or {}), **taken}
        save_resumable(run.checkpoint, kind, modules, {**meta, "metrics": metrics}, optimizer, step)

    batches = step_batches(data, order, start, cfg.steps, rank, world, device)  # streamed columns: read ahead by workers

    t0 = time.perf_counter()
    track = tracker(cfg.log_to, run.dir, rank, start)
    since, items = t0, 0  # images/s over the steps since the last log line
    with stop, SaveOnError(save, watch, model, run.checkpoint, start) as mark, \
            Reporter(cfg.steps, start, f"{kind} {run.dir.name}", every=cfg.log_every, quiet=quiet) as report, \
            open(run.metrics if rank == 0 else os.devnull, "a") as log:
        step = read_from = start
        for step in range(start + 1, cfg.steps + 1):  # step = number of optimizer updates done after this one
            torch.manual_seed(seed * 1_000_003 + step + rank * 1_000_000_007)  # rank 0 draws what one process draws
            rows = order(step - 1)[rank::world]  # this rank's share of the global batch
            batch = tuple(t.to(device, non_blocking=True) for t in next(batches))  # the same rows, read by step_batches
            lr = lr_at(step - 1, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss, logs = _accumulate(net, ddp, loss_fn, batch, cfg.micro_batch, device, seed * 1_000_003 + step + rank * 1_000_000_007)
            if cfg.grad_clip:
                clip_gradients(model, cfg.grad_clip)
            mark.updating()  # from here to mark.done the weights are neither step - 1's nor step's
            optimizer.step()
            if ema:
                ema.update(model, step)
            for snap in snapshots:
                if step == snap.at:
                    snap.module.load_state_dict((ema.model if ema else model).state_dict())
            watch.add(loss, step)
            mark.done(step)
            logging = step % cfg.log_every == 0 or step == cfg.steps
            evaluating = step % cfg.eval_every == 0 or step == cfg.steps
            saving = step % cfg.checkpoint_every == 0 or step == cfg.steps
            # One process stops at the step it was asked to; under torchrun the ranks agree on a stop
            # at the next read (at most log_every steps on), so that they all save the same step.
            stopping = world == 1 and stop.requested
            if logging or evaluating or saving or stopping:  # a read before every save: no checkpoint of a diverged model
                loss_value, stopping = _read_loss(watch, stop, world, read_from, step, cfg)
                read_from = step + 1
            report.update(step, items=len(rows) * world, loss=loss_value)
            items += len(rows) * world
            if logging:
                log.write(json.dumps({"step": step, "loss": loss_value, "lr": lr, **_floats(logs)}) + "\n")
                log.flush()
                now = time.perf_counter()
                track.scalars("train", {"loss": loss_value, "lr": lr, "images_per_second": items / max(now - since, 1e-9),
                                        **_floats(logs)}, step)
                since, items = now, 0
            if evaluations and evaluating and rank == 0:
                eval_model = ema.model if ema else model
                eval_model.eval()
                metrics = {}
                before = pictures(run.dir)
                with torch.no_grad(), autocast(device):
                    for evaluation in evaluations:
                        metrics.update(evaluation(eval_model, step) or {})
                log.write(json.dumps({"step": step, "eval": metrics}) + "\n")
                log.flush()
                track.scalars("eval", metrics, step)
                track.images(written(before, pictures(run.dir)), step)
                report.print(f"step {step}: {format_metrics(metrics)}")
            if saving:
                save(step)
            if stopping and step < cfg.steps:  # at the last step the run is complete anyway; every rank stops together
                save(step)
                distributed.barrier()
                raise TrainingInterrupted(f"interrupted at step {step}/{cfg.steps}; saved {run.checkpoint}")
    track.close()
    if rank == 0:
        loss_curve(run.metrics, run.dir / "loss.png")
    distributed.barrier()  # the checkpoint is on disk before any rank reads it back
    final = (ema.model if ema else model).eval()
    return TrainResult(run, final, step, time.perf_counter() - t0, loss_value, metrics)


class SaveOnError:
    """Around the loop: after an exception that is not a VdError (an out-of-memory, a CUDA error, a
    bug), save the last whole step if the checkpoint is older and the model is sane, and say what
    was saved in a note on the exception ("vd: ..."), which the CLI prints. The exception goes on.

    A whole step is one whose update (optimizer, EMA, snapshots) completed: an exception in the
    loss, the backward pass or clipping leaves the previous step's weights, which are saved; one
    inside the update leaves a mix of two steps, which is never saved. Sane: no loss since the
    last read was NaN or inf and every weight is finite. Only rank 0 saves (``save_resumable``).
    """

    def __init__(self, save: Callable[[int], None], watch: LossWatch, model: nn.Module, checkpoint, start: int):
        self.save, self.watch, self.model, self.checkpoint = save, watch, model, checkpoint
        self.last, self.half = start, False

    def updating(self) -> None:
        self.half = True

    def done(self, step: int) -> None:
        self.last, self.half = step, False

    def __enter__(self) -> SaveOnError:
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if isinstance(error, Exception) and not isinstance(error, VdError) and distributed.is_main():
            error.add_note("vd: " + self._rescue())
        return False

    def _saved(self) -> str:
        if not self.checkpoint.is_file():
            return "no checkpoint was saved"
        return f"{self.checkpoint} holds step {json.loads(read_header(self.checkpoint)['meta'])['step']}"

    def _rescue(self) -> str:
        try:
            saved = json.loads(read_header(self.checkpoint)["meta"])["step"] if self.checkpoint.is_file() else 0
            if self.half:
                return f"it struck during the update of step {self.last + 1}, so that step was not saved; {self._saved()}"
            if self.last <= saved:
                return self._saved()
            _, bad_step, _ = self.watch.read() if self.watch.loss is not None else (0.0, 0, 0.0)
            if bad_step or not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                return f"the loss or the weights were not finite at step {self.last}, so it was not saved; {self._saved()}"
            self.save(self.last)
            return f"saved step {self.last} to {self.checkpoint} (--resume continues from it)"
        except Exception as e:  # a broken device, a full disk: what was on disk stays
            return f"could not save step {self.last} ({type(e).__name__}: {str(e)[:120]})"


def _read_loss(watch: LossWatch, stop: StopFlag, world: int, since: int, step: int, cfg: TrainConfig) -> tuple[float, bool]:
    """Read the loss (one host sync; under torchrun one collective, which also agrees on a stop) and
    raise if it was not finite at any step since the last read. Returns (loss, stopping)."""
    if world == 1:
        loss_value, bad_step, bad_loss = watch.read()
        stopping = stop.requested
    else:  # the whole batch's loss, whether any rank saw a non-finite one, whether any rank was asked to stop
        flags = torch.stack([watch.loss, (watch.bad_step > 0).float(), torch.tensor(float(stop.requested), device=watch.loss.device)])
        loss_value, any_bad, any_stop = distributed.mean(flags).tolist()
        bad_step, bad_loss, stopping = (step if any_bad > 0 else 0), float("nan"), any_stop > 0
    if bad_step:
        where = f"at step {bad_step}" if world == 1 else f"between steps {since} and {step}"
        raise VdError(f"the loss became {bad_loss if world == 1 else 'nan or inf'} {where}; "
                      f"lower train.lr (now {cfg.lr:g}) or raise train.warmup_steps")
    return loss_value, stopping


def _init_from(model: nn.Module, source: str, kind: str, extra: dict | None, quiet: bool):
    """``finetune.init_from``, saying what it loaded unless quiet; returns the source checkpoint."""
    path, note = init_from(model, source, kind, extra)
    if not quiet:
        console.print(note, soft_wrap=True, highlight=False)
    return path


def _accumulate(net: nn.Module, ddp: nn.Module | None, loss_fn: LossFn, batch: tuple[torch.Tensor, ...], micro: int | None,
                device: torch.device, step_seed: int) -> tuple[torch.Tensor, dict]:
    """Forward and backward of one step's batch, in micro-batches of ``micro`` rows (``accumulate.py``):
    each micro-batch's loss scaled by its share of the rows, so the gradients summed in ``.grad`` are
    the whole batch's; DDP all-reduces only at the last one. Returns the batch's loss and logs."""
    rows = len(batch[0])
    parts = micro_batches(rows, micro)
    total, logs = None, {}
    for i, part in enumerate(parts):
        if len(parts) > 1:  # every micro-batch replays the step's draws from the start and keeps its own rows of them
            torch.manual_seed(step_seed)
        last = i == len(parts) - 1
        sync = contextlib.nullcontext() if last or ddp is None else ddp.no_sync()
        share = (part.stop - part.start) / rows
        with sync:
            with autocast(device), whole_batch_draws(part, rows):
                loss, part_logs = loss_fn(net, tuple(t[part] for t in batch))
            (loss * share if len(parts) > 1 else loss).backward()
        if len(parts) == 1:
            return loss, part_logs
        total = loss.detach() * share if total is None else total + loss.detach() * share
        for k, v in part_logs.items():  # the batch's mean of a logged mean
            logs[k] = logs.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else v) * share
    return total, logs


def _floats(logs: dict) -> dict:
    """A loss_fn's logs may be tensors (no host sync each step): numbers for metrics.jsonl."""
    return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in logs.items()}


def _truncate_metrics(run: Run, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so the curve has no doubles."""
    if not run.metrics.is_file():
        return
    keep = [line for line in run.metrics.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    run.metrics.write_text("".join(line + "\n" for line in keep))

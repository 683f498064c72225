"""Diffusion as a small library: noise schedules, the forward process, the loss, and samplers.

Conventions (one place for all of them):
- Timesteps t = 0 ... T-1. β_t and ᾱ_t = ∏_{s≤t} (1 − β_s) are float64 on the CPU; formulas run
  in float64 per step and cast back to the tensor's dtype. "After the last step" has ᾱ = 1.
- The forward process (Ho et al. 2020, eq. 4): q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), so
  x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε.
- A network predicts ε (Ho et al. 2020) or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022,
  sec. 4). ``predict_x0`` and ``predict_eps`` convert either into x̂_0 and ε̂; every sampler
  uses them, so both parameterisations share one implementation of each update.
- Samplers take any ``model_fn(x_t, t) -> prediction`` with t a LongTensor [B]; conditioning is
  closed over by the caller. Classifier-free guidance (Ho & Salimans 2022, eq. 6) is such a
  model_fn: ``guided(net, y, w, null_class)``.
- DDPM (Ho et al. 2020, eq. 6-7): the posterior q(x_{t'} | x_t, x̂_0) with mean
  μ̃ = √ᾱ_{t'} β'_t / (1 − ᾱ_t) x̂_0 + √(1 − β'_t) (1 − ᾱ_{t'}) / (1 − ᾱ_t) x_t and variance
  β̃_t = (1 − ᾱ_{t'}) / (1 − ᾱ_t) β'_t, where β'_t = 1 − ᾱ_t / ᾱ_{t'} (= β_t for t' = t − 1,
  so all T steps are exactly eq. 7); no noise at the last step.
- DDIM (Song et al. 2021, eq. 12): x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε̂ + σ_t z with
  σ_t = η √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t'}) (eq. 16); η = 0 is deterministic, and
  run backwards it is an inversion (``ddim_invert``). S steps use t_i = i·(T // S), i = S−1 … 0.
- One loop, ``sample``, serves every command: it can start at any timestep (SDEdit, Meng et al.
  2022: noise an input to t_start with ``add_noise`` and denoise from there) and calls
  ``callback(i, t, x, x0_pred)`` after every step; a callback that returns a tensor replaces x
  (RePaint, Lugmayr et al. 2022: put back the known region, noised to the current level).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from pydantic import Field

from vdcli.config import Section

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


class DiffusionConfig(Section):
    schedule: Literal["linear", "scaled_linear", "cosine"] = "linear"
    timesteps: int = Field(1000, ge=2)  # T
    prediction: Literal["eps", "v"] = "eps"
    min_snr_gamma: float | None = Field(None, gt=0)  # Hang et al. 2023; 5 is their choice


# --- schedules --------------------------------------------------------------------------------


def make_betas(schedule: str, T: int) -> torch.Tensor:
    """β_0 ... β_{T−1} in float64."""
    if schedule == "linear":  # Ho et al. 2020, sec. 4
        return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    if schedule == "scaled_linear":  # Rombach et al. 2022 (Stable Diffusion): √β linear
        return torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    if schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17: ᾱ_t = f(t) / f(0), s = 0.008
        s = 0.008
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {schedule!r}; expected linear, scaled_linear or cosine")


class NoiseSchedule:
    def __init__(self, schedule: str = "linear", timesteps: int = 1000, prediction: str = "eps"):
        self.betas = make_betas(schedule, timesteps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # ᾱ_t
        self.T = timesteps
        self.prediction = prediction

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> NoiseSchedule:
        return cls(cfg.schedule, cfg.timesteps, cfg.prediction)

    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for each t (t < 0 means after the last step: ᾱ = 1), shaped to broadcast over ``like``."""
        t = torch.as_tensor(t).long().cpu().reshape(-1)
        a = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), dtype=torch.float64))
        return a.view(-1, *([1] * (like.ndim - 1))).to(like.device)  # float64, (B, 1, 1, 1)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t.long().cpu()]
        return a / (1 - a)


# --- the forward process and what the network learns -------------------------------------------


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.double()


def add_noise(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a draw from q(x_t | x_0)."""
    a = schedule.alpha_bar(t, x0)
    return (a.sqrt() * _f64(x0) + (1 - a).sqrt() * _f64(eps)).to(x0.dtype)


def target(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network should output: ε, or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0."""
    if schedule.prediction == "eps":
        return eps
    a = schedule.alpha_bar(t, x0)
    return (a.sqrt() * _f64(eps) - (1 - a).sqrt() * _f64(x0)).to(x0.dtype)


def predict_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """x̂_0 from x_t and the network output (DDIM eq. 12's "predicted x_0")."""
    a = schedule.alpha_bar(t, x_t)
    if schedule.prediction == "eps":
        x0 = (_f64(x_t) - (1 - a).sqrt() * _f64(output)) / a.sqrt()
    else:
        x0 = a.sqrt() * _f64(x_t) - (1 - a).sqrt() * _f64(output)
    return x0.to(x_t.dtype)


def predict_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """ε̂ from x_t and the network output."""
    if schedule.prediction == "eps":
        return output
    a = schedule.alpha_bar(t, x_t)
    return ((1 - a).sqrt() * _f64(x_t) + a.sqrt() * _f64(output)).to(x_t.dtype)


def diffusion_loss(
    model_fn: ModelFn, x0: torch.Tensor, schedule: NoiseSchedule, min_snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """E_{t, ε} w(t) ||target − model(x_t, t)||², t uniform in 0 … T−1, ε ~ N(0, I).

    With min_snr_gamma, w(t) = min(SNR(t), γ) / SNR(t) for ε and min(SNR(t), γ) / (SNR(t) + 1)
    for v (Hang et al. 2023, eq. 8): the easy, low-noise steps stop dominating the gradient.
    """
    b = x0.shape[0]
    t = torch.randint(0, schedule.T, (b,), generator=generator, device=_gen_device(generator)).to(x0.device)
    eps = _randn(x0.shape, generator, x0)
    output = model_fn(add_noise(schedule, x0, eps, t), t)
    per_sample = (output.float() - target(schedule, x0, eps, t).float()).pow(2).flatten(1).mean(1)  # (B,)
    if min_snr_gamma:
        per_sample = per_sample * snr_weight(schedule, t, min_snr_gamma).to(per_sample)
    return per_sample.mean()


def snr_weight(schedule: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    snr = schedule.snr(t)
    clipped = snr.clamp(max=gamma)
    return clipped / snr if schedule.prediction == "eps" else clipped / (snr + 1)


# --- sampling ----------------------------------------------------------------------------------


def _gen_device(generator: torch.Generator | None) -> torch.device | None:
    return generator.device if generator is not None else None


def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Noise from ``generator`` (drawn on its device, so a CPU generator gives the same numbers on any device)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like.device, like.dtype)


def timesteps(steps: int, T: int) -> list[int]:
    """t_i = i·(T // S) for i = S−1 … 0: the descending timesteps of an S-step run."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T = {T}, got {steps}")
    return [i * (T // steps) for i in range(steps - 1, -1, -1)]


def ddim_step(schedule, x_t, t, t_prev, output, eta=0.0, generator=None):
    """One DDIM update from t to t_prev (< 0: to the data). Returns (x_{t_prev}, x̂_0)."""
    a_t, a_prev = schedule.alpha_bar(t, x_t), schedule.alpha_bar(t_prev, x_t)
    x0 = predict_x0(schedule, x_t, t, output)
    eps = predict_eps(schedule, x_t, t, output)
    sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()  # eq. 16
    x_prev = a_prev.sqrt() * _f64(x0) + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * _f64(eps)  # eq. 12
    if eta > 0 and t_prev >= 0:
        x_prev = x_prev + sigma * _f64(_randn(x_t.shape, generator, x_t))
    return x_prev.to(x_t.dtype), x0


def ddpm_step(schedule, x_t, t, t_prev, output, eta=1.0, generator=None):
    """One ancestral step: a draw from the posterior q(x_{t_prev} | x_t, x̂_0). Returns (x_{t_prev}, x̂_0)."""
    a_t, a_prev = schedule.alpha_bar(t, x_t), schedule.alpha_bar(t_prev, x_t)
    x0 = predict_x0(schedule, x_t, t, output)
    beta = 1 - a_t / a_prev  # β_t when t_prev = t − 1
    mean = a_prev.sqrt() * beta / (1 - a_t) * _f64(x0) + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * _f64(x_t)  # eq. 7
    if t_prev >= 0:
        variance = (1 - a_prev) / (1 - a_t) * beta  # β̃_t
        mean = mean + variance.sqrt() * _f64(_randn(x_t.shape, generator, x_t))
    return mean.to(x_t.dtype), x0


STEPS = {"ddim": ddim_step, "ddpm": ddpm_step}


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    start_t: int | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Denoise x (pure noise x_T, or with ``start_t`` an input already noised to that level).

    DDPM with steps = T is Ho et al.'s sampler; with fewer steps it strides like DDIM. After
    each step, ``callback(i, t, x, x0_pred)`` may return a replacement for x.
    """
    step = STEPS[sampler]
    ts = timesteps(steps, schedule.T)
    if start_t is not None:
        ts = [t for t in ts if t <= start_t]
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        output = model_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        x, x0 = step(schedule, x, t, t_prev, output, eta=eta, generator=generator)
        if callback is not None:
            replaced = callback(i, t, x, x0)
            if replaced is not None:
                x = replaced
    return x


@torch.no_grad()
def ddim_invert(model_fn: ModelFn, x0: torch.Tensor, schedule: NoiseSchedule, steps: int = 50) -> torch.Tensor:
    """Run DDIM (η = 0) backwards, from data x_0 to noise x_T, along the timesteps of ``sample``.

    Each step from t to the next, noisier t' uses ε̂ = ε(x_t, t') in place of the unknown
    ε(x_{t'}, t'); the error shrinks with the step size, and sampling with the same steps
    brings x_T back to (nearly) x_0.
    """
    ts = timesteps(steps, schedule.T)[::-1]
    x, t = x0, -1
    for t_next in ts:
        output = model_fn(x, torch.full((x.shape[0],), t_next, device=x.device, dtype=torch.long))
        eps = predict_eps(schedule, x, t_next, output)
        a_t, a_next = schedule.alpha_bar(t, x), schedule.alpha_bar(t_next, x)
        x0_pred = (_f64(x) - (1 - a_t).sqrt() * _f64(eps)) / a_t.sqrt()
        x = (a_next.sqrt() * x0_pred + (1 - a_next).sqrt() * _f64(eps)).to(x0.dtype)  # eq. 12 with σ = 0
        t = t_next
    return x


def guided(net, y: torch.Tensor, w: float, null_class: int) -> ModelFn:
    """Classifier-free guidance: out = out_uncond + w (out_cond − out_uncond), in one batched call.

    ``net(x, t, y)`` is the conditional network; class ``null_class`` is "no condition". w = 1 is
    the plain conditional model (and skips the unconditional half); labels equal to null_class
    are unconditional whatever w is.
    """

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if w == 1.0:
            return net(x, t, y)
        null = torch.full_like(y, null_class)
        cond, uncond = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        return uncond + w * (cond - uncond)

    return model_fn


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between two tensors (as flat vectors); lerp when they are parallel."""
    fa, fb = a.flatten().double(), b.flatten().double()
    cos = (fa @ fb / (fa.norm() * fb.norm() + 1e-12)).clamp(-1, 1)
    theta = torch.arccos(cos)
    if theta.abs() < 1e-4:
        return torch.lerp(a, b, alpha)
    out = (torch.sin((1 - alpha) * theta) * fa + torch.sin(alpha * theta) * fb) / torch.sin(theta)
    return out.view_as(a).to(a.dtype)

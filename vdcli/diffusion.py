"""Diffusion as a small library: noise schedules, the forward process, the loss, and samplers.

Conventions, in one place:

- Timesteps are t = 0 … T−1. β_t and ᾱ_t = ∏_{s≤t} (1 − β_s) are stored in float64 on the CPU
  (Ho et al. 2020, "DDPM", sec. 2). "After the last step", t = −1, has ᾱ = 1: the clean data.
- Precision: per-step coefficients (√ᾱ_t, σ_t, …) are computed in float64 on the CPU, where they
  cost nothing, then moved to the tensor's device in its working precision (float32, or
  float64 for float64 tensors, never half); results are cast back to the tensor's dtype.
- Forward process (DDPM eq. 4): q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), i.e.
  x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε with ε ~ N(0, I)                                  ``add_noise``
- The network predicts ε (DDPM eq. 14) or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022,
  sec. 4 and appendix D). Either output converts to the predicted clean sample and noise:
      ε-prediction: x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t    (Song et al. 2021, "DDIM", eq. 12)
      v-prediction: x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v̂,   ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂
  ``predict_x0`` and ``predict_eps`` are the only implementation; every sampler calls them.
- Loss: E_{t, ε} w(t) ‖target − model(x_t, t)‖², t uniform, with min-SNR-γ weights
  (Hang et al. 2023, sec. 3.4) w(t) = min(SNR(t), γ) / SNR(t) for ε and
  min(SNR(t), γ) / (SNR(t) + 1) for v, where SNR(t) = ᾱ_t / (1 − ᾱ_t).
- Samplers take any ``model_fn(x_t, t) -> prediction`` with t a LongTensor [B]; conditioning is
  closed over by the caller, and guidance (classifier-free, Ho & Salimans 2022, eq. 6, or
  autoguidance, Karras et al. 2024) is just such a model_fn (``conditioning.guided``).
- DDPM (DDPM eq. 6-7): x_{t−1} ~ q(x_{t−1} | x_t, x̂_0) = N(μ̃_t, β̃_t I) with
      μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) x̂_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) x_t,
      β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) β_t,
  and no noise at the last step. Between non-adjacent timesteps t > t' the same posterior holds
  with β_t replaced by 1 − ᾱ_t / ᾱ_{t'}, which is how DDPM runs with fewer than T steps.
- DDIM (DDIM eq. 12 and 16): from t to the previous timestep t' of the run,
      x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε̂ + σ_t z,
      σ_t = η √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t'});
  η = 0 is deterministic, η = 1 is the DDPM posterior above. With η = 0 the same update run
  towards more noise inverts the sampler (``ddim_invert``).
- DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): the probability-flow ODE
  solved in λ_t = log(α_t / σ_t), with α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t), on the data prediction.
  With h_i = λ_{t_i} − λ_{t_{i−1}} and r_i = h_{i−1} / h_i,
      x_{t_i} = (σ_{t_i} / σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h_i} − 1) D_i,
      D_i = (1 + 1 / (2 r_i)) x̂_0(t_{i−1}) − 1 / (2 r_i) x̂_0(t_{i−2})      (their eq. 10 and alg. 2),
  and D_i = x̂_0(t_{i−1}) (first order, which is DDIM with η = 0) at the first step of a run,
  where there is no earlier x̂_0, and at the last, which goes to σ = 0 and so returns x̂_0.
- Euler, Heun (Karras et al. 2022, "EDM", Algorithm 1), Euler ancestral and DPM-Solver++(2M)
  SDE (k-diffusion's) step in σ-space, σ_t = √((1 − ᾱ_t) / ᾱ_t), x̃ = x_t / √ᾱ_t, D = x̂_0:
  vdcli/samplers.py has their equations, the spacings', and why every σ is a timestep's.
- Timesteps of an S-step run (``sampler_timesteps``) by ``spacing``, by default as diffusers
  places them: DDIM and DDPM "leading", t_i = i·(T // S) for i = S−1 … 0; DPM-Solver++(2M)
  "linspace", round(linspace(0, T − 1, S + 1)) reversed without its last entry; the σ-space
  samplers "trailing" (Lin et al. 2024, table 2). "karras" is EDM eq. 5 (ρ = 7), by name.
- One loop, ``sample``, serves every command. It can start at any timestep: SDEdit
  (Meng et al. 2022) noises an input to t_start with ``add_noise`` and denoises from there.
  After every step it calls ``callback(i, t_next, x, x0_pred)`` with the timestep x is now at
  (−1 after the last step); a callback that returns a tensor replaces x, which is how RePaint
  (Lugmayr et al. 2022) puts back the known region. x is x_t there for every sampler.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, get_args

import torch
from pydantic import Field

from vdcli import samplers as sigma_space
from vdcli.config import Section
from vdcli.samplers import SPACINGS, spaced_timesteps, timesteps  # noqa: F401  (SPACINGS, timesteps: vd's API here)

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]
# Each set of choices is spelled once, in its Literal; the tuples, the recipe (recipe.py) and the CLI's checks derive from it.
Sampler = Literal["ddim", "ddpm", "dpmpp-2m", "euler", "euler-a", "heun", "dpmpp-2m-sde"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
Schedule = Literal["linear", "scaled_linear", "cosine"]  # make_betas
SCHEDULES: tuple[str, ...] = get_args(Schedule)
Prediction = Literal["eps", "v"]  # what the network outputs (ε or v)
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
DEFAULT_SPACING = {"ddim": "leading", "ddpm": "leading", "dpmpp-2m": "linspace"}  # the σ-space samplers: "trailing"


class DiffusionConfig(Section):
    schedule: Schedule = "linear"
    timesteps: int = Field(1000, ge=2)  # T
    prediction: Prediction = "eps"
    min_snr_gamma: float | None = Field(None, gt=0)  # Hang et al. 2023 use γ = 5, the MNIST recipe 1; None: plain MSE


# --- schedules --------------------------------------------------------------------------------


def make_betas(schedule: Schedule, T: int) -> torch.Tensor:
    """β_0 … β_{T−1}, float64."""
    if schedule == "linear":  # DDPM sec. 4, scaled for T = 1000
        return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    if schedule == "scaled_linear":  # Rombach et al. 2022 (Stable Diffusion): √β is linear
        return torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    if schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17: ᾱ_t = f(t) / f(0) with t running 1 … T
        s = 0.008
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        # β_t = 1 − ᾱ_t / ᾱ_{t−1}, clipped (their sec. 3.2) so the last steps are not singular
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {schedule!r}; expected {', '.join(SCHEDULES[:-1])} or {SCHEDULES[-1]}")


class NoiseSchedule:
    """β_t and ᾱ_t of one schedule, and what the network predicts (ε or v)."""

    def __init__(self, schedule: Schedule = "linear", timesteps: int = 1000, prediction: Prediction = "eps"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected {', '.join(PREDICTIONS[:-1])} or {PREDICTIONS[-1]}")
        self.T = timesteps
        self.prediction = prediction
        self.betas = make_betas(schedule, timesteps)  # (T,) float64
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)  # ᾱ_t, (T,) float64

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> NoiseSchedule:
        return cls(cfg.schedule, cfg.timesteps, cfg.prediction)

    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor | None = None) -> torch.Tensor:
        """ᾱ_t for an int or a batch of t (t = −1: after the last step, ᾱ = 1).

        float64 (B,) on the CPU; with ``like``, shaped (B, 1, …, 1) to broadcast over it, on its
        device and in its working precision.
        """
        t = torch.as_tensor(t).reshape(-1).long().cpu()
        a = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], 1.0)  # (B,)
        return a if like is None else _shaped(a, like)

    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t), float64 (B,) on the CPU."""
        a = self.alpha_bar(t)
        return a / (1 - a)

    def lam(self, t: torch.Tensor | int) -> torch.Tensor:
        """λ_t = log(α_t / σ_t) = ½ log SNR(t), DPM-Solver's time variable, float64 (B,) on the CPU."""
        return 0.5 * self.snr(t).log()

    def sigma(self, t: torch.Tensor | int) -> torch.Tensor:
        """σ_t = √((1 − ᾱ_t) / ᾱ_t) = SNR(t)^(−1/2), the σ-space samplers' level (0 at t = −1), float64 (B,)."""
        a = self.alpha_bar(t)
        return ((1 - a) / a).sqrt()


def _working_dtype(x: torch.Tensor) -> torch.dtype:
    # Half-precision x is updated in float32: the x̂_0 conversion divides by √ᾱ_t ≈ 0.006 near t = T.
    return torch.promote_types(x.dtype, torch.float32)


def _per_sample(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """A float64 coefficient, (B,) or (1,), as (B, 1, …, 1) on like's device in its working precision.

    One coefficient for the whole batch (a sampler's step) on a float32/float64 ``like`` is
    returned as a Python number instead, which the multiplication rounds to like's precision just
    the same: no host-to-device copy, which on CUDA would wait for the queued work at every step.
    """
    if c.numel() == 1 and _working_dtype(like) == like.dtype:
        return c.item()  # a CPU tensor: no sync
    return _shaped(c, like)


def _shaped(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.to(like.device, _working_dtype(like)).view(-1, *([1] * (like.ndim - 1)))


# --- the forward process and what the network learns -------------------------------------------


def add_noise(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε: a draw from q(x_t | x_0) (DDPM eq. 4)."""
    a = schedule.alpha_bar(t)
    return (_per_sample(a.sqrt(), x0) * x0 + _per_sample((1 - a).sqrt(), x0) * eps).to(x0.dtype)


def target(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """What the network should output at x_t = add_noise(x0, eps, t): ε, or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0."""
    if schedule.prediction == "eps":
        return eps
    a = schedule.alpha_bar(t)
    return (_per_sample(a.sqrt(), x0) * eps - _per_sample((1 - a).sqrt(), x0) * x0).to(x0.dtype)


def predict_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor | int, output: torch.Tensor,
               ) -> torch.Tensor:
    """x̂_0 from x_t and the network's output at t (DDIM eq. 12's "predicted x_0")."""
    a = schedule.alpha_bar(t)
    if schedule.prediction == "eps":
        x0 = (x_t - _per_sample((1 - a).sqrt(), x_t) * output) / _per_sample(a.sqrt(), x_t)
    else:
        x0 = _per_sample(a.sqrt(), x_t) * x_t - _per_sample((1 - a).sqrt(), x_t) * output
    return x0.to(x_t.dtype)


def predict_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor | int, output: torch.Tensor,
                ) -> torch.Tensor:
    """ε̂ from x_t and the network's output at t."""
    if schedule.prediction == "eps":
        return output
    a = schedule.alpha_bar(t)
    return (_per_sample((1 - a).sqrt(), x_t) * x_t + _per_sample(a.sqrt(), x_t) * output).to(x_t.dtype)


def snr_weight(schedule: NoiseSchedule, t: torch.Tensor | int, gamma: float) -> torch.Tensor:
    """The min-SNR-γ loss weight (Hang et al. 2023), float64 (B,) on the CPU.

    Written for the loss on the network's own output: min(SNR, γ) / SNR for ε and
    min(SNR, γ) / (SNR + 1) for v, both equal to min(SNR, γ) times the loss on x̂_0.
    """
    snr = schedule.snr(t)
    return snr.clamp(max=gamma) / (snr if schedule.prediction == "eps" else snr + 1)


def diffusion_loss(
    model_fn: ModelFn,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    min_snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The training loss: mean over the batch of w(t) ‖target − model_fn(x_t, t)‖² / dim.

    t ~ U{0 … T−1} and ε ~ N(0, I) per sample, both from ``generator`` when given (drawn on its
    device, so a CPU generator gives the same draws for a model on any device). w(t) = 1
    unless ``min_snr_gamma`` is set. Conditioning is closed over: ``lambda x, t: net(x, t, y)``.
    """
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=_generator_device(generator))
    eps = _randn(x0.shape, generator, x0)
    output = model_fn(add_noise(schedule, x0, eps, t), t.to(x0.device))
    per_sample = (output.float() - target(schedule, x0, eps, t).float()).pow(2).flatten(1).mean(1)  # (B,)
    if min_snr_gamma is not None:
        per_sample = per_sample * snr_weight(schedule, t, min_snr_gamma).to(per_sample)
    return per_sample.mean()


# --- one step of each sampler ------------------------------------------------------------------


def _generator_device(generator: torch.Generator | None) -> torch.device | None:
    return generator.device if generator is not None else None


def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) noise on like's device and dtype, drawn on the generator's device: reproducible across devices.

    Drawn in float32, or in float64 for float64 tensors (as diffusers' ``randn_tensor`` does, so
    the float64 conformance references share their noise).
    """
    device = generator.device if generator is not None else like.device
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.randn(shape, generator=generator, device=device, dtype=dtype).to(like.device, like.dtype)


def ddim_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    output: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update from t to t_prev (−1: to the data). Returns (x_{t_prev}, x̂_0).

    With η = 0 nothing requires t_prev < t, so ``ddim_invert`` runs the same update upwards.
    """
    a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    # 1. predicted x_0 and the noise it implies, "predicted x_0" of eq. (12)
    x0_pred = predict_x0(schedule, x_t, t, output)
    eps = predict_eps(schedule, x_t, t, output)
    # 2. σ_t(η) of eq. (16): σ_t = η √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t'})
    #    (written as 0 for η = 0, because the formula is 0/0 when inverting from ᾱ_t = 1)
    sigma = torch.zeros_like(a_t)
    if eta > 0:
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
    # 3. eq. (12): x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε̂ + σ_t z
    #    (the clamp matters only for η > 1, where the direction term would turn imaginary)
    direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt()
    x_prev = _per_sample(a_prev.sqrt(), x_t) * x0_pred + _per_sample(direction, x_t) * eps
    if (sigma > 0).any():
        x_prev = x_prev + _per_sample(sigma, x_t) * _randn(x_t.shape, generator, x_t)
    return x_prev.to(x_t.dtype), x0_pred


def ddpm_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    output: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step, a draw from q(x_{t_prev} | x_t, x̂_0) (DDPM eq. 6-7). Returns (x_{t_prev}, x̂_0)."""
    a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    beta = 1 - a_t / a_prev  # exactly β_t when t_prev = t − 1; the strided step's β otherwise
    # 1. predicted x_0
    x0_pred = predict_x0(schedule, x_t, t, output)
    # 2. posterior mean, eq. (7): μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) x̂_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) x_t
    c_x0 = a_prev.sqrt() * beta / (1 - a_t)
    c_xt = (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)
    x_prev = _per_sample(c_x0, x_t) * x0_pred + _per_sample(c_xt, x_t) * x_t
    # 3. posterior variance, eq. (7): β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) β_t, which is 0 at the last step
    variance = (1 - a_prev) / (1 - a_t) * beta
    if (variance > 0).any():
        x_prev = x_prev + _per_sample(variance.sqrt(), x_t) * _randn(x_t.shape, generator, x_t)
    return x_prev.to(x_t.dtype), x0_pred


def dpmpp_2m_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    output: torch.Tensor,
    previous: tuple[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DPM-Solver++(2M) update from t to t_prev (−1: to the data). Returns (x_{t_prev}, x̂_0).

    ``previous`` is (the timestep before t, the x̂_0 predicted there), from this run's previous
    step; None makes the step first order. The step to the data is always first order: with
    σ = 0 the update is x̂_0 itself, as with diffusers' ``final_sigmas_type="zero"``.
    """
    x0_pred = predict_x0(schedule, x_t, t, output)
    if t_prev < 0:
        return x0_pred, x0_pred
    a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    lam_t, lam_prev = schedule.lam(t), schedule.lam(t_prev)
    h = lam_prev - lam_t  # > 0: λ grows towards the data
    # 1. D_i: x̂_0, or with the previous prediction the second-order combination of Algorithm 2
    d = x0_pred
    if previous is not None:
        t_before, x0_before = previous
        r = (lam_t - schedule.lam(t_before)) / h  # r_i = h_{i−1} / h_i
        d = _per_sample(1 + 1 / (2 * r), x_t) * x0_pred - _per_sample(1 / (2 * r), x_t) * x0_before
    # 2. x_{t_i} = (σ_{t_i} / σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h} − 1) D_i
    ratio = ((1 - a_prev) / (1 - a_t)).sqrt()
    x_prev = _per_sample(ratio, x_t) * x_t - _per_sample(a_prev.sqrt() * torch.expm1(-h), x_t) * d
    return x_prev.to(x_t.dtype), x0_pred


# --- the sampling loop -------------------------------------------------------------------------


def sampler_timesteps(sampler: str, steps: int, T: int | NoiseSchedule, spacing: str | None = None) -> list[int]:
    """The timesteps a ``sampler`` run of S = ``steps`` steps visits, descending (see the module docstring).

    ``spacing`` None is the sampler's own. T is the number of training timesteps, or the schedule,
    which Karras spacing needs: it places noise levels, not timesteps.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    sigmas = T.sigma(torch.arange(T.T)) if isinstance(T, NoiseSchedule) else None
    return spaced_timesteps(spacing or DEFAULT_SPACING.get(sampler, "trailing"), steps, T if sigmas is None else T.T, sigmas)


def strength_start(sampler: str, steps: int, T: int | NoiseSchedule, strength: float, spacing: str | None = None):
    """Where image-to-image (SDEdit, Meng et al. 2022, sec. 3) starts for a ``strength`` in [0, 1].

    The run keeps the last k = round(strength · S) timesteps of the S-step run, as diffusers'
    img2img pipelines do, and returns the first of them: the input's latent is noised to that
    level and denoised from there. strength 1 keeps the whole run (returns None: start from pure
    noise, which is plain sampling); strength 0 keeps none (returns −1: the input unchanged).
    The start grows with the strength, so more of the input's shape is lost.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    ts = sampler_timesteps(sampler, steps, T, spacing)
    k = round(strength * len(ts))
    if k == len(ts):
        return None
    return ts[len(ts) - k] if k > 0 else -1


def _batch_t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)  # (B,)


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    sampler: Sampler = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    start_t: int | None = None,
    callback: Callback | None = None,
    spacing: str | None = None,
) -> torch.Tensor:
    """Denoise x to a sample of the data: the one sampling loop.

    x is pure noise x_T, treated as the level of the run's first timestep; or, with ``start_t``,
    an input already noised to that level (SDEdit): the run is then start_t followed by the
    timesteps of the S-step run below it. DDPM with steps = T is Ho et al.'s sampler; with
    fewer steps it strides like DDIM (and equals DDIM with η = 1). Only DDIM uses ``eta``;
    Euler, Heun and DPM-Solver++(2M) are deterministic; Euler ancestral and DPM-Solver++(2M) SDE
    (η = 1) draw their noise from ``generator``. Both DPM-Solvers restart at first order after
    ``start_t``. ``spacing`` places the steps (``sampler_timesteps``; None: the sampler's own).

    After step i (i counts from 0 in this run) ``callback(i, t_next, x, x0_pred)`` sees the new
    x, now at timestep t_next (−1, clean, after the last step), and the x̂_0 it came from;
    returning a tensor replaces x, returning None keeps it.
    """
    ts = sampler_timesteps(sampler, steps, schedule, spacing)
    if start_t is not None:
        if not 0 <= start_t < schedule.T:
            raise ValueError(f"start_t must be between 0 and T − 1 = {schedule.T - 1}, got {start_t}")
        ts = [start_t] + [t for t in ts if t < start_t]
    previous = None  # the multistep solvers' memory of the step before: (t, x̂_0), or (σ_t, D) in σ-space
    for i, (t, t_prev) in enumerate(zip(ts, ts[1:] + [-1])):
        output = model_fn(x, _batch_t(t, x))
        if sampler == "ddim":
            x, x0_pred = ddim_step(schedule, x, t, t_prev, output, eta, generator)
        elif sampler == "ddpm":
            x, x0_pred = ddpm_step(schedule, x, t, t_prev, output, generator)
        elif sampler == "dpmpp-2m":
            x, x0_pred = dpmpp_2m_step(schedule, x, t, t_prev, output, previous)
            previous = (t, x0_pred)
        else:  # σ-space (vdcli/samplers.py); Heun asks the network again, at t_prev
            x0_pred, a_t, a_prev = predict_x0(schedule, x, t, output), schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
            noise = _randn(x.shape, generator, x) if sampler in sigma_space.STOCHASTIC and t_prev >= 0 else None
            at_t_prev = lambda x_next: predict_x0(schedule, x_next, t_prev, model_fn(x_next, _batch_t(t_prev, x)))  # noqa: E731
            x, previous = sigma_space.step(sampler, x, a_t.item(), a_prev.item(), x0_pred, previous, noise, at_t_prev)
        if callback is not None:
            replaced = callback(i, t_prev, x, x0_pred)
            if replaced is not None:
                x = replaced
    return x


@torch.no_grad()
def ddim_invert(model_fn: ModelFn, x0: torch.Tensor, schedule: NoiseSchedule, steps: int = 50) -> torch.Tensor:
    """Deterministic DDIM (η = 0) run backwards, from data x_0 to the noise x_T that ``sample``
    with the same steps maps back to (nearly) x_0.

    The step from t up to t' needs the prediction at (x_t, t'), where x_{t'} is not known yet,
    so the network is asked at (x_t, t') instead: a first-order error that shrinks with the step
    size. (At t = −1, the data, there is no network output to use instead.)
    """
    ts = [-1] + timesteps(steps, schedule.T)[::-1]  # ascending: the data, then the run's timesteps
    x = x0
    for t, t_next in zip(ts, ts[1:]):
        x, _ = ddim_step(schedule, x, t, t_next, model_fn(x, _batch_t(t_next, x)))
    return x


# --- walks through noise ----------------------------------------------------------------------


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation from a (alpha = 0) to b (alpha = 1), each taken as one flat vector.

    Between two Gaussian noises it keeps the norm a sampler expects, where lerp would shrink it
    in the middle. Falls back to lerp when a and b are (nearly) parallel.
    """
    dtype = _working_dtype(a)
    fa, fb = a.flatten().to(dtype), b.flatten().to(dtype)
    ua, ub = fa / fa.norm(), fb / fb.norm()
    # θ = 2·atan2(‖û_a − û_b‖, ‖û_a + û_b‖) is accurate at every angle; arccos(cos θ) is not near 0.
    theta = 2 * torch.atan2((ua - ub).norm(), (ua + ub).norm())
    if theta < 1e-4:
        return torch.lerp(a, b, alpha)
    out = (torch.sin((1 - alpha) * theta) * fa + torch.sin(alpha * theta) * fb) / torch.sin(theta)
    return out.view_as(a).to(a.dtype)

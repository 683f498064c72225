"""The k-diffusion samplers: Euler, Heun, Euler ancestral and DPM-Solver++(2M) SDE, in σ-space.

These are the samplers users know from k-diffusion and AUTOMATIC1111 ("Euler", "Euler a",
"Heun", "DPM++ 2M SDE Karras"). They are written, as Karras et al. 2022 ("Elucidating the
Design Space of Diffusion-Based Generative Models", EDM) write every sampler, on the denoiser
D(x̃; σ) ≈ E[x_0 | x̃] in σ-space, where the noisy sample is x̃ = x_0 + σ n with n ~ N(0, I).
vd's loop (``vdcli.diffusion.sample``) keeps x in the variance-preserving convention
x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε; the two are one change of variables (EDM sec. 2 and table 1,
k-diffusion's ``DiscreteEpsDDPMDenoiser``):

    σ_t = √((1 − ᾱ_t) / ᾱ_t),    x̃ = x_t / √ᾱ_t = √(σ_t² + 1) x_t,    D(x̃; σ_t) = x̂_0(x_t, t),

so the network is asked, as always, at (x_t, t), and its x̂_0 (``diffusion.predict_x0``) is D.
A run starts from x_T itself, x̃ = √(σ_max² + 1) n, as vd's other samplers do (k-diffusion, and
diffusers' Euler with trailing spacing, start from σ_max n: smaller by a factor 1 − 1 / (2σ_max²)).
The ancestral samplers' z is drawn i.i.d. from the loop's generator, one draw per step that does
not end at σ = 0 (k-diffusion's 2M SDE defaults to a Brownian tree), so a seed fixes the samples.
``step`` converts x_t to x̃, takes one of the steps below, and converts the result back to
x_{t'}: the loop, its ``start_t`` and its callback see x_t only. σ' is the next level of the run
(0: the data). This module is the steps' arithmetic on tensors and numbers and imports nothing
of vd's, so that ``diffusion.py``, whose loop calls it, stays one readable file under 500 lines.

Every σ of a run is a training timestep's. k-diffusion's wrappers interpolate a fractional t
from log σ; vd instead puts each level on the nearest timestep in log σ (``karras_timesteps``):
the network is asked only at the integer t it was trained on (its t-embedding between them was
never fitted, and vd's model_fn takes a LongTensor), and between steps x is exactly a
forward-process x_t, so SDEdit's ``start_t`` (the level σ_{start_t}) and RePaint's callback
(which noises the known region to t_next with ``add_noise``) need no σ. This moves only Karras
levels, and only near σ_min, where the grid is coarse (linear schedule: σ_0 = 0.010, σ_1 = 0.015).

- The probability-flow ODE (EDM eq. 1 with σ(t) = t): dx̃/dσ = (x̃ − D(x̃; σ)) / σ =: d(x̃, σ).
  EDM's Algorithm 1 with σ(t) = t and s(t) = 1 (their Algorithm 2 without churn, which is
  k-diffusion's ``sample_euler`` and ``sample_heun`` at their defaults) is the two below.
- Euler (Algorithm 1 without its correction): x̃' = x̃ + (σ' − σ) d(x̃, σ). On the training grid
  this is DDIM with η = 0 exactly (Song et al. 2021; EDM sec. 3).
- Heun (Algorithm 1, their 2nd-order method): the Euler step x̃₂ = x̃ + (σ' − σ) d(x̃, σ),
  then, unless σ' = 0 (their "if t_{i+1} ≠ 0": the step to the data stays Euler),
      x̃' = x̃ + (σ' − σ) · ½ (d(x̃, σ) + d(x̃₂, σ')),
  which asks the network a second time, at σ'. An S-step run costs 2S − 1 evaluations.
- Euler ancestral (k-diffusion ``sample_euler_ancestral`` and ``get_ancestral_step``, η = 1):
      σ_up = min(σ', η √(σ'² (σ² − σ'²) / σ²)),   σ_down = √(σ'² − σ_up²),
      x̃' = x̃ + (σ_down − σ) d(x̃, σ) + σ_up z,    z ~ N(0, I), no noise when σ' = 0.
  With η = 1 on the training grid this is the DDPM posterior step (DDPM eq. 6-7).
- DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", sec. 4 and appendix; k-diffusion
  ``sample_dpmpp_2m_sde``, midpoint variant, η = 1): in λ = −log σ, with h = λ' − λ and the
  previous step's h_prev and D_prev (r = h_prev / h),
      x̃' = (σ' / σ) e^{−ηh} x̃ + (1 − e^{−(1+η)h}) D + ½ (1 − e^{−(1+η)h}) (D − D_prev) / r
           + σ' √(1 − e^{−2ηh}) z,
  first order (no D_prev term) at the first step of a run; the step to σ' = 0 returns D. Its
  first-order step with η = 1 is the DDPM posterior step too.
- Karras spacing (EDM eq. 5, ρ = 7): σ_i = (σ_max^{1/ρ} + i / (S − 1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ
  for i = 0 … S − 1, from σ_max = σ_{T−1} to σ_min = σ_0, each put on its nearest timestep;
  levels that land on the same one are merged, so a run of many steps (from 80 of T = 1000
  with the linear schedule) has fewer than S.
- Trailing spacing (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
  Flawed", table 2): t_i = round(T − i·T/S) − 1 for i = 0 … S − 1, evenly spaced like "leading"
  but starting at T − 1, the level of the pure noise x_T that a run starts from. It is these
  samplers' default: "Euler", "Euler a" and "DPM++ 2M SDE" are uniform in t in k-diffusion and
  AUTOMATIC1111, and the Karras σ's a second name ("DPM++ 2M SDE Karras"); and it needs only T,
  where Karras spacing needs the schedule.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, get_args

import torch

SIGMA_SAMPLERS = ("euler", "euler-a", "heun", "dpmpp-2m-sde")  # the samplers that step in σ-space
STOCHASTIC = ("euler-a", "dpmpp-2m-sde")  # their noise z comes from the loop's generator
Spacing = Literal["leading", "linspace", "trailing", "karras"]  # spelled once: recipes and the CLI derive from it
SPACINGS: tuple[str, ...] = get_args(Spacing)


# --- where the steps fall ----------------------------------------------------------------------


def timesteps(steps: int, T: int) -> list[int]:
    """The S = ``steps`` timesteps of a "leading" run (DDIM, DDPM), descending: t_i = i·(T // S) for i = S−1 … 0."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T = {T}, got {steps}")
    return [i * (T // steps) for i in range(steps - 1, -1, -1)]


def spaced_timesteps(spacing: str, steps: int, T: int, sigmas: torch.Tensor | None = None) -> list[int]:
    """The timesteps of an S = ``steps`` run with ``spacing``, descending (``diffusion.sampler_timesteps``).

    Karras spacing needs the schedule's σ_0 … σ_{T−1} (``sigmas``, ascending).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T = {T}, got {steps}")
    if spacing == "leading":
        return timesteps(steps, T)
    if spacing == "linspace":  # diffusers' DPM-Solver: round(linspace(0, T − 1, S + 1)) reversed, without 0
        grid = torch.linspace(0, T - 1, steps + 1, dtype=torch.float64).round().long()
        return grid.flip(0)[:-1].tolist()
    if spacing == "trailing":
        return trailing_timesteps(steps, T)
    if sigmas is None:
        raise ValueError("karras spacing places noise levels: pass the NoiseSchedule, not T")
    return karras_timesteps(steps, sigmas)


def trailing_timesteps(steps: int, T: int) -> list[int]:
    """Lin et al. 2024, table 2: round(arange(T, 0, −T/S)) − 1, descending from T − 1."""
    return [round(T - i * T / steps) - 1 for i in range(steps)]


def karras_timesteps(steps: int, sigmas: torch.Tensor) -> list[int]:
    """EDM eq. 5's S levels between a schedule's σ_0 … σ_{T−1} (``sigmas``, ascending), each on its
    nearest timestep in log σ; descending, with levels that share a timestep merged."""
    levels = karras_sigmas(steps, sigmas[0].item(), sigmas[-1].item())
    nearest = (levels.log()[:, None] - sigmas.log()[None]).abs().argmin(1)  # (S,)
    return list(dict.fromkeys(nearest.tolist()))


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The S = ``steps`` noise levels of EDM eq. 5, descending from σ_max to σ_min, float64 (S,)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


# --- the steps, in σ-space -----------------------------------------------------------------------


def derivative(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """d(x̃, σ) = (x̃ − D(x̃; σ)) / σ, the probability-flow ODE's dx̃/dσ (EDM eq. 1 and Algorithm 1)."""
    return (x - denoised) / sigma


def euler_step(x: torch.Tensor, sigma: float, sigma_next: float, denoised: torch.Tensor) -> torch.Tensor:
    """x̃' = x̃ + (σ' − σ) d(x̃, σ): the Euler step of EDM's Algorithm 1."""
    return x + (sigma_next - sigma) * derivative(x, sigma, denoised)


def heun_step(x: torch.Tensor, sigma: float, sigma_next: float, denoised: torch.Tensor,
              denoise: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """EDM's Algorithm 1: Euler, then (unless σ' = 0) the trapezoidal correction with d at σ'.

    ``denoise(x̃₂)`` is D(x̃₂; σ'), the second network evaluation of the step.
    """
    d = derivative(x, sigma, denoised)
    x_euler = x + (sigma_next - sigma) * d
    if sigma_next == 0:  # "if t_{i+1} ≠ 0": d(x̃, 0) is undefined, so the last step stays Euler
        return x_euler
    d_next = derivative(x_euler, sigma_next, denoise(x_euler))
    return x + (sigma_next - sigma) * 0.5 * (d + d_next)


def ancestral_levels(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of k-diffusion's ``get_ancestral_step``: step deterministically to σ_down, then add σ_up z.

    σ_down² + σ_up² = σ'², so the sample lands at σ' in distribution; η = 1 is the DDPM posterior.
    """
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def euler_ancestral_step(x: torch.Tensor, sigma: float, sigma_next: float, denoised: torch.Tensor,
                         noise: torch.Tensor | None) -> torch.Tensor:
    """x̃' = x̃ + (σ_down − σ) d(x̃, σ) + σ_up z; ``noise`` z is None (and unused) when σ' = 0."""
    sigma_down, sigma_up = ancestral_levels(sigma, sigma_next)
    x = x + (sigma_down - sigma) * derivative(x, sigma, denoised)
    return x + sigma_up * noise if sigma_next > 0 else x


def dpmpp_2m_sde_step(x: torch.Tensor, sigma: float, sigma_next: float, denoised: torch.Tensor,
                      previous: tuple[float, torch.Tensor] | None, noise: torch.Tensor | None,
                      eta: float = 1.0) -> torch.Tensor:
    """One DPM-Solver++(2M) SDE step, midpoint variant (see the module docstring).

    ``previous`` is (σ_prev, D_prev): the level of the run's step before and its D, or None (first
    order). ``noise`` z is None (and unused) when σ' = 0, where the step returns D.
    """
    if sigma_next == 0:
        return denoised
    h = math.log(sigma) - math.log(sigma_next)  # λ' − λ with λ = −log σ: > 0 towards the data
    # 1. the first-order (data-prediction) part: (σ'/σ) e^{−ηh} x̃ + (1 − e^{−(1+η)h}) D
    gain = -math.expm1(-(1 + eta) * h)
    x = (sigma_next / sigma) * math.exp(-eta * h) * x + gain * denoised
    # 2. the midpoint correction with the previous D: ½ (1 − e^{−(1+η)h}) (D − D_prev) / r
    if previous is not None:
        sigma_prev, denoised_prev = previous
        h_prev = math.log(sigma_prev) - math.log(sigma)
        x = x + 0.5 * gain * (h / h_prev) * (denoised - denoised_prev)
    # 3. the noise that keeps the marginal: σ' √(1 − e^{−2ηh}) z
    return x + sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * noise if eta > 0 else x


def step(
    sampler: str,
    x_t: torch.Tensor,
    alpha_bar: float,
    alpha_bar_next: float,
    x0_pred: torch.Tensor,
    previous: tuple[float, torch.Tensor] | None = None,
    noise: torch.Tensor | None = None,
    predict_next: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[float, torch.Tensor]]:
    """One step of a σ-space ``sampler`` from x_t (at ᾱ_t) to x_{t'} (at ᾱ_{t'}; 1 for the data).

    ``x0_pred`` is the network's x̂_0 at x_t; ``noise`` is z for the ancestral samplers (None when
    t' is the data); ``predict_next(x_{t'})`` is x̂_0 at t', Heun's second evaluation. Returns
    x_{t'} and the (σ_t, D) that DPM-Solver++(2M) SDE's next step takes as ``previous``. Half
    precision is stepped in float32, as ``diffusion``'s samplers do; x_{t'} has x_t's dtype.
    """
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    sigma, sigma_next = math.sqrt((1 - alpha_bar) / alpha_bar), math.sqrt((1 - alpha_bar_next) / alpha_bar_next)
    # 1. into σ-space: x̃ = x_t / √ᾱ_t (k-diffusion's DiscreteEpsDDPMDenoiser: c_in = 1 / √(σ² + 1) = √ᾱ_t)
    x, denoised = x_t.to(dtype) / math.sqrt(alpha_bar), x0_pred.to(dtype)
    noise = None if noise is None else noise.to(dtype)
    # 2. the step from σ_t to σ_{t'}
    if sampler == "euler":
        x = euler_step(x, sigma, sigma_next, denoised)
    elif sampler == "heun":
        def denoise(x_euler: torch.Tensor) -> torch.Tensor:  # D(x̃₂; σ'), asked of the network at x_{t'}
            return predict_next((x_euler * math.sqrt(alpha_bar_next)).to(x_t.dtype)).to(dtype)

        x = heun_step(x, sigma, sigma_next, denoised, denoise)
    elif sampler == "euler-a":
        x = euler_ancestral_step(x, sigma, sigma_next, denoised, noise)
    elif sampler == "dpmpp-2m-sde":
        x = dpmpp_2m_sde_step(x, sigma, sigma_next, denoised, previous, noise)
    else:
        raise ValueError(f"{sampler!r} is not a σ-space sampler; expected one of {', '.join(SIGMA_SAMPLERS)}")
    # 3. back to x_{t'} = √ᾱ_{t'} x̃'
    return (x * math.sqrt(alpha_bar_next)).to(x_t.dtype), (sigma, denoised)

"""Make the reference trajectories that tests/test_sampler_conformance.py checks vd's samplers against.

    pip install -e ".[bench]" && python bench/sampler_references.py

Two kinds of reference, both in float64 with the test's synthetic model as the network, from the
test's starting noise (and, for the stochastic samplers, a generator with the case's seed, drawn
in the same order as vd draws), written as x after every step to
tests/data/sampler_references.safetensors. Run once; the test itself imports neither.

- ``DIFFUSERS_CASES`` (DDIM, DDPM, DPM-Solver++(2M), with the spacings diffusers has): diffusers'
  schedulers, configured as vd's conventions state. Without diffusers installed, the stored
  tensors of these cases are kept as they are (the first ones were made with diffusers 0.42.1).
- ``FORMULA_CASES`` (the σ-space samplers, and Karras spacing for any sampler): the formulas of
  Karras et al. 2022 (Algorithm 1), k-diffusion's ``sample_euler``, ``sample_heun``,
  ``sample_euler_ancestral``, ``sample_dpmpp_2m``, ``sample_dpmpp_2m_sde`` and its
  ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` wrappers with ``quantize=True``, read and
  written again below in k-diffusion's own form (x̃ = x_0 + σ n throughout, σ from the
  schedule, the network's output turned into D with c_skip, c_out, c_in), which shares no code
  with vd's. The σ's are EDM eq. 5's, each put on its nearest timestep in log σ (the
  quantization of k-diffusion's ``sigma_to_t``), or Lin et al. 2024's trailing timesteps. With
  diffusers installed, the trailing cases are also checked against diffusers' Euler, Heun, Euler
  ancestral and SDE-DPM-Solver++ schedulers (which step in float32 inside: checked to 1e-6 σ_max).
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vdcli.diffusion import NoiseSchedule

try:
    import diffusers
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, HeunDiscreteScheduler)
except ImportError:  # the formula cases need no diffusers; the diffusers cases are then kept from the file
    diffusers = None

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_sampler_conformance import (CASES, DIFFUSERS_CASES, FORMULA_CASES, REFERENCES,  # noqa: E402
                                      starting_noise, synthetic_model)

BETAS = {"linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
         "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
         "cosine": dict(beta_schedule="squaredcos_cap_v2")}
PREDICTION = {"eps": "epsilon", "v": "v_prediction"}


def scheduler(sampler: str, prediction: str, schedule: str, spacing: str | None = None):
    common = dict(num_train_timesteps=1000, prediction_type=PREDICTION[prediction], **BETAS[schedule])
    if sampler == "ddim":
        return DDIMScheduler(**common, timestep_spacing=spacing or "leading", set_alpha_to_one=True, clip_sample=False,
                             steps_offset=0)
    if sampler == "ddpm":
        return DDPMScheduler(**common, timestep_spacing=spacing or "leading", variance_type="fixed_small", clip_sample=False)
    if sampler == "dpmpp-2m":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero",
                                           timestep_spacing=spacing or "linspace", lower_order_final=True)
    # the σ-space samplers, for the cross-check of the formula references (trailing spacing only)
    if sampler == "dpmpp-2m-sde":
        return DPMSolverMultistepScheduler(**common, algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint",
                                           final_sigmas_type="zero", timestep_spacing=spacing, lower_order_final=True)
    kind = {"euler": EulerDiscreteScheduler, "heun": HeunDiscreteScheduler, "euler-a": EulerAncestralDiscreteScheduler}
    return kind[sampler](**common, timestep_spacing=spacing)


def trajectory(sampler, steps, eta, prediction, schedule, seed, spacing=None) -> torch.Tensor:
    s = scheduler(sampler, prediction, schedule, spacing)
    # diffusers keeps β and ᾱ in float32 (2e-7 from the float64 values); over DDPM's 1000 steps that
    # alone moves x by 1e-4. The comparison is of the samplers' arithmetic, so give both the same
    # float64 schedule (vd's, whose β the tests check against the papers separately).
    ours = NoiseSchedule(schedule, 1000, prediction)
    s.betas, s.alphas, s.alphas_cumprod = ours.betas, 1 - ours.betas, ours.alphas_cumprod
    if sampler.startswith("dpmpp"):
        s.alpha_t, s.sigma_t = ours.alphas_cumprod.sqrt(), (1 - ours.alphas_cumprod).sqrt()
        s.lambda_t = s.alpha_t.log() - s.sigma_t.log()
        s.sigmas = ((1 - ours.alphas_cumprod) / ours.alphas_cumprod) ** 0.5
    s.set_timesteps(steps)
    x = starting_noise()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out = []
    for t in s.timesteps:
        output = synthetic_model(x, torch.full((x.shape[0],), int(t)))
        kwargs = dict(eta=eta, generator=generator) if sampler == "ddim" else {}
        if sampler in ("ddpm", "dpmpp-2m-sde"):
            kwargs = dict(generator=generator)
        x = s.step(output, t, x, **kwargs).prev_sample
        out.append(x)
    return torch.stack(out)


# --- the formula references, in k-diffusion's form --------------------------------------------


def denoiser(prediction: str, schedule: str):
    """D(x̃; σ) of k-diffusion's DiscreteEpsDDPMDenoiser (ε) or DiscreteVDDPMDenoiser (v), quantize=True.

    σ_data = 1; c_in = 1 / √(σ² + 1); ε: D = x̃ − σ ε̂; v: D = x̃ / (σ² + 1) − σ / √(σ² + 1) v̂.
    The network is asked at the grid timestep whose log σ is nearest (``sigma_to_t``, quantized).
    """
    alphas_cumprod = NoiseSchedule(schedule, 1000).alphas_cumprod
    log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()

    def D(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = (math.log(sigma) - log_sigmas).abs().argmin()
        c_in = 1 / (sigma**2 + 1) ** 0.5
        out = synthetic_model(x * c_in, torch.full((x.shape[0],), int(t)))
        if prediction == "eps":
            return x + out * -sigma
        return x / (sigma**2 + 1) + out * (-sigma / (sigma**2 + 1) ** 0.5)

    return D


def run_sigmas(spacing: str, steps: int, schedule: str) -> list[float]:
    """The run's σ's, σ_max first, ending with 0 (k-diffusion's ``append_zero``)."""
    alphas_cumprod = NoiseSchedule(schedule, 1000).alphas_cumprod
    grid = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # σ_0 … σ_{T−1}
    if spacing == "trailing":  # Lin et al. 2024, table 2, as diffusers computes it
        ts = (np.round(np.arange(1000, 0, -1000 / steps)) - 1).astype(np.int64)
    else:  # k-diffusion's get_sigmas_karras (float64 ramp), then sigma_to_t(quantize=True)
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        min_inv_rho, max_inv_rho = grid[0] ** (1 / 7), grid[-1] ** (1 / 7)
        karras = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** 7
        ts = (karras.log()[:, None] - grid.log()[None]).abs().argmin(1)
    return [grid[int(t)].item() for t in ts] + [0.0]


def formula_trajectory(sampler, steps, eta, prediction, schedule, seed, spacing) -> torch.Tensor:
    """x after every step of k-diffusion's ``sample_<sampler>``, turned back into x_t = x̃ / √(σ² + 1)."""
    D, sigmas = denoiser(prediction, schedule), run_sigmas(spacing, steps, schedule)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    # vd's loop starts from x_T itself, which is x̃ = √(σ_max² + 1) n; k-diffusion (and diffusers' trailing
    # Euler) start from σ_max n, smaller by 1 / (2 σ_max²): 2e-5 for the linear schedule, 0.2 % for scaled_linear.
    x = starting_noise() * (sigmas[0] ** 2 + 1) ** 0.5
    out, old_denoised, h_last = [], None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = D(x, sigma)
        d = (x - denoised) / sigma  # to_d
        if sampler == "euler":
            x = x + d * (sigma_next - sigma)
        elif sampler == "heun":
            if sigma_next == 0:
                x = x + d * (sigma_next - sigma)
            else:
                x_2 = x + d * (sigma_next - sigma)
                d_2 = (x_2 - D(x_2, sigma_next)) / sigma_next
                x = x + (d + d_2) / 2 * (sigma_next - sigma)
        elif sampler == "euler-a":  # get_ancestral_step with eta = 1
            sigma_up = min(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
            sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
            x = x + d * (sigma_down - sigma)
            if sigma_next > 0:
                x = x + torch.randn(x.shape, generator=generator, dtype=torch.float64) * sigma_up
        elif sampler == "dpmpp-2m":
            t, t_next = -math.log(sigma), -math.log(sigma_next) if sigma_next > 0 else math.inf
            h = t_next - t
            if old_denoised is None or sigma_next == 0:
                x = denoised if sigma_next == 0 else (sigma_next / sigma) * x - math.expm1(-h) * denoised
            else:
                r = h_last / h
                x = (sigma_next / sigma) * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised)
            old_denoised, h_last = denoised, h
        else:  # dpmpp-2m-sde, midpoint, eta = 1, noise drawn i.i.d. from the generator
            if sigma_next == 0:
                x = denoised
            else:
                h = -math.log(sigma_next) + math.log(sigma)
                eta_h = 1.0 * h
                x = sigma_next / sigma * math.exp(-eta_h) * x + -math.expm1(-h - eta_h) * denoised
                if old_denoised is not None:
                    r = h_last / h
                    x = x + 0.5 * -math.expm1(-h - eta_h) * (1 / r) * (denoised - old_denoised)
                noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
                x = x + noise * sigma_next * math.sqrt(-math.expm1(-2 * eta_h))
            old_denoised, h_last = denoised, (h if sigma_next > 0 else None)
        out.append(x / (sigma_next**2 + 1) ** 0.5)
    return torch.stack(out)


def diffusers_sigma_trajectory(sampler, steps, eta, prediction, schedule, seed, spacing) -> torch.Tensor:
    """The same run with diffusers' port of the k-diffusion sampler (trailing spacing: integer timesteps)."""
    s = scheduler(sampler, prediction, schedule, spacing)
    ours = NoiseSchedule(schedule, 1000, prediction)
    s.alphas_cumprod = ours.alphas_cumprod  # float64, as in trajectory()
    if sampler == "dpmpp-2m-sde":
        s.alpha_t, s.sigma_t = ours.alphas_cumprod.sqrt(), (1 - ours.alphas_cumprod).sqrt()
        s.lambda_t = s.alpha_t.log() - s.sigma_t.log()
    s.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    sde = sampler == "dpmpp-2m-sde"  # diffusers' DPM-Solver steps x_t itself, and draws its noise in float32
    x = starting_noise() * (1 if sde else (s.sigmas.max().double() ** 2 + 1) ** 0.5)  # x_T, as vd starts
    kept = []
    for k, t in enumerate(s.timesteps):
        output = synthetic_model(x if sde else s.scale_model_input(x, t).double(), torch.full((x.shape[0],), int(round(float(t)))))
        if sde:  # our draws, as the formula reference makes them: none for the step to σ = 0
            last = k == len(s.timesteps) - 1
            z = torch.zeros_like(x) if last else torch.randn(x.shape, generator=generator, dtype=torch.float64)
            kw = {"variance_noise": z}
        else:
            kw = {"generator": generator} if sampler == "euler-a" else {}
        x = s.step(output, t, x, **kw).prev_sample.double()
        if sampler != "heun" or s.state_in_first_order or k == len(s.timesteps) - 1:  # not the Euler half of a Heun step
            kept.append(x)
    sigmas = run_sigmas(spacing, steps, schedule)[1:]
    return torch.stack([x if sde else x / (sigma**2 + 1) ** 0.5 for x, sigma in zip(kept, sigmas)])


def main() -> None:
    """Keeps every case already in the file byte for byte (``--remake``: makes them all anew)."""
    stored, made_with = {}, {}
    if REFERENCES.exists() and "--remake" not in sys.argv:
        stored = load_file(str(REFERENCES))
        with safe_open(str(REFERENCES), "pt") as f:
            made_with = json.loads(f.metadata()["made_by"]).get("made_with", {})
    tensors = {}
    for name, *rest in CASES:
        if name in stored:
            tensors[name] = stored[name]
            made_with.setdefault(name, "diffusers 0.42.1, torch 2.15.0+cu132")  # the first references'
            continue
        if name in {c[0] for c in DIFFUSERS_CASES}:
            if diffusers is None:
                raise SystemExit(f"{name}: needs diffusers (pip install -e '.[bench]')")
            tensors[name] = trajectory(*rest).contiguous()
            made_with[name] = f"diffusers {diffusers.__version__}, torch {torch.__version__}"
        else:
            tensors[name] = formula_trajectory(*rest).contiguous()
            made_with[name] = f"formulas (k-diffusion's form), torch {torch.__version__}"
    if diffusers is not None:  # the formula references against diffusers' ports, where diffusers can run them
        for name, *rest in FORMULA_CASES:
            if rest[-1] == "trailing" and rest[0] != "dpmpp-2m":
                # diffusers steps x̃ in float32, whose rounding at |x̃| ≈ σ_max is about 1e-7 σ_max
                tolerance = 1e-6 * (1 + run_sigmas("trailing", 1, rest[4])[0])
                gap = (diffusers_sigma_trajectory(*rest) - tensors[name]).abs().max().item()
                print(f"{name}: formula reference against diffusers {diffusers.__version__}: max |diff| {gap:.1e}"
                      f" (tolerance {tolerance:.0e})")
                assert gap < tolerance, name
    versions = sorted({v.split(",")[0].removeprefix("diffusers ") for v in made_with.values() if v.startswith("diffusers")})
    made_by = {"diffusers": versions, "cases": [c[0] for c in CASES], "made_with": made_with,
               "command": "python bench/sampler_references.py"}
    REFERENCES.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(REFERENCES), metadata={"made_by": json.dumps(made_by)})
    print(f"wrote {REFERENCES.relative_to(ROOT)}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items()))


if __name__ == "__main__":
    main()

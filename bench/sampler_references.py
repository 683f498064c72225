"""Make the reference trajectories that tests/test_sampler_conformance.py checks vd's samplers against.

    pip install -e ".[bench]" && python bench/sampler_references.py

Runs diffusers' DDIM, DDPM and DPM-Solver++(2M) schedulers, configured as vd's conventions
state, in float64 with the test's synthetic model as the network, from the test's starting noise
(and, for the stochastic samplers, a generator with the case's seed: diffusers and vd draw their
noise in the same order), and writes x after every step to tests/data/sampler_references.safetensors
(its metadata: diffusers' version and ``common.provenance``; a row in bench/results.jsonl too).
Run once; the test itself never imports diffusers.
"""

import json
import sys
from pathlib import Path

import diffusers
import torch
from common import provenance, record
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from safetensors.torch import save_file

from vdcli.diffusion import NoiseSchedule

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_sampler_conformance import CASES, REFERENCES, starting_noise, synthetic_model  # noqa: E402

BETAS = {"linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
         "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
         "cosine": dict(beta_schedule="squaredcos_cap_v2")}
PREDICTION = {"eps": "epsilon", "v": "v_prediction"}


def scheduler(sampler: str, prediction: str, schedule: str):
    common = dict(num_train_timesteps=1000, prediction_type=PREDICTION[prediction], **BETAS[schedule])
    if sampler == "ddim":
        return DDIMScheduler(**common, timestep_spacing="leading", set_alpha_to_one=True, clip_sample=False, steps_offset=0)
    if sampler == "ddpm":
        return DDPMScheduler(**common, timestep_spacing="leading", variance_type="fixed_small", clip_sample=False)
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="linspace",
                                       final_sigmas_type="zero", lower_order_final=True)


def trajectory(sampler, steps, eta, prediction, schedule, seed) -> torch.Tensor:
    s = scheduler(sampler, prediction, schedule)
    # diffusers keeps β and ᾱ in float32 (2e-7 from the float64 values); over DDPM's 1000 steps that
    # alone moves x by 1e-4. The comparison is of the samplers' arithmetic, so give both the same
    # float64 schedule (vd's, whose β the tests check against the papers separately).
    ours = NoiseSchedule(schedule, 1000, prediction)
    s.betas, s.alphas, s.alphas_cumprod = ours.betas, 1 - ours.betas, ours.alphas_cumprod
    if sampler == "dpmpp-2m":
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
        if sampler == "ddpm":
            kwargs = dict(generator=generator)
        x = s.step(output, t, x, **kwargs).prev_sample
        out.append(x)
    return torch.stack(out)


def main() -> None:
    tensors = {name: trajectory(*rest).contiguous() for name, *rest in CASES}
    made_by = {"diffusers": diffusers.__version__, **provenance(), "cases": [c[0] for c in CASES],
               "command": "python bench/sampler_references.py"}
    REFERENCES.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(REFERENCES), metadata={"made_by": json.dumps(made_by)})
    record({"bench": "sampler_references", "wrote": str(REFERENCES.relative_to(ROOT)), "diffusers": diffusers.__version__})
    print(f"wrote {REFERENCES.relative_to(ROOT)}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items()))


if __name__ == "__main__":
    main()

"""The diffusion library against closed forms.

For data x_0 ~ N(μ, σ²) every marginal q(x_t) is Gaussian, N(√ᾱ_t μ, ᾱ_t σ² + 1 − ᾱ_t), so the
ideal ε-predictor is known exactly: ε*(x_t, t) = √(1 − ᾱ_t) (x_t − √ᾱ_t μ) / (ᾱ_t σ² + 1 − ᾱ_t).
A correct sampler driven by it must return samples with mean μ and std σ.
"""

import math

import pytest
import torch

from vdcli.diffusion import (
    SAMPLERS, DiffusionConfig, NoiseSchedule, add_noise, ddim_invert, diffusion_loss, make_betas, predict_eps,
    predict_x0, sample, sampler_timesteps, slerp, snr_weight, strength_start, target, timesteps,
)
from vdcli.samplers import SIGMA_SAMPLERS, karras_sigmas

MU, SIGMA = 1.5, 0.5


def exact_eps(schedule, mu=MU, sigma=SIGMA):
    """The ideal ε-predictor for data N(μ, σ²), computed in float64."""

    def model_fn(x, t):
        a = schedule.alpha_bar(t, x.double())  # (B, 1, ...)
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * mu) / (a * sigma**2 + 1 - a)).to(x.dtype)

    return model_fn


def exact_v(schedule, mu=MU, sigma=SIGMA):
    """The ideal v-predictor: the v that the ideal ε and the x̂_0 it implies make together."""
    eps_fn, as_eps = exact_eps(schedule, mu, sigma), NoiseSchedule(prediction="eps")

    def model_fn(x, t):
        eps = eps_fn(x, t)
        return target(schedule, predict_x0(as_eps, x, t, eps), eps, t)

    return model_fn


def exact(schedule, mu=MU, sigma=SIGMA):
    return (exact_eps if schedule.prediction == "eps" else exact_v)(schedule, mu, sigma)


def gaussian_data(n, generator):
    return MU + SIGMA * torch.randn(n, 1, generator=generator)


# --- schedules ----------------------------------------------------------------------------------


def test_config_defaults_to_the_linear_eps_schedule_of_ddpm():
    cfg = DiffusionConfig()
    assert (cfg.schedule, cfg.timesteps, cfg.prediction, cfg.min_snr_gamma) == ("linear", 1000, "eps", None)
    schedule = NoiseSchedule.from_config(DiffusionConfig(schedule="cosine", timesteps=50, prediction="v"))
    assert schedule.T == 50 and len(schedule.betas) == 50 and schedule.prediction == "v"


def test_linear_betas_run_from_1e4_to_0_02_in_float64():
    betas = make_betas("linear", 1000)
    assert betas.dtype == torch.float64 and len(betas) == 1000
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12) and betas[-1].item() == pytest.approx(0.02, rel=1e-12)


def test_scaled_linear_betas_are_linear_in_sqrt_beta_from_0_00085_to_0_012():
    betas = make_betas("scaled_linear", 1000)
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-12) and betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    steps = betas.sqrt().diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=0, atol=1e-15)


def test_cosine_alpha_bar_is_the_closed_form_where_unclipped():
    T, s = 1000, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731  (Nichol & Dhariwal eq. 17)
    alpha_bar = NoiseSchedule("cosine", T).alphas_cumprod
    for t in (0, 100, 500, 900):  # index t is the paper's step t + 1
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    betas = make_betas("cosine", T)
    assert betas.max().item() == pytest.approx(0.999) and (betas[:900] < 0.999).all()  # only the very end is clipped


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_alpha_bar_is_float64_and_decreases_from_near_one_to_near_zero(name):
    a = NoiseSchedule(name, 1000).alphas_cumprod
    assert a.dtype == torch.float64 and a.device.type == "cpu"
    assert (a.diff() < 0).all() and 0.99 < a[0] < 1 and a[-1] < 0.01


def test_alpha_bar_after_the_last_step_is_one_and_follows_the_tensor_it_is_for():
    schedule = NoiseSchedule()
    a = schedule.alpha_bar(torch.tensor([-1, 0, 999]))
    assert a.dtype == torch.float64 and a.tolist() == [1.0, *schedule.alphas_cumprod[[0, -1]].tolist()]
    like = torch.zeros(3, 4, 5, 6, dtype=torch.float16)
    shaped = schedule.alpha_bar(torch.tensor([0, 1, 2]), like)
    assert shaped.shape == (3, 1, 1, 1) and shaped.dtype == torch.float32  # half is lifted, never used for coefficients


# --- forward process, targets and conversions ---------------------------------------------------


def test_forward_process_has_mean_sqrt_alpha_bar_x0_and_variance_one_minus_alpha_bar():
    schedule = NoiseSchedule()
    n, t = 200_000, 300
    x0 = torch.full((n,), 2.0)
    x_t = add_noise(schedule, x0, torch.randn(n), torch.full((n,), t))
    a = schedule.alphas_cumprod[t].item()
    assert x_t.mean().item() == pytest.approx(math.sqrt(a) * 2, abs=0.01)
    assert x_t.var().item() == pytest.approx(1 - a, abs=0.01)


def test_v_target_is_sqrt_alpha_bar_eps_minus_sqrt_one_minus_alpha_bar_x0():
    schedule = NoiseSchedule(prediction="v")
    x0, eps, t = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64), torch.tensor([5, 700])
    a = schedule.alphas_cumprod[t][:, None]
    assert torch.allclose(target(schedule, x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0, atol=1e-12)
    assert torch.equal(target(NoiseSchedule(prediction="eps"), x0, eps, t), eps)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_x0_and_eps_are_recovered_exactly_from_x_t_and_the_target(prediction):
    schedule = NoiseSchedule(prediction=prediction)
    x0, eps = torch.randn(4, 3, 2, dtype=torch.float64), torch.randn(4, 3, 2, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = add_noise(schedule, x0, eps, t)
    output = target(schedule, x0, eps, t)
    assert torch.allclose(predict_x0(schedule, x_t, t, output), x0, atol=1e-9)
    assert torch.allclose(predict_eps(schedule, x_t, t, output), eps, atol=1e-9)


# --- the loss -----------------------------------------------------------------------------------


def test_the_loss_is_zero_for_the_exact_predictor_of_point_data():
    schedule = NoiseSchedule()
    point = exact_eps(schedule, MU, 0.0)  # data x_0 = μ: the ideal ε-predictor with σ = 0
    loss = diffusion_loss(point, torch.full((256, 2), MU), schedule, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-10


def test_the_loss_draws_t_and_noise_from_its_generator():
    schedule = NoiseSchedule()
    net = lambda x, t: 0.5 * x  # noqa: E731
    x0 = torch.randn(32, 3)
    a, b, c = (diffusion_loss(net, x0, schedule, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert a.item() == b.item() != c.item()


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weights_are_min_snr_gamma_over_snr_for_eps_and_over_snr_plus_one_for_v(prediction):
    schedule = NoiseSchedule(prediction=prediction)
    t = torch.tensor([10, 900])
    snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])
    assert snr[0] > 5 > snr[1]  # one weight is clipped and one is not: both branches of min() are exercised
    expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr if prediction == "eps" else snr + 1)
    assert torch.allclose(snr_weight(schedule, t, 5.0), expected, rtol=1e-12)


def test_min_snr_loss_is_the_weighted_mean_of_the_per_sample_errors():
    schedule = NoiseSchedule()
    drawn = []

    def off_by_one(x, t):  # the ideal prediction for point data, plus 1: every squared error is exactly 1
        drawn.append(t)
        return exact_eps(schedule, MU, 0.0)(x, t) + 1

    loss = diffusion_loss(off_by_one, torch.full((64, 2), MU), schedule, 5.0, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(snr_weight(schedule, drawn[0], 5.0).mean().item(), rel=1e-5)


# --- samplers -----------------------------------------------------------------------------------


def test_an_s_step_run_visits_i_times_t_over_s_for_i_from_s_minus_one_to_zero():
    assert timesteps(5, 1000) == [800, 600, 400, 200, 0]
    assert timesteps(1000, 1000) == list(range(999, -1, -1))
    assert timesteps(3, 1000) == [666, 333, 0]


def test_dpm_solver_runs_start_at_t_minus_one_and_space_the_rest_evenly():
    assert sampler_timesteps("dpmpp-2m", 5, 1000) == [999, 799, 599, 400, 200]
    assert sampler_timesteps("dpmpp-2m", 10, 1000) == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert sampler_timesteps("ddim", 5, 1000) == timesteps(5, 1000)


# Big strides lose a little variance even with the exact predictor (a discretisation error, not
# sampling noise: with 50 steps std comes out about 5 % low for η = 0 and 10 % low for η = 1,
# while 4000 samples pin it to about 1 %), so the tolerance on std grows as the steps get fewer.
# DPM-Solver++ ends with a jump from its last timestep (T/S for S steps) to σ = 0 that returns
# x̂_0 = E[x_0 | x_t], which is narrower than the data by the noise still left at that timestep:
# 5 % at 20 steps (t = 50), under 2 % at 50 (t = 20). That is the convention (diffusers'
# final_sigmas_type="zero"), so it is tested at 50 steps here.
@pytest.mark.parametrize(
    "sampler,steps,eta,std_tol",
    [("ddpm", 1000, 0.0, 0.02), ("ddim", 50, 0.0, 0.04), ("ddim", 50, 1.0, 0.07), ("dpmpp-2m", 50, 0.0, 0.02)],
)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_samplers_driven_by_the_exact_predictor_reproduce_gaussian_data(sampler, steps, eta, std_tol, prediction):
    schedule = NoiseSchedule(prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x = sample(exact(schedule), torch.randn(4000, 1, generator=g), schedule, sampler, steps, eta, generator=g)
    assert x.mean().item() == pytest.approx(MU, abs=0.03)
    assert x.std().item() == pytest.approx(SIGMA, abs=std_tol)


def test_ddim_eta0_is_deterministic():
    schedule = NoiseSchedule()
    noise = torch.randn(16, 2)
    a = sample(exact_eps(schedule), noise, schedule, "ddim", 20)
    b = sample(exact_eps(schedule), noise, schedule, "ddim", 20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_ddpm_samples_are_fixed_by_the_generator_seed():
    schedule = NoiseSchedule()
    noise = torch.randn(16, 2)
    a, b, c = (sample(exact_eps(schedule), noise, schedule, "ddpm", 100, generator=torch.Generator().manual_seed(seed))
               for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ddim_with_eta_one_is_the_strided_ddpm_posterior():
    schedule = NoiseSchedule()
    noise = torch.randn(64, 1)
    ddim, ddpm = (sample(exact_eps(schedule), noise, schedule, sampler, 50, 1.0, generator=torch.Generator().manual_seed(3))
                  for sampler in ("ddim", "ddpm"))
    assert torch.allclose(ddim, ddpm, atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_inversion_then_sampling_returns_the_input_for_a_linear_model(prediction):
    schedule = NoiseSchedule(prediction=prediction)
    x0 = gaussian_data(64, torch.Generator().manual_seed(0)).double()
    errors = {}
    for steps in (100, 1000):
        noise = ddim_invert(exact(schedule), x0, schedule, steps)
        errors[steps] = (sample(exact(schedule), noise, schedule, "ddim", steps) - x0).abs().max().item()
    # Inversion asks the network one step early, so the round trip is exact up to a first-order error.
    assert errors[1000] < 0.02 and errors[1000] < errors[100] / 5
    # ...and it really went to noise
    assert noise.mean().item() == pytest.approx(0, abs=0.3) and noise.std().item() == pytest.approx(1, abs=0.25)


def test_the_samplers_keep_the_dtype_and_device_of_x():
    schedule = NoiseSchedule()
    for sampler in SAMPLERS:
        x = sample(exact_eps(schedule), torch.randn(4, 2, dtype=torch.float64), schedule, sampler, 10, 1.0)
        assert x.dtype == torch.float64 and x.device.type == "cpu"


def test_an_unknown_sampler_is_named_in_the_error():
    with pytest.raises(ValueError, match="'lms'.*ddim, ddpm, dpmpp-2m, euler, euler-a, heun, dpmpp-2m-sde"):
        sample(lambda x, t: x, torch.randn(2, 1), NoiseSchedule(), "lms")


# --- the loop's hooks: callback and start -------------------------------------------------------


def test_callback_sees_every_step_and_a_returned_x_replaces_it():
    schedule = NoiseSchedule()
    seen = []

    def zero_first_column(i, t, x, x0_pred):
        seen.append((i, t))
        x = x.clone()
        x[:, 0] = 0.0
        return x

    out = sample(exact_eps(schedule, 0.0, 1.0), torch.randn(8, 2), schedule, "ddim", 10, callback=zero_first_column)
    assert seen == list(enumerate(timesteps(10, 1000)[1:] + [-1]))  # the level x is at after each step
    assert torch.all(out[:, 0] == 0) and torch.all(out[:, 1] != 0)


def test_callback_returning_none_leaves_the_run_unchanged():
    schedule = NoiseSchedule()
    noise = torch.randn(8, 1)
    plain = sample(exact_eps(schedule), noise, schedule, "ddim", 10)
    watched = sample(exact_eps(schedule), noise, schedule, "ddim", 10, callback=lambda i, t, x, x0_pred: None)
    assert torch.equal(plain, watched)


def test_starting_at_an_intermediate_timestep_runs_only_the_rest():
    schedule = NoiseSchedule()
    seen = []
    sample(exact_eps(schedule), torch.randn(4, 1), schedule, "ddim", 10, start_t=450,
           callback=lambda i, t, x, x0_pred: seen.append(t))
    assert seen == [400, 300, 200, 100, 0, -1]


def test_dpm_solver_starts_anywhere_and_its_callback_can_replace_x():
    schedule = NoiseSchedule()
    seen = []

    def pin_first_column(i, t_next, x, x0_pred):
        seen.append(t_next)
        x = x.clone()
        x[:, 0] = 0.0
        return x

    out = sample(exact_eps(schedule), torch.randn(8, 2), schedule, "dpmpp-2m", 10, start_t=450, callback=pin_first_column)
    assert seen == [t for t in sampler_timesteps("dpmpp-2m", 10, 1000) if t < 450] + [-1]
    assert torch.all(out[:, 0] == 0) and torch.all(out[:, 1] != 0)


# A two-Gaussian mixture in 1-D: its marginals q(x_t) are mixtures too, so the exact ε is known in
# closed form, and so are the true samples (drawn from the mixture directly).
MIX = ((-1.0, 0.25, 0.3), (1.5, 0.4, 0.7))  # (mean, std, weight) of each component


def mixture_eps(schedule):
    def model_fn(x, t):
        a = schedule.alpha_bar(t, x.double())
        x = x.double()
        var = [a * s**2 + 1 - a for _, s, _ in MIX]
        logp = torch.stack([math.log(w) - 0.5 * (x - a.sqrt() * m) ** 2 / v - 0.5 * v.log() for (m, _, w), v in zip(MIX, var)])
        resp = logp.softmax(0)  # the posterior weight of each component at x_t
        score = sum(r * -(x - a.sqrt() * m) / v for r, (m, _, _), v in zip(resp, MIX, var))  # ∇ log q(x_t)
        return (-(1 - a).sqrt() * score).to(x.dtype)  # ε* = −√(1 − ᾱ_t) ∇ log q(x_t)

    return model_fn


def wasserstein_1d(a, b):
    return (a.flatten().sort().values - b.flatten().sort().values).abs().mean().item()


def test_dpm_solver_at_20_steps_lands_closer_to_the_true_samples_than_ddim_at_20():
    schedule = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    n = 20000
    pick = torch.rand(n, 1, generator=g, dtype=torch.float64) < MIX[0][2]
    truth = torch.where(pick, MIX[0][0] + MIX[0][1] * torch.randn(n, 1, generator=g, dtype=torch.float64),
                        MIX[1][0] + MIX[1][1] * torch.randn(n, 1, generator=g, dtype=torch.float64))
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    dist = {s: wasserstein_1d(sample(mixture_eps(schedule), noise, schedule, s, 20), truth) for s in ("ddim", "dpmpp-2m")}
    reference = wasserstein_1d(sample(mixture_eps(schedule), noise, schedule, "dpmpp-2m", 500), truth)
    # Closer by a clear margin (0.040 against 0.052 here); at 20 steps most of what is left is the
    # final jump to σ = 0, which returns E[x_0 | x_50] (see the Gaussian test above).
    assert dist["dpmpp-2m"] < 0.85 * dist["ddim"], dist
    assert reference < dist["dpmpp-2m"]  # the ODE's own answer, which more steps approach


@pytest.mark.parametrize("start_t", [150, 200])  # off and on the 50-step grid (stride 20)
def test_sdedit_from_data_noised_to_start_t_returns_to_the_data_distribution(start_t):
    schedule = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    x0 = gaussian_data(4000, g)
    x_t = add_noise(schedule, x0, torch.randn(x0.shape, generator=g), start_t)
    x = sample(exact_eps(schedule), x_t, schedule, "ddim", 50, start_t=start_t)
    assert x.mean().item() == pytest.approx(MU, abs=0.03) and x.std().item() == pytest.approx(SIGMA, abs=0.03)
    # Deterministic DDIM on Gaussian data is an increasing linear map of its input, so the
    # result is exactly as correlated with x_0 as the noised input was: it edited x_t, not fresh noise.
    corr = lambda a: torch.corrcoef(torch.cat([a, x0], 1).T)[0, 1].item()  # noqa: E731
    assert corr(x) == pytest.approx(corr(x_t), abs=1e-4) and corr(x) > 0.4


# --- spacing, and the σ-space samplers (vdcli/samplers.py) --------------------------------------


@pytest.mark.parametrize("steps", [1, 3, 7, 10, 20, 50, 333, 1000])
def test_the_default_spacing_is_the_samplers_timesteps_of_before(steps):
    T = 1000
    leading = [i * (T // steps) for i in range(steps - 1, -1, -1)]
    linspace = torch.linspace(0, T - 1, steps + 1, dtype=torch.float64).round().long().flip(0)[:-1].tolist()
    for schedule in (T, NoiseSchedule()):  # the int T and the schedule give the same runs
        assert sampler_timesteps("ddim", steps, schedule) == sampler_timesteps("ddpm", steps, schedule) == leading
        assert sampler_timesteps("dpmpp-2m", steps, schedule) == linspace
        assert sampler_timesteps("ddim", steps, schedule, "leading") == leading
        assert sampler_timesteps("ddim", steps, schedule, "linspace") == linspace


@pytest.mark.parametrize("steps", [3, 7, 10, 25, 1000])
def test_trailing_spacing_is_lin_et_al_table_2(steps):
    expected = (torch.arange(1000, 0, -1000 / steps, dtype=torch.float64).round() - 1).long().tolist()
    assert sampler_timesteps("euler", steps, 1000, "trailing") == expected
    assert sampler_timesteps("ddim", 10, 1000, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    for sampler in SIGMA_SAMPLERS:  # their own spacing
        assert sampler_timesteps(sampler, steps, 1000) == expected


def test_karras_spacing_puts_edm_eq5_levels_on_their_nearest_timesteps():
    schedule = NoiseSchedule()
    sigmas = schedule.sigma(torch.arange(1000))
    ts = sampler_timesteps("euler", 10, schedule, "karras")
    assert ts == sampler_timesteps("ddim", 10, schedule, "karras") and ts[0] == 999 and ts[-1] == 0
    levels = karras_sigmas(10, sigmas[0].item(), sigmas[-1].item())
    for t, level in zip(ts, levels):
        assert (sigmas.log() - level.log()).abs().argmin().item() == t
    # σ_i^(1/ρ) is linear in i (EDM eq. 5, ρ = 7)
    assert torch.allclose(levels.pow(1 / 7).diff(), levels.pow(1 / 7).diff()[0].expand(9), atol=1e-12)
    many = sampler_timesteps("heun", 200, schedule, "karras")  # near σ_min the grid is coarser than 200 levels
    assert len(many) < 200 and many == sorted(set(many), reverse=True)
    with pytest.raises(ValueError, match="karras"):
        sampler_timesteps("euler", 10, 1000, "karras")
    with pytest.raises(ValueError, match="'cosine'.*leading, linspace, trailing, karras"):
        sampler_timesteps("euler", 10, schedule, "cosine")


@pytest.mark.parametrize("spacing", ["leading", "trailing", "karras"])
def test_euler_on_the_training_grid_is_ddim_with_eta_zero(spacing):
    schedule = NoiseSchedule()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    euler, ddim = (sample(mixture_eps(schedule), noise, schedule, s, 20, spacing=spacing) for s in ("euler", "ddim"))
    assert torch.allclose(euler, ddim, rtol=0, atol=1e-10)


@pytest.mark.parametrize("sampler", ["euler-a", "dpmpp-2m-sde"])
def test_an_ancestral_step_of_eta_one_is_the_ddpm_posterior_step(sampler):
    # Euler ancestral always, DPM-Solver++(2M) SDE at first order: one step from 600 is all there is after start_t.
    schedule = NoiseSchedule()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps, start_t in ((20, None), (1, 600)):
        if sampler == "dpmpp-2m-sde" and start_t is None:
            continue
        runs = [sample(mixture_eps(schedule), noise, schedule, s, steps, 1.0, torch.Generator().manual_seed(3),
                       start_t=start_t, spacing="leading") for s in (sampler, "ddpm")]
        assert torch.allclose(*runs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("spacing", ["trailing", "karras"])
@pytest.mark.parametrize("sampler,order", [("euler", 1), ("heun", 2)])
def test_euler_and_heun_converge_to_the_exact_ode_solution(sampler, order, spacing, prediction):
    # For Gaussian data the probability-flow ODE is linear: x̃(σ) − μ grows as √(σ_d² + σ²), so
    # x_T (x̃ = √(σ_max² + 1) x_T) goes to x_0 = μ + σ_d (x̃ − μ) / √(σ_d² + σ_max²).
    schedule = NoiseSchedule(prediction=prediction)
    noise = torch.randn(256, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma_max = schedule.sigma(999).item()
    truth = MU + SIGMA * (math.sqrt(sigma_max**2 + 1) * noise - MU) / math.sqrt(SIGMA**2 + sigma_max**2)
    errors = [(sample(exact(schedule), noise, schedule, sampler, s, spacing=spacing) - truth).abs().max().item()
              for s in (10, 20, 40, 80)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < (0.1 if order == 1 else 0.01), errors
    if spacing == "karras":  # EDM's setting: halving the step divides the error by about 2^order
        for coarse, fine in zip(errors, errors[1:]):  # (trailing's last jump, from t = T/S − 1 to σ = 0, is cruder)
            assert fine < coarse / (1.8 if order == 1 else 3.5), errors


@pytest.mark.parametrize("sampler", ["euler-a", "dpmpp-2m-sde"])
def test_the_stochastic_samplers_reproduce_gaussian_data_as_steps_grow(sampler):
    schedule = NoiseSchedule()
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = {s: sample(exact(schedule), noise, schedule, sampler, s, generator=torch.Generator().manual_seed(1))
            for s in (10, 160)}
    std_error = {s: abs(x.std().item() - SIGMA) for s, x in runs.items()}
    assert std_error[160] < 0.025 and std_error[160] < std_error[10] / 2, std_error
    assert all(abs(x.mean().item() - MU) < 0.01 for x in runs.values())


@pytest.mark.parametrize("sampler", ["euler-a", "dpmpp-2m-sde"])
def test_the_stochastic_samplers_are_fixed_by_the_generator_seed(sampler):
    schedule = NoiseSchedule()
    noise = torch.randn(16, 2)
    a, b, c = (sample(exact_eps(schedule), noise, schedule, sampler, 10, generator=torch.Generator().manual_seed(seed))
               for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_heun_asks_the_network_twice_per_step_but_once_for_the_last():
    schedule, calls = NoiseSchedule(), []
    model = exact_eps(schedule)
    sample(lambda x, t: calls.append(t[0].item()) or model(x, t), torch.randn(4, 1), schedule, "heun", 10)
    ts = sampler_timesteps("heun", 10, schedule)
    assert calls == [ts[0]] + [t for t in ts[1:] for _ in range(2)]  # 2S − 1: each later level twice


@pytest.mark.parametrize("sampler", SIGMA_SAMPLERS)
def test_the_callback_sees_x_t_of_the_forward_process_and_can_replace_it(sampler):
    # On Gaussian data x_t ~ N(√ᾱ_t μ, ᾱ_t σ² + 1 − ᾱ_t): the callback sees that, not x̃ = x_t / √ᾱ_t.
    schedule, seen = NoiseSchedule(), {}
    g = torch.Generator().manual_seed(0)

    def watch(i, t_next, x, x0_pred):
        seen[t_next] = (x[:, 1].mean().item(), x[:, 1].std().item())
        x = x.clone()
        x[:, 0] = 0.0
        return x

    out = sample(exact_eps(schedule), torch.randn(8000, 2, generator=g), schedule, sampler, 20, generator=g, callback=watch)
    assert list(seen) == sampler_timesteps(sampler, 20, schedule)[1:] + [-1]
    for t in (799, 299):  # levels of a 20-step (trailing) run, high and middling noise
        t = min(seen, key=lambda s: abs(s - t))
        a = schedule.alphas_cumprod[t].item()
        assert seen[t][0] == pytest.approx(math.sqrt(a) * MU, abs=0.05)
        assert seen[t][1] == pytest.approx(math.sqrt(a * SIGMA**2 + 1 - a), rel=0.1)
    assert torch.all(out[:, 0] == 0) and torch.all(out[:, 1] != 0)


@pytest.mark.parametrize("sampler", SIGMA_SAMPLERS)
def test_image_to_image_starts_at_the_noise_level_of_start_t_and_returns_to_the_data(sampler):
    schedule = NoiseSchedule()
    assert strength_start(sampler, 50, schedule, 0.3) == sampler_timesteps(sampler, 50, schedule)[35]  # its own spacing
    for start in (199, 150):  # on and off the 50-step (trailing) run
        g = torch.Generator().manual_seed(0)
        x0 = gaussian_data(4000, g).double()
        x_t = add_noise(schedule, x0, torch.randn(x0.shape, generator=g, dtype=torch.float64), start)
        seen = []
        x = sample(exact_eps(schedule), x_t, schedule, sampler, 50, generator=g, start_t=start,
                   callback=lambda i, t, x, x0_pred: seen.append(t))
        assert seen == [t for t in sampler_timesteps(sampler, 50, schedule) if t < start] + [-1]
        assert x.mean().item() == pytest.approx(MU, abs=0.03) and x.std().item() == pytest.approx(SIGMA, abs=0.06)
        # It edited x_t rather than drawing anew. The ODE samplers are an increasing linear map on Gaussian
        # data, so they keep x_t's correlation with x_0 exactly; the ancestral ones add fresh noise on the way.
        corr = lambda a: torch.corrcoef(torch.cat([a, x0], 1).T)[0, 1].item()  # noqa: E731
        if sampler in ("euler", "heun"):
            assert corr(x) == pytest.approx(corr(x_t), abs=1e-3)
        else:
            assert corr(x) > 0.3 * corr(x_t) > 0.1


# --- slerp -------------------------------------------------------------------------


def test_slerp_runs_along_the_great_circle_between_its_ends():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b)
    assert torch.allclose(slerp(a, b, 1 / 3), torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]))


def test_slerp_keeps_the_norm_of_equal_norm_noise_and_falls_back_to_lerp_when_parallel():
    a, b = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    b = b * a.norm() / b.norm()
    mid = slerp(a, b, 0.5)
    assert mid.shape == a.shape and mid.norm().item() == pytest.approx(a.norm().item(), rel=1e-5)
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)

"""The diffusion library against closed forms.

For data x_0 ~ N(μ, σ²) every marginal q(x_t) is Gaussian, N(√ᾱ_t μ, ᾱ_t σ² + 1 − ᾱ_t), so the
ideal ε-predictor is known exactly: ε*(x_t, t) = √(1 − ᾱ_t) (x_t − √ᾱ_t μ) / (ᾱ_t σ² + 1 − ᾱ_t).
A correct sampler driven by it must return samples with mean μ and std σ.
"""

import math

import pytest
import torch

from vdcli.diffusion import (
    NoiseSchedule, add_noise, ddim_invert, diffusion_loss, guided, make_betas, predict_eps, predict_x0, sample,
    slerp, snr_weight, target, timesteps,
)

MU, SIGMA = 1.5, 0.5


def exact_eps(schedule, mu=MU, sigma=SIGMA):
    def model_fn(x, t):
        a = schedule.alpha_bar(t, x)
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * mu) / (a * sigma**2 + 1 - a)).to(x.dtype)

    return model_fn


def exact_v(schedule):
    eps_fn = exact_eps(schedule)

    def model_fn(x, t):  # v = √ᾱ ε − √(1−ᾱ) x̂_0, with x̂_0 from the exact ε
        a = schedule.alpha_bar(t, x)
        eps = eps_fn(x, t).double()
        x0 = (x.double() - (1 - a).sqrt() * eps) / a.sqrt()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).float()

    return model_fn


def test_linear_schedule_endpoints_and_float64():
    betas = make_betas("linear", 1000)
    assert betas.dtype == torch.float64 and betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)


def test_scaled_linear_is_linear_in_sqrt_beta():
    betas = make_betas("scaled_linear", 1000)
    assert betas[0] == pytest.approx(0.00085) and betas[-1] == pytest.approx(0.012)
    roots = betas.sqrt()
    assert torch.allclose(roots[1:] - roots[:-1], (roots[1] - roots[0]).expand(999), atol=1e-12)


def test_cosine_alpha_bar_is_the_closed_form_where_unclipped():
    T, s = 1000, 0.008
    schedule = NoiseSchedule("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert schedule.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert make_betas("cosine", T).max() <= 0.999


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_alpha_bar_decreases_from_one_towards_zero(name):
    a = NoiseSchedule(name, 1000).alphas_cumprod
    assert a.dtype == torch.float64 and (a[1:] < a[:-1]).all() and a[0] < 1 and a[-1] < 0.01


def test_forward_process_has_the_right_mean_and_variance():
    schedule = NoiseSchedule()
    x0 = torch.full((200_000,), 2.0)
    t = torch.full((200_000,), 300)
    xt = add_noise(schedule, x0, torch.randn_like(x0), t)
    a = schedule.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(a) * 2, abs=0.01)
    assert xt.var().item() == pytest.approx(1 - a, abs=0.01)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_x0_and_eps_are_recovered_from_the_target(prediction):
    schedule = NoiseSchedule(prediction=prediction)
    x0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    xt = add_noise(schedule, x0, eps, t)
    out = target(schedule, x0, eps, t)
    assert torch.allclose(predict_x0(schedule, xt, t, out), x0, atol=1e-9)
    assert torch.allclose(predict_eps(schedule, xt, t, out), eps, atol=1e-9)


def test_ddim_timesteps_are_evenly_strided_and_descending():
    assert timesteps(5, 1000) == [800, 600, 400, 200, 0]
    assert timesteps(1000, 1000)[:2] == [999, 998]


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 1000, 1.0), ("ddim", 50, 0.0), ("ddim", 1000, 1.0)])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_samplers_reproduce_a_gaussian_data_distribution(sampler, steps, eta, prediction):
    schedule = NoiseSchedule(prediction=prediction)
    model_fn = exact_eps(schedule) if prediction == "eps" else exact_v(schedule)
    g = torch.Generator().manual_seed(0)
    x = sample(model_fn, torch.randn(4000, 1, generator=g), schedule, sampler, steps, eta, generator=g)
    assert x.mean().item() == pytest.approx(MU, abs=0.04)
    assert x.std().item() == pytest.approx(SIGMA, abs=0.04)


def test_ddim_eta0_is_deterministic_and_ddpm_follows_its_generator():
    schedule = NoiseSchedule()
    noise = torch.randn(16, 2)
    a = sample(exact_eps(schedule), noise, schedule, "ddim", 20)
    b = sample(exact_eps(schedule), noise, schedule, "ddim", 20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    runs = [sample(exact_eps(schedule), noise, schedule, "ddpm", 100, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_ddim_with_eta_one_is_the_strided_ddpm_posterior():
    schedule = NoiseSchedule()
    noise = torch.randn(64, 1)
    runs = [sample(exact_eps(schedule), noise, schedule, s, 50, 1.0, generator=torch.Generator().manual_seed(3)) for s in ("ddim", "ddpm")]
    assert torch.allclose(runs[0], runs[1], atol=1e-6)


def test_ddim_inversion_then_sampling_returns_the_input_for_a_linear_model():
    schedule = NoiseSchedule()
    x0 = MU + SIGMA * torch.randn(64, 1, dtype=torch.float64)
    errors = []
    for steps in (100, 1000):
        noise = ddim_invert(exact_eps(schedule), x0, schedule, steps)
        errors.append((sample(exact_eps(schedule), noise, schedule, "ddim", steps) - x0).abs().max().item())
    # Inversion evaluates ε one step early, so the round trip is exact up to a first-order error.
    assert errors[1] < 0.01 and errors[1] < errors[0] / 5
    assert noise.std().item() == pytest.approx(1.0, abs=0.25)  # it really went to noise


def test_guidance_weight_one_is_the_conditional_and_zero_the_unconditional():
    net = lambda x, t, y: x * (y[:, None].float() + 1)  # noqa: E731  (each class scales differently)
    x, t, y = torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3])
    assert torch.equal(guided(net, y, 1.0, null_class=10)(x, t), net(x, t, y))
    assert torch.allclose(guided(net, y, 0.0, null_class=10)(x, t), net(x, t, torch.full_like(y, 10)))
    w = 3.0
    expected = net(x, t, torch.full_like(y, 10)) + w * (net(x, t, y) - net(x, t, torch.full_like(y, 10)))
    assert torch.allclose(guided(net, y, w, null_class=10)(x, t), expected)


def test_guidance_makes_one_batched_call():
    calls = []

    def net(x, t, y):
        calls.append(len(x))
        return x

    guided(net, torch.tensor([1, 2]), 4.0, null_class=10)(torch.randn(2, 3), torch.zeros(2, dtype=torch.long))
    assert calls == [4]


def test_callback_replacing_x_is_honoured():
    schedule = NoiseSchedule()
    seen = []

    def clamp_first(i, t, x, x0):
        seen.append(t)
        x = x.clone()
        x[:, 0] = 0.0
        return x

    out = sample(exact_eps(schedule), torch.randn(8, 2), schedule, "ddim", 10, callback=clamp_first)
    assert torch.all(out[:, 0] == 0) and seen == timesteps(10, 1000)


def test_starting_at_an_intermediate_timestep_runs_only_the_rest():
    schedule = NoiseSchedule()
    seen = []
    sample(exact_eps(schedule), torch.randn(4, 1), schedule, "ddim", 10, start_t=450, callback=lambda i, t, x, x0: seen.append(t))
    assert seen == [400, 300, 200, 100, 0]


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weights_follow_the_formula(prediction):
    schedule = NoiseSchedule(prediction=prediction)
    t = torch.tensor([10, 900])
    snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])
    expected = snr.clamp(max=5.0) / (snr if prediction == "eps" else snr + 1)
    assert torch.allclose(snr_weight(schedule, t, 5.0), expected)
    assert snr[0] > 5 > snr[1]  # one clipped, one not: both branches of the formula are exercised


def test_the_loss_is_zero_for_the_exact_predictor_of_point_data():
    schedule = NoiseSchedule()
    # point data x_0 = μ: the exact ε-predictor is ε* with σ = 0
    loss = diffusion_loss(exact_eps(schedule, MU, 0.0), torch.full((256, 2), MU), schedule, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-10


def test_slerp_keeps_the_norm_of_orthogonal_unit_vectors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, 0.5)
    assert mid.norm().item() == pytest.approx(1.0) and torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b)

"""The bench's metric code against values worked out by hand: a regression here would skew every figure.

Fréchet distance (bench/ldm_quality.py), the judge's figures (confident share, texture,
histogram), edge/scribble F1 and depth correlation (bench/controlnet.py ``fidelity``), and the
results rows (bench/common.py). No data set, no network, no trained judge: every input is made here.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy.linalg import sqrtm

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import common  # noqa: E402
from controlnet import fidelity  # noqa: E402
from ldm_quality import figures, frechet_distance  # noqa: E402


def with_moments(n: int, mean: list[float], cov: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """n points [n, D] whose sample mean and (unbiased) sample covariance are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # now exactly zero mean, identity covariance
    return z @ torch.linalg.cholesky(cov.double()).T + torch.tensor(mean, dtype=torch.float64)


def rotation(degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)


# --- Fréchet distance ---


def test_the_frechet_distance_of_a_set_with_itself_is_zero():
    feats = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_the_frechet_distance_of_two_gaussians_with_diagonal_covariances_is_the_closed_form():
    # |μ1 − μ2|² = 3² + 4² = 25; Σ1 = diag(1, 4), Σ2 = diag(4, 9): tr term = (1 − 2)² + (2 − 3)² = 2
    a = with_moments(200, [0.0, 0.0], torch.diag(torch.tensor([1.0, 4.0])))
    b = with_moments(300, [3.0, 4.0], torch.diag(torch.tensor([4.0, 9.0])), seed=1)
    assert frechet_distance(a, b) == pytest.approx(27.0, abs=1e-9)


def test_the_cross_term_is_the_matrix_square_root_not_an_elementwise_one():
    # Σ1 = I, Σ2 = R diag(4, 9) Rᵀ (not diagonal): tr(I + Σ2 − 2 Σ2^½) = (1 − 2)² + (1 − 3)² = 5
    r = rotation(30)
    a = with_moments(200, [1.0, -1.0], torch.eye(2))
    b = with_moments(200, [1.0, -1.0], r @ torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64)) @ r.T, seed=1)
    assert frechet_distance(a, b) == pytest.approx(5.0, abs=1e-9)


def test_the_frechet_distance_matches_the_textbook_form_and_is_symmetric():
    # neither covariance is the identity and they do not commute: tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), with scipy's sqrtm
    s1 = rotation(20) @ torch.diag(torch.tensor([0.5, 3.0], dtype=torch.float64)) @ rotation(20).T
    s2 = rotation(-50) @ torch.diag(torch.tensor([2.0, 0.3], dtype=torch.float64)) @ rotation(-50).T
    a, b = with_moments(150, [0.5, 2.0], s1), with_moments(250, [-1.0, 0.0], s2, seed=2)
    expected = (1.5**2 + 2.0**2) + float(torch.trace(s1 + s2)) - 2 * float(sqrtm((s1 @ s2).numpy()).real.trace())
    assert frechet_distance(a, b) == pytest.approx(expected, abs=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, abs=1e-9)


# --- the judge's figures ---


def probabilities(rows: list[tuple[int, float]]) -> torch.Tensor:
    """[N, 10] class probabilities: each row gives ``p`` to its class and the rest evenly to the other nine."""
    probs = torch.empty(len(rows), 10)
    for i, (c, p) in enumerate(rows):
        probs[i] = (1 - p) / 9
        probs[i, c] = p
    return probs


def test_a_sample_is_confident_from_a_top_probability_of_nine_tenths():
    probs = probabilities([(3, 0.95), (3, 0.90), (7, 0.89), (1, 0.5)])
    assert common.CONFIDENT == 0.9
    assert common.confident_share(probs) == pytest.approx(0.5)  # 0.95 and 0.90 count, 0.89 does not


def test_the_judges_figures_of_hand_made_probabilities():
    probs = probabilities([(0, 0.99), (0, 0.90), (2, 0.6), (5, 0.45)])  # 0.90: confident; 0.45: no class ≥ 0.5, a texture
    feats = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    got, pred = figures(probs, feats, feats)
    assert pred.tolist() == [0, 0, 2, 5]
    assert got["confident"] == 0.5 and got["texture"] == 0.25
    assert got["histogram"] == [50.0, 0.0, 25.0, 0.0, 0.0, 25.0, 0.0, 0.0, 0.0, 0.0]
    assert got["frechet_distance"] == pytest.approx(0.0, abs=1e-6)


def test_the_judge_sees_the_centre_28x28_of_a_padded_32x32_digit():
    digit = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    digit[..., :2, :] = 255  # ink in the padding only: cropped away
    digit[..., 10, 12] = 255
    seen = common.centre28(digit)
    assert seen.shape == (1, 1, 28, 28) and seen[0, 0, 8, 10] == 1.0
    assert (seen == -1.0).sum() == 28 * 28 - 1  # to_float: 0 -> -1, 255 -> 1


def test_the_judge_returns_probabilities_and_features_batch_by_batch():
    class Fake(torch.nn.Module):  # logits: the mean ink in the first channel; features: the ink itself
        def forward(self, x):
            ink = x.flatten(1)[:, :2]
            return torch.cat([ink, torch.zeros(len(x), 8)], 1), ink

    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    probs, feats = common.judge(Fake(), images, batch=2)
    assert probs.shape == (5, 10) and torch.allclose(probs.sum(1), torch.ones(5))
    assert torch.equal(feats, common.centre28(images).flatten(1)[:, :2])


# --- control fidelity ---


def bar(row: int = 8, size: int = 16) -> torch.Tensor:
    """A one-pixel horizontal line, uint8 [1, 1, size, size], as an edge or scribble map draws it."""
    m = torch.zeros(1, 1, size, size, dtype=torch.uint8)
    m[..., row, 3:13] = 255
    return m


@pytest.mark.parametrize("kind", ["edges", "scribble"])
def test_the_f1_of_a_map_with_itself_is_one_and_with_an_empty_map_zero(kind):
    empty = torch.zeros_like(bar())
    assert fidelity(kind, bar(), bar()).tolist() == [1.0]
    assert fidelity(kind, empty, bar()).tolist() == [0.0]  # nothing drawn: recall 0
    assert fidelity(kind, bar(), empty).tolist() == [0.0]  # drawn where nothing was asked: precision 0


def test_the_f1_tolerates_a_shift_of_one_pixel_and_not_of_two():
    assert fidelity("edges", bar(9), bar(8)).tolist() == [1.0]
    assert fidelity("edges", bar(10), bar(8)).tolist() == [0.0]


def test_the_f1_of_a_map_with_as_many_stray_pixels_as_matched_ones_is_two_thirds():
    made = bar()
    made[..., 1, 3:13] = 255  # ten more pixels far from the asked line: precision 1/2, recall 1
    assert fidelity("scribble", made, bar()).item() == pytest.approx(2 / 3)


def test_a_map_pixel_is_on_above_127():
    faint = bar() // 2  # 127: off
    assert fidelity("edges", faint, bar()).tolist() == [0.0]
    assert fidelity("edges", faint + 1, bar()).tolist() == [1.0]  # 128: on


def test_the_f1_is_per_image():
    made = torch.cat([bar(), torch.zeros_like(bar())])
    assert fidelity("edges", made, torch.cat([bar(), bar()])).tolist() == [1.0, 0.0]


def test_depth_fidelity_is_the_pearson_correlation():
    depth = torch.randint(0, 120, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    assert fidelity("depth", depth, depth) == pytest.approx(torch.ones(2))
    assert fidelity("depth", 2 * depth + 10, depth) == pytest.approx(torch.ones(2))  # blind to scale and offset
    assert fidelity("depth", 255 - depth, depth) == pytest.approx(-torch.ones(2))


# --- the results rows ---


def test_a_results_row_carries_its_provenance(tmp_path):
    path = tmp_path / "results.jsonl"
    common.record({"bench": "a", "figure": 0.5, "date": "overwritten"}, path)
    common.record({"bench": "b"}, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["bench"] for r in rows] == ["a", "b"] and rows[0]["figure"] == 0.5
    for key in ("commit", "dirty", "date", "torch", "threads", "machine", "load_average"):
        assert key in rows[0], key
    assert rows[0]["date"] != "overwritten" and rows[0]["torch"] == torch.__version__
    assert rows[0]["threads"] == torch.get_num_threads() and len(rows[0]["load_average"]) == 3
    head = subprocess.run(["git", "-C", str(BENCH), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True)
    assert rows[0]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)


def test_the_data_root_is_vd_data_root_else_shared_datasets_beside_the_repository(monkeypatch, tmp_path):
    monkeypatch.setenv("VD_DATA_ROOT", str(tmp_path))
    assert common.data_root() == tmp_path
    monkeypatch.delenv("VD_DATA_ROOT")
    assert common.data_root() == BENCH.parent.parent / "shared" / "datasets"


# --- the peers' bookkeeping (bench/peers.py; diffusers and timm are imported only by its cases) ---


def test_the_peer_ratio_is_the_median_of_the_pairs_with_its_quartiles_and_extremes():
    from peers import spread

    assert spread([1.0, 1.2, 1.3, 1.4, 2.0]) == {"ratio": 1.3, "ratio_q1": 1.2, "ratio_q3": 1.4, "ratio_min": 1.0, "ratio_max": 2.0}


def test_the_days_best_matmul_peak_is_read_from_todays_peers_rows_only(tmp_path):
    import time

    from peers import best_peak_today

    path, today = tmp_path / "results.jsonl", time.strftime("%Y-%m-%d")
    rows = [{"bench": "peers", "date": f"{today} 09:00", "matmul_peak_gflops": 300.0},
            {"bench": "peers", "date": f"{today} 10:00", "matmul_peak_gflops": 160.0},
            {"bench": "peers", "date": "2000-01-01 10:00", "matmul_peak_gflops": 900.0},  # another day
            {"bench": "ldm_quality", "date": f"{today} 11:00", "matmul_peak_gflops": 800.0}]  # another bench
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert best_peak_today(path) == 300.0
    assert best_peak_today(tmp_path / "none.jsonl") == 0.0

"""Tests of ibcore.estimators.mi_bounds on correlated Gaussians with known mutual information.

Setting: X ~ N(0, I_d), Y = ρ X + sqrt(1 − ρ²) E with E ~ N(0, I_d) independent, so each of the
d coordinate pairs is a standard bivariate Gaussian with correlation ρ and

    I(X; Y) = −(d/2) log(1 − ρ²)  nats.

The optimal critic is the log density ratio, which for one coordinate pair is

    log p(x, y) / (p(x) p(y)) = −½ log(1 − ρ²) − (x² − 2ρxy + y²) / (2(1 − ρ²)) + (x² + y²)/2,

summed over the d coordinates (written out in ``_log_ratio`` below).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError
from ibcore.estimators.mi_bounds import (
    MineEMA,
    dv_bound,
    dv_bound_from_samples,
    infonce_bound,
    jsd_bound,
    jsd_bound_from_samples,
    nwj_bound,
    nwj_bound_from_samples,
)

LOG4 = math.log(4.0)


def _true_mi(d: int, rho: float) -> float:
    return -0.5 * d * math.log(1.0 - rho**2)


def _sample(n: int, d: int, rho: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, rho * x + math.sqrt(1.0 - rho**2) * e


def _log_ratio(x: torch.Tensor, y: torch.Tensor, rho: float) -> torch.Tensor:
    """Optimal critic on aligned pairs (x_i, y_i): shape [n]."""
    s = 1.0 - rho**2
    xx, yy, xy = (x * x).sum(-1), (y * y).sum(-1), (x * y).sum(-1)
    d = x.shape[-1]
    return -0.5 * d * math.log(s) - (xx - 2 * rho * xy + yy) / (2 * s) + 0.5 * (xx + yy)


def _score_matrix(x: torch.Tensor, y: torch.Tensor, rho: float) -> torch.Tensor:
    """Optimal critic on all pairs: S[i, j] = log p(x_i, y_j) / (p(x_i) p(y_j))."""
    return _log_ratio(x[:, None, :], y[None, :, :], rho)


# ---------------------------------------------------------------------------------------------
# exact arithmetic on a tiny matrix (independent hand computation)
# ---------------------------------------------------------------------------------------------

TINY = [[1.0, -0.5, 0.2], [0.3, 2.0, -1.0], [0.0, 0.4, 0.5]]


def test_tiny_matrix_by_hand() -> None:
    s = torch.tensor(TINY, dtype=torch.float64)
    diag = [TINY[i][i] for i in range(3)]
    off = [TINY[i][j] for i in range(3) for j in range(3) if i != j]
    mean_diag = sum(diag) / 3
    dv = mean_diag - math.log(sum(math.exp(v) for v in off) / 6)
    nwj = mean_diag - sum(math.exp(v - 1) for v in off) / 6
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    jsd = -sum(sp(-v) for v in diag) / 3 - sum(sp(v) for v in off) / 6
    nce = (
        math.log(3)
        + sum(TINY[i][i] - math.log(sum(math.exp(v) for v in TINY[i])) for i in range(3)) / 3
    )
    assert dv_bound(s).item() == pytest.approx(dv, abs=1e-12)
    assert nwj_bound(s).item() == pytest.approx(nwj, abs=1e-12)
    assert jsd_bound(s).item() == pytest.approx(jsd, abs=1e-12)
    assert infonce_bound(s).item() == pytest.approx(nce, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# optimal critic, score-matrix form
# ---------------------------------------------------------------------------------------------

# N = 1500, d = 2, ρ = 0.5, I = 0.2877 nats. The error is dominated by the diagonal average
# E_P[log r], whose standard deviation is sd_P(log r)/sqrt(N) ≈ 0.72/sqrt(1500) ≈ 0.019 nats
# (measured over 50 seeds at N = 2000: sd 0.016). Tolerance 0.075 ≈ 4 standard deviations.
N_MAT, D_MAT, RHO_MAT, TOL_MAT = 1500, 2, 0.5, 0.075


@pytest.fixture(scope="module")
def optimal_scores() -> torch.Tensor:
    x, y = _sample(N_MAT, D_MAT, RHO_MAT, seed=0)
    return _score_matrix(x, y, RHO_MAT)


def test_dv_with_optimal_critic(optimal_scores: torch.Tensor) -> None:
    truth = _true_mi(D_MAT, RHO_MAT)
    assert abs(dv_bound(optimal_scores).item() - truth) < TOL_MAT


def test_nwj_with_optimal_critic(optimal_scores: torch.Tensor) -> None:
    truth = _true_mi(D_MAT, RHO_MAT)
    # NWJ in the e^{T-1} form is tight at T = 1 + log r ...
    assert abs(nwj_bound(optimal_scores + 1.0).item() - truth) < TOL_MAT
    # ... and with T = log r it equals E_P[log r] - E_Q[r]/e = I - 1/e (E_Q[r] = 1)
    assert abs(nwj_bound(optimal_scores).item() - (truth - math.exp(-1))) < TOL_MAT


def test_infonce_with_optimal_critic(optimal_scores: torch.Tensor) -> None:
    # I = 0.29 ≪ log 1500 = 7.3: the log N ceiling costs about E_P[r]/N ≈ 0.001 nats here
    truth = _true_mi(D_MAT, RHO_MAT)
    value = infonce_bound(optimal_scores).item()
    assert value <= math.log(N_MAT)
    assert abs(value - truth) < TOL_MAT


def test_infonce_never_exceeds_log_n() -> None:
    # d = 10, ρ = 0.999: I = 31 nats ≫ log 64 = 4.16; InfoNCE saturates just below log N
    n = 64
    x, y = _sample(n, 10, 0.999, seed=3)
    value = infonce_bound(_score_matrix(x, y, 0.999)).item()
    assert value <= math.log(n)
    assert value > math.log(n) - 0.05
    g = torch.Generator().manual_seed(4)
    for _ in range(20):
        s = torch.randn(n, n, generator=g, dtype=torch.float64) * 50
        assert infonce_bound(s).item() <= math.log(n) + 1e-12


def test_dv_with_a_suboptimal_critic(optimal_scores: torch.Tensor) -> None:
    # T = ½ log r is suboptimal. Its DV value is ½ I − log E_Q[r^½], and E_Q[r^½] = ∫ sqrt(p q)
    # is the Bhattacharyya coefficient of P = N(0, [[1, ρ], [ρ, 1]]) and Q = N(0, I) per
    # coordinate pair: det(Σ_P)^¼ / det((Σ_P + I)/2)^½ = (1 − ρ²)^¼ / (1 − ρ²/4)^½.
    truth = _true_mi(D_MAT, RHO_MAT)
    bc = (1 - RHO_MAT**2) ** 0.25 / (1 - RHO_MAT**2 / 4) ** 0.5
    expected = 0.5 * truth - D_MAT * math.log(bc)
    assert expected < truth - 0.06  # 0.223 vs 0.288 nats: the bound is not tight
    # the estimator's noise is about half that of the optimal critic (T is scaled by ½)
    assert abs(dv_bound(0.5 * optimal_scores).item() - expected) < TOL_MAT / 2


# ---------------------------------------------------------------------------------------------
# JSD estimator: compare with 2 JSD(P || Q) − log 4 computed by quadrature
# ---------------------------------------------------------------------------------------------


def _jsd_quadrature(rho: float, half_width: float = 9.0, n: int = 901) -> float:
    """JSD(P‖Q) in nats, P = N(0, [[1, ρ], [ρ, 1]]), Q = N(0, I₂), by a 2-D Riemann sum.

    Both densities are smooth and decay like Gaussians, so an equispaced sum on [−9, 9]² with
    step 0.02 is accurate far beyond the Monte-Carlo tolerance of the test.
    """
    t = np.linspace(-half_width, half_width, n)
    h = t[1] - t[0]
    x, y = np.meshgrid(t, t, indexing="ij")
    s = 1.0 - rho**2
    p = np.exp(-(x**2 - 2 * rho * x * y + y**2) / (2 * s)) / (2 * np.pi * np.sqrt(s))
    q = np.exp(-(x**2 + y**2) / 2) / (2 * np.pi)
    m = 0.5 * (p + q)
    kl_pm = np.sum(p * (np.log(p) - np.log(m))) * h * h
    kl_qm = np.sum(q * (np.log(q) - np.log(m))) * h * h
    return 0.5 * kl_pm + 0.5 * kl_qm


def test_jsd_quadrature_sanity() -> None:
    assert _jsd_quadrature(0.0) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < _jsd_quadrature(0.8) < math.log(2)


def test_jsd_with_optimal_critic_matches_quadrature() -> None:
    rho = 0.8
    target = 2.0 * _jsd_quadrature(rho) - LOG4
    # matrix form, N = 1500: measured sd over 50 seeds at N = 2000 was 0.0095, so ≈ 0.011 here;
    # tolerance 0.045 ≈ 4 sd
    x, y = _sample(1500, 1, rho, seed=1)
    assert abs(jsd_bound(_score_matrix(x, y, rho)).item() - target) < 0.045
    # vector form with 1e5 joint and 1e5 shuffled pairs: sd ≈ 0.0017 (30 seeds); tol ≈ 5 sd
    x, y = _sample(100_000, 1, rho, seed=2)
    perm = torch.randperm(100_000, generator=torch.Generator().manual_seed(5))
    value = jsd_bound_from_samples(_log_ratio(x, y, rho), _log_ratio(x, y[perm], rho)).item()
    assert abs(value - target) < 0.009
    # the JSD estimator is −log 4 for a constant-zero critic (D = ½ everywhere)
    z = torch.zeros(10, dtype=torch.float64)
    assert jsd_bound_from_samples(z, z).item() == pytest.approx(-LOG4)


# ---------------------------------------------------------------------------------------------
# two-vector form with independently shuffled negatives, large samples
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("d", "rho"), [(2, 0.5), (1, 0.8)])
def test_vector_forms_with_optimal_critic(d: int, rho: float) -> None:
    # n = 1e5 joint pairs, 1e5 pairs with y shuffled. Measured sd over 30 seeds: 0.0036 (d=2,
    # ρ=0.5) and 0.0040 (d=1, ρ=0.8) for both DV and NWJ; tolerance 0.02 ≈ 5 sd.
    n = 100_000
    truth = _true_mi(d, rho)
    x, y = _sample(n, d, rho, seed=10 + d)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(20 + d))
    joint, marg = _log_ratio(x, y, rho), _log_ratio(x, y[perm], rho)
    assert abs(dv_bound_from_samples(joint, marg).item() - truth) < 0.02
    assert abs(nwj_bound_from_samples(joint + 1, marg + 1).item() - truth) < 0.02


def test_vector_forms_accept_different_lengths() -> None:
    j = torch.tensor([1.0, 2.0])
    m = torch.tensor([0.0, 0.5, -0.5])
    expected = 1.5 - math.log((1 + math.exp(0.5) + math.exp(-0.5)) / 3)
    assert dv_bound_from_samples(j, m).item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# MineEMA
# ---------------------------------------------------------------------------------------------


def test_mine_ema_value_and_gradient() -> None:
    g = torch.Generator().manual_seed(7)
    decay = 0.9
    mine = MineEMA(decay=decay)
    s1 = torch.randn(6, 6, generator=g, dtype=torch.float64)
    s2 = torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mine.objective(s1)
    off = ~torch.eye(6, dtype=torch.bool)
    m1 = s1[off].exp().mean()
    torch.testing.assert_close(mine.running_mean, m1)

    value = mine.objective(s2)
    # value is the plain DV bound of this batch
    torch.testing.assert_close(value.detach(), dv_bound(s2.detach()))
    m2 = decay * m1 + (1 - decay) * s2.detach()[off].exp().mean()
    torch.testing.assert_close(mine.running_mean, m2)
    value.backward()
    # corrected gradient: 1/N on the diagonal, −e^{s_ij} / (N(N−1) m) off the diagonal
    expected = -s2.detach().exp() / (30 * m2)
    expected[~off] = 1.0 / 6
    torch.testing.assert_close(s2.grad, expected)


def test_mine_ema_loss_is_negative_objective_and_decay_zero_is_plain_dv() -> None:
    g = torch.Generator().manual_seed(8)
    s = torch.randn(5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mine = MineEMA(decay=0.0)
    mine.loss(s).backward()
    grad_loss = s.grad.clone()
    s.grad = None
    (-dv_bound(s)).backward()
    # with decay 0 the average is the batch mean, so the gradient is the plain DV gradient
    torch.testing.assert_close(grad_loss, s.grad)
    joint, marg = torch.randn(4, generator=g), torch.randn(9, generator=g)
    mine.reset()
    assert mine.running_mean is None
    torch.testing.assert_close(
        mine.loss_from_samples(joint, marg), -dv_bound_from_samples(joint, marg)
    )


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [dv_bound, nwj_bound, jsd_bound, infonce_bound])
def test_matrix_errors(fn) -> None:
    with pytest.raises(ShapeError):
        fn(torch.zeros(3, 4))
    with pytest.raises(ShapeError):
        fn(torch.zeros(3))
    with pytest.raises(ShapeError):
        fn(torch.zeros(1, 1))
    with pytest.raises(ShapeError):
        fn([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(InvalidParameterError):
        fn(torch.zeros(3, 3, dtype=torch.int64))
    bad = torch.zeros(3, 3)
    bad[0, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        fn(bad)


@pytest.mark.parametrize(
    "fn", [dv_bound_from_samples, nwj_bound_from_samples, jsd_bound_from_samples]
)
def test_vector_errors(fn) -> None:
    with pytest.raises(ShapeError):
        fn(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ShapeError):
        fn(torch.zeros(3), torch.zeros(0))
    with pytest.raises(NonFiniteError):
        fn(torch.zeros(3), torch.tensor([0.0, float("inf")]))


def test_mine_ema_errors() -> None:
    with pytest.raises(InvalidParameterError):
        MineEMA(decay=1.0)
    with pytest.raises(InvalidParameterError):
        MineEMA(decay=-0.1)
    with pytest.raises(ShapeError):
        MineEMA().loss(torch.zeros(2, 3))


def test_mine_ema_state_round_trips_through_state_dict() -> None:
    # A copy restored from state_dict (as a Trainer checkpoint does) continues with the same
    # running average, so the next corrected gradient is identical; a fresh object differs.
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(8, 8, generator=gen, dtype=torch.float64) for _ in range(4)]
    ema = MineEMA(0.9)
    for b in batches[:3]:
        ema.objective(b)
    restored, fresh = MineEMA(0.9), MineEMA(0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.running_mean is not None and fresh.running_mean is None
    grads = []
    for obj in (ema, restored, fresh):
        s = batches[3].clone().requires_grad_(True)
        obj.objective(s).backward()
        grads.append(s.grad)
    assert torch.equal(grads[0], grads[1])
    assert not torch.allclose(grads[0], grads[2])
    ema.reset()
    assert ema.running_mean is None

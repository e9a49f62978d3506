"""Tests of ibcore.estimators.gaussian_ib (Chechik et al. 2005) against exact log-det MI values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError
from ibcore.estimators.gaussian_ib import (
    critical_betas,
    gaussian_ib_curve,
    gaussian_ib_eigen,
    gaussian_ib_projection,
    gaussian_mutual_information,
    mutual_information_linear_gaussian,
)

DX, DY = 4, 3


def _random_joint(seed: int, dx: int = DX, dy: int = DY) -> tuple[torch.Tensor, ...]:
    """A random SPD joint covariance of (X, Y), split into its blocks (float64)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(dx + dy, dx + dy, generator=g, dtype=torch.float64)
    joint = b @ b.T / (dx + dy) + 0.3 * torch.eye(dx + dy, dtype=torch.float64)
    return joint[:dx, :dx], joint[:dx, dx:], joint[dx:, dx:]


@pytest.fixture(scope="module")
def cov() -> tuple[torch.Tensor, ...]:
    return _random_joint(0)


def _lagrangian(a, cov, beta: float) -> float:
    i_tx, i_ty = mutual_information_linear_gaussian(a, *cov)
    return float(i_tx - beta * i_ty)


def test_linear_gaussian_mi_scalar_hand_case() -> None:
    # X ~ N(0, sx²), Y = X + N(0, sn²), T = aX + ξ, ξ ~ N(0, 1). For jointly Gaussian scalars
    # I = −½ log(1 − ρ²); I(T;X) = ½ log(1 + a² sx²) and ρ_TY² = (a sx²)² / ((a² sx² + 1)(sx² + sn²)).
    sx2, sn2, a = 2.0, 0.5, 0.7
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    i_tx, i_ty = mutual_information_linear_gaussian(t(a), t(sx2), t(sx2), t(sx2 + sn2))
    rho2 = (a * sx2) ** 2 / ((a * a * sx2 + 1) * (sx2 + sn2))
    assert i_tx.item() == pytest.approx(0.5 * math.log(1 + a * a * sx2), rel=1e-12)
    assert i_ty.item() == pytest.approx(-0.5 * math.log(1 - rho2), rel=1e-12)
    # noise variance 4: same as a/2 with unit noise
    i_tx4, i_ty4 = mutual_information_linear_gaussian(t(a), t(sx2), t(sx2), t(sx2 + sn2), t(4.0))
    i_tx2, i_ty2 = mutual_information_linear_gaussian(t(a / 2), t(sx2), t(sx2), t(sx2 + sn2))
    assert i_tx4.item() == pytest.approx(i_tx2.item(), rel=1e-12)
    assert i_ty4.item() == pytest.approx(i_ty2.item(), rel=1e-12)


def test_mutual_information_xy_matches_joint_logdets(cov) -> None:
    cx, cxy, cy = cov
    joint = np.block([[cx.numpy(), cxy.numpy()], [cxy.numpy().T, cy.numpy()]])
    # I(X;Y) = ½ (log det Σx + log det Σy − log det Σ)
    ref = 0.5 * (
        np.linalg.slogdet(cx.numpy())[1]
        + np.linalg.slogdet(cy.numpy())[1]
        - np.linalg.slogdet(joint)[1]
    )
    assert gaussian_mutual_information(*cov).item() == pytest.approx(ref, rel=1e-10)


def test_eigen_matches_scipy_generalised_problem(cov) -> None:
    cx, cxy, cy = cov
    cxgy = cx - cxy @ torch.linalg.solve(cy, cxy.T)
    ref = scipy.linalg.eigh(cxgy.numpy(), cx.numpy(), eigvals_only=True)
    lambdas, v = gaussian_ib_eigen(*cov)
    np.testing.assert_allclose(lambdas.numpy(), np.sort(ref), rtol=1e-10)
    # Σ_xy has rank DY < DX, so DX − DY directions of X are independent of Y: λ = 1 there
    assert bool((lambdas > 0).all())
    assert bool((lambdas[:DY] < 1 - 1e-6).all())
    torch.testing.assert_close(lambdas[DY:], torch.ones(DX - DY, dtype=torch.float64))
    # left eigenvectors: vᵀ Σ_{x|y} Σ_x⁻¹ = λ vᵀ
    left = v.T @ cxgy @ torch.linalg.inv(cx)
    torch.testing.assert_close(left, lambdas[:, None] * v.T, rtol=1e-9, atol=1e-9)
    crit = critical_betas(*cov)
    torch.testing.assert_close(crit[:DY], 1 / (1 - torch.tensor(np.sort(ref)[:DY])))
    assert bool(torch.isinf(crit[DY:]).all())
    assert bool((crit[1:] >= crit[:-1]).all())


@pytest.mark.parametrize(("seed", "dx", "dy"), [(0, DX, DY), (5, 3, 4), (6, 2, 2), (7, 5, 1)])
def test_closed_form_curve_equals_exact_mi_of_optimal_projection(seed, dx, dy) -> None:
    cov = _random_joint(seed, dx, dy)
    crit = critical_betas(*cov)
    finite = crit[torch.isfinite(crit)]
    betas = [
        0.5,
        1.0,
        float(crit[0]) * 0.99,
        float(crit[0]) * 1.5,
        float(finite[-1]) * 1.01,
        50.0,
        1e4,
    ]
    if len(finite) > 1:
        betas.append(float(finite[1]) * 1.2)
    curve = gaussian_ib_curve(*cov, betas)
    for k, beta in enumerate(betas):
        a = gaussian_ib_projection(*cov, beta)
        i_tx, i_ty = mutual_information_linear_gaussian(a, *cov)
        assert abs(i_tx.item() - curve["i_tx"][k].item()) < 1e-6
        assert abs(i_ty.item() - curve["i_ty"][k].item()) < 1e-6
        # zero up to the first critical value, positive beyond it
        assert (curve["i_tx"][k].item() > 0) == (beta > float(crit[0]))


def test_projection_is_a_local_and_global_optimum(cov) -> None:
    # the IB Lagrangian I(T;X) − β I(T;Y) at A(β) is below that of perturbed and random encoders
    g = torch.Generator().manual_seed(1)
    crit = critical_betas(*cov)
    for beta in [float(crit[1]) * 1.3, 20.0]:
        a = gaussian_ib_projection(*cov, beta)
        best = _lagrangian(a, cov, beta)
        for scale in [1e-3, 1e-2, 1e-1, 1.0]:
            for _ in range(10):
                delta = torch.randn(DX, DX, generator=g, dtype=torch.float64) * scale
                assert _lagrangian(a + delta, cov, beta) >= best - 1e-10
        for _ in range(20):  # random encoders with more output dimensions
            r = torch.randn(6, DX, generator=g, dtype=torch.float64) * 3
            assert _lagrangian(r, cov, beta) >= best - 1e-10


def test_information_bounds_and_zero_below_first_critical_beta(cov) -> None:
    crit = critical_betas(*cov)
    i_xy = gaussian_mutual_information(*cov).item()
    betas = torch.logspace(-1, 6, 60, dtype=torch.float64)
    curve = gaussian_ib_curve(*cov, betas)
    assert bool((curve["i_ty"] <= i_xy + 1e-12).all())
    assert bool((curve["i_ty"] <= curve["i_tx"] + 1e-12).all())  # data processing
    assert curve["i_ty"][-1].item() == pytest.approx(i_xy, abs=1e-4)  # β = 1e6
    below = betas <= crit[0]
    assert bool(below.any())
    assert bool((curve["i_tx"][below] == 0).all()) and bool((curve["i_ty"][below] == 0).all())
    a = gaussian_ib_projection(*cov, float(crit[0]) * 0.999)
    assert bool((a == 0).all())
    # just above β₁ᶜ exactly one row is active
    a = gaussian_ib_projection(*cov, float(crit[0]) * 1.001)
    assert int((a.abs().sum(dim=1) > 0).sum()) == 1


def test_curve_is_increasing_and_concave_with_slope_one_over_beta(cov) -> None:
    crit = critical_betas(*cov)
    betas = torch.linspace(float(crit[0]) * 1.01, 60.0, 400, dtype=torch.float64)
    curve = gaussian_ib_curve(*cov, betas)
    x, y = curve["i_tx"], curve["i_ty"]
    dx, dy = x[1:] - x[:-1], y[1:] - y[:-1]
    assert bool((dx > 0).all()) and bool((dy > 0).all())
    slopes = dy / dx
    assert bool((slopes[1:] <= slopes[:-1] + 1e-9).all())  # concave
    # the secant slope between β_k and β_{k+1} lies between 1/β_{k+1} and 1/β_k
    assert bool((slopes <= 1 / betas[:-1] + 1e-9).all())
    assert bool((slopes >= 1 / betas[1:] - 1e-9).all())


def test_float32_inputs_work() -> None:
    cov32 = tuple(c.float() for c in _random_joint(2))
    curve = gaussian_ib_curve(*cov32, [5.0])
    assert curve["i_tx"].dtype == torch.float32
    # numpy arrays and tensors of β are accepted too
    for betas in (np.array([5.0]), torch.tensor([5.0])):
        assert gaussian_ib_curve(*cov32, betas)["i_tx"].item() == curve["i_tx"].item()
    a = gaussian_ib_projection(*cov32, 5.0)
    i_tx, _ = mutual_information_linear_gaussian(a, *cov32)
    assert i_tx.item() == pytest.approx(curve["i_tx"][0].item(), rel=1e-3)


def test_linear_gaussian_mi_is_differentiable(cov) -> None:
    a = torch.randn(2, DX, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a.requires_grad_(True)
    i_tx, i_ty = mutual_information_linear_gaussian(a, *cov)
    (i_tx - 5.0 * i_ty).backward()
    assert a.grad is not None and bool(torch.isfinite(a.grad).all())


def test_errors(cov) -> None:
    cx, cxy, cy = cov
    with pytest.raises(InvalidParameterError):
        gaussian_ib_projection(cx, cxy, cy, -1.0)
    with pytest.raises(InvalidParameterError):
        gaussian_ib_projection(cx, cxy, cy, float("nan"))
    with pytest.raises(InvalidParameterError):
        gaussian_ib_curve(cx, cxy, cy, [1.0, -2.0])
    not_spd = cx.clone()
    not_spd[0, 0] = -1.0
    with pytest.raises(InvalidParameterError):
        critical_betas(not_spd, cxy, cy)
    # each block SPD but the joint is not (|correlation| > 1)
    one = torch.ones(1, 1, dtype=torch.float64)
    with pytest.raises(InvalidParameterError):
        gaussian_ib_eigen(one, 2 * one, one)
    asym = cx.clone()
    asym[0, 1] += 0.5
    with pytest.raises(InvalidParameterError):
        gaussian_ib_eigen(asym, cxy, cy)
    with pytest.raises(ShapeError):
        gaussian_ib_eigen(cx, cxy.T, cy)
    with pytest.raises(ShapeError):
        gaussian_ib_eigen(cx[:, :3], cxy, cy)
    with pytest.raises(ShapeError):
        gaussian_ib_curve(cx, cxy, cy, [])
    nan = cy.clone()
    nan[1, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        gaussian_ib_eigen(cx, cxy, nan)
    with pytest.raises(ShapeError):
        mutual_information_linear_gaussian(torch.zeros(2, DX + 1, dtype=torch.float64), *cov)
    with pytest.raises(ShapeError):
        mutual_information_linear_gaussian(
            torch.zeros(2, DX, dtype=torch.float64), *cov, noise_cov=torch.eye(3)
        )
    with pytest.raises(InvalidParameterError):
        mutual_information_linear_gaussian(
            torch.zeros(2, DX, dtype=torch.float64), *cov, noise_cov=-torch.eye(2)
        )

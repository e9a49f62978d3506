"""Tests of ibcore.estimators.kl against torch.distributions.kl_divergence."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Dirichlet, Independent, Normal, kl_divergence

from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError
from ibcore.estimators.kl import (
    gmvib_rate,
    kl_diag_gaussian_std_normal,
    kl_diag_gaussians,
    kl_dirichlet,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ref_diag_gauss(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    q = Independent(Normal(mu_q, (0.5 * logvar_q).exp()), 1)
    p = Independent(Normal(mu_p, (0.5 * logvar_p).exp()), 1)
    return kl_divergence(q, p)


def test_std_normal_matches_torch_distributions() -> None:
    g = _gen(1)
    mu = torch.randn(7, 3, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(7, 3, 5, generator=g, dtype=torch.float64)
    got = kl_diag_gaussian_std_normal(mu, logvar)
    ref = _ref_diag_gauss(mu, logvar, torch.zeros_like(mu), torch.zeros_like(logvar))
    assert got.shape == (7, 3)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_std_normal_hand_case() -> None:
    # mu = (1, 0), sigma^2 = (1, e): 0.5 * [(1 + 1 - 0 - 1) + (0 + e - 1 - 1)] = 0.5 * (e - 1)
    mu = torch.tensor([1.0, 0.0], dtype=torch.float64)
    logvar = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert kl_diag_gaussian_std_normal(mu, logvar).item() == pytest.approx(0.5 * (math.e - 1))


def test_std_normal_zero_at_prior() -> None:
    z = torch.zeros(4, 6)
    assert torch.equal(kl_diag_gaussian_std_normal(z, z), torch.zeros(4))


def test_diag_gaussians_matches_torch_distributions() -> None:
    g = _gen(2)
    shape = (11, 4)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in "abcd")
    got = kl_diag_gaussians(mu_q, lv_q, mu_p, lv_p)
    torch.testing.assert_close(got, _ref_diag_gauss(mu_q, lv_q, mu_p, lv_p), rtol=1e-12, atol=1e-12)


def test_diag_gaussians_broadcast_prior() -> None:
    g = _gen(3)
    mu_q = torch.randn(5, 3, generator=g, dtype=torch.float64)
    lv_q = torch.randn(5, 3, generator=g, dtype=torch.float64)
    mu_p = torch.randn(3, generator=g, dtype=torch.float64)
    lv_p = torch.randn(3, generator=g, dtype=torch.float64)
    ref = _ref_diag_gauss(mu_q, lv_q, mu_p.expand(5, 3), lv_p.expand(5, 3))
    torch.testing.assert_close(kl_diag_gaussians(mu_q, lv_q, mu_p, lv_p), ref)
    # and the special case p = N(0, I) agrees with the dedicated function
    zeros = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(
        kl_diag_gaussians(mu_q, lv_q, zeros, zeros), kl_diag_gaussian_std_normal(mu_q, lv_q)
    )


def test_dirichlet_matches_torch_distributions() -> None:
    g = _gen(4)
    a = torch.rand(9, 6, generator=g, dtype=torch.float64) * 5 + 0.05
    b = torch.rand(9, 6, generator=g, dtype=torch.float64) * 5 + 0.05
    got = kl_dirichlet(a, b)
    assert got.shape == (9,)
    ref = kl_divergence(Dirichlet(a), Dirichlet(b))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_dirichlet_scalar_and_vector_prior() -> None:
    g = _gen(5)
    a = torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.1
    ref = kl_divergence(Dirichlet(a), Dirichlet(torch.full_like(a, 0.7)))
    torch.testing.assert_close(kl_dirichlet(a, 0.7), ref)
    prior = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    ref = kl_divergence(Dirichlet(a), Dirichlet(prior.expand(4, 3)))
    torch.testing.assert_close(kl_dirichlet(a, prior), ref)


def test_gmvib_rate_matches_sum_of_torch_kls() -> None:
    g = _gen(6)
    b, k, d = 8, 4, 5
    mu = torch.randn(b, k, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(b, k, d, generator=g, dtype=torch.float64) * 0.5
    alpha = torch.rand(b, k, generator=g, dtype=torch.float64) * 3 + 0.1
    prior = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=torch.float64)
    gauss = kl_divergence(
        Independent(Normal(mu, (0.5 * logvar).exp()), 2),
        Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 2),
    )
    ref = gauss + kl_divergence(Dirichlet(alpha), Dirichlet(prior.expand(b, k)))
    got = gmvib_rate(mu, logvar, alpha, prior)
    assert got.shape == (b,)
    torch.testing.assert_close(got, ref)
    ref_scalar = gauss + kl_divergence(Dirichlet(alpha), Dirichlet(torch.ones_like(alpha)))
    torch.testing.assert_close(gmvib_rate(mu, logvar, alpha, 1.0), ref_scalar)


def test_gmvib_rate_is_differentiable() -> None:
    g = _gen(7)
    mu = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    logvar = torch.zeros(2, 3, 4, requires_grad=True)
    alpha = torch.ones(2, 3, requires_grad=True)
    gmvib_rate(mu, logvar, alpha, 1.0).sum().backward()
    # d/dmu of 0.5 mu^2 is mu; logvar = 0 and alpha = prior are stationary points
    torch.testing.assert_close(mu.grad, mu.detach())
    torch.testing.assert_close(logvar.grad, torch.zeros_like(logvar))
    torch.testing.assert_close(alpha.grad, torch.zeros_like(alpha))


def test_errors() -> None:
    x = torch.zeros(3, 4)
    with pytest.raises(ShapeError):
        kl_diag_gaussian_std_normal(x, torch.zeros(3, 5))
    with pytest.raises(ShapeError):
        kl_diag_gaussian_std_normal(torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ShapeError):
        kl_diag_gaussian_std_normal([0.0], [0.0])  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError):
        kl_diag_gaussian_std_normal(torch.zeros(3, dtype=torch.int64), torch.zeros(3))
    with pytest.raises(NonFiniteError):
        kl_diag_gaussian_std_normal(torch.tensor([float("nan")]), torch.zeros(1))
    with pytest.raises(ShapeError):
        kl_diag_gaussians(x, x, torch.zeros(2, 3, 4), torch.zeros(4))
    with pytest.raises(ShapeError):
        kl_diag_gaussians(x, x, torch.zeros(5), torch.zeros(4))
    with pytest.raises(InvalidParameterError):
        kl_dirichlet(torch.tensor([1.0, 0.0]), 1.0)
    with pytest.raises(InvalidParameterError):
        kl_dirichlet(torch.tensor([1.0, 2.0]), -1.0)
    with pytest.raises(InvalidParameterError):
        kl_dirichlet(torch.tensor([1.0, 2.0]), torch.tensor([1.0, -2.0]))
    with pytest.raises(NonFiniteError):
        kl_dirichlet(torch.tensor([1.0, 2.0]), float("inf"))
    with pytest.raises(ShapeError):
        kl_dirichlet(torch.ones(4, 3), torch.ones(2))
    mu = torch.zeros(2, 3, 4)
    with pytest.raises(ShapeError):
        gmvib_rate(mu[0], mu[0], torch.ones(3), 1.0)
    with pytest.raises(ShapeError):
        gmvib_rate(mu, mu, torch.ones(2, 4), 1.0)
    with pytest.raises(ShapeError):
        gmvib_rate(mu, mu, torch.ones(2, 3), torch.ones(4))
    with pytest.raises(InvalidParameterError):
        gmvib_rate(mu, mu, -torch.ones(2, 3), 1.0)
    with pytest.raises(NonFiniteError):
        gmvib_rate(mu, mu, torch.full((2, 3), float("nan")), 1.0)

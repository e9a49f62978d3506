"""Tests of the Kozachenko–Leonenko k-NN entropy estimator against closed forms and SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError, UnknownNameError
from ibcore.estimators.knn_entropy import (
    add_zero_entropy_noise,
    conditional_knn_entropy,
    knn_distances,
    knn_entropy,
    knn_indices,
    log_unit_ball_volume,
    zero_entropy_noise_std,
)

TWO_PI_E = 2.0 * math.pi * math.e


# ---------------------------------------------------------------------------------------------
# Independent reference: SciPy KD-tree neighbours + Kraskov et al.'s form of eq. 11
# ---------------------------------------------------------------------------------------------


def reference_kth_distance(x: np.ndarray, k: int, norm: str) -> np.ndarray:
    """Distance to the k-th neighbour by cKDTree (the query returns the point itself first)."""
    p = 2 if norm == "l2" else np.inf
    dist, _ = cKDTree(x).query(x, k=[k + 1], p=p)
    return dist[:, 0]


def reference_entropy(x: np.ndarray, k: int, norm: str) -> float:
    """Eq. 11 as in Kraskov et al. (2004): ε = 2·distance and c_d = diameter-one ball volume."""
    n, d = x.shape
    eps = 2.0 * reference_kth_distance(x, k, norm)
    if norm == "l2":
        log_c_d = 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1.0) - d * np.log(2.0)
    else:
        log_c_d = 0.0  # the max-norm ball of diameter one is the unit cube
    return float(-digamma(k) + digamma(n) + log_c_d + d * np.mean(np.log(eps)))


def gaussian_entropy(cov: np.ndarray) -> float:
    """H = ½ log det(2πe Σ) in nats."""
    return 0.5 * float(np.linalg.slogdet(TWO_PI_E * cov)[1])


def correlated_cov(d: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.2 * np.eye(d)


def sample_gaussian(n: int, cov: np.ndarray, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chol = torch.from_numpy(np.linalg.cholesky(cov))
    eps = torch.randn(n, cov.shape[0], generator=g, dtype=torch.float64)
    return (eps @ chol.T).to(dtype)


# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------


def test_log_unit_ball_volume_closed_forms():
    assert log_unit_ball_volume(1, "l2") == pytest.approx(math.log(2.0), abs=1e-14)
    assert log_unit_ball_volume(2, "l2") == pytest.approx(math.log(math.pi), abs=1e-14)
    assert log_unit_ball_volume(3, "l2") == pytest.approx(math.log(4.0 * math.pi / 3.0), abs=1e-14)
    assert log_unit_ball_volume(4, "l2") == pytest.approx(math.log(math.pi**2 / 2.0), abs=1e-14)
    for d in (1, 7, 256):
        assert log_unit_ball_volume(d, "max") == pytest.approx(d * math.log(2.0), abs=1e-12)
        want = 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1.0)
        assert log_unit_ball_volume(d, "l2") == pytest.approx(want, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Truth on low-dimensional distributions (N = 10,000)
# ---------------------------------------------------------------------------------------------

N_TRUTH = 10_000


def _standard_gaussian():
    return sample_gaussian(N_TRUTH, np.eye(2), seed=0), gaussian_entropy(np.eye(2))


def _correlated_gaussian():
    cov = correlated_cov(4)
    return sample_gaussian(N_TRUTH, cov, seed=1), gaussian_entropy(cov)


def _uniform_box():
    g = torch.Generator().manual_seed(2)
    sides = torch.tensor([2.0, 0.5])
    z = torch.rand(N_TRUTH, 2, generator=g) * sides - 3.0
    return z, float(torch.log(sides).sum())


def _uniform_line():
    # float64: 10,000 float32 draws on one line would hold exact duplicates (birthday problem)
    g = torch.Generator().manual_seed(3)
    z = torch.rand(N_TRUTH, 1, generator=g, dtype=torch.float64) * 5.0 + 100.0
    return z, math.log(5.0)


DISTRIBUTIONS = {
    "gauss-2d": _standard_gaussian,
    "corr-gauss-4d": _correlated_gaussian,
    "uniform-box-2d": _uniform_box,
    "uniform-1d-offset": _uniform_line,
}


CASES = [(name, norm) for name in sorted(DISTRIBUTIONS) for norm in ("l2", "max")]
CASES.remove(("uniform-1d-offset", "max"))  # in one dimension every norm is the same


@pytest.mark.parametrize("name,norm", CASES)
def test_estimate_matches_closed_form_entropy(name, norm):
    z, truth = DISTRIBUTIONS[name]()
    for k in (1, 5):
        h = knn_entropy(z, k=k, norm=norm)
        assert h.dtype == z.dtype
        assert abs(float(h) - truth) < 0.05, (name, norm, k, float(h), truth)


# ---------------------------------------------------------------------------------------------
# Against the SciPy reference, up to d = 256
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "d,n", [(1, 2000), (3, 2000), (16, 1500), (64, 1000), (256, 600)]
)
@pytest.mark.parametrize("norm", ["l2", "max"])
def test_matches_scipy_reference_float64(d, n, norm):
    g = torch.Generator().manual_seed(d)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.7 + 0.3
    x = z.numpy()
    for k in (1, 5):
        ref_dist = reference_kth_distance(x, k, norm)
        ours = knn_distances(z, k=k, norm=norm)
        np.testing.assert_allclose(ours.numpy(), ref_dist, rtol=1e-10, atol=0)
        assert float(knn_entropy(z, k=k, norm=norm)) == pytest.approx(
            reference_entropy(x, k, norm), abs=1e-5
        )


def test_float32_high_dimension_matches_reference():
    """float32, d = 256: the matrix-product search returns the exact neighbours."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1000, 256, generator=g)
    x = z.double().numpy()
    for k in (1, 5):
        ref = reference_kth_distance(x, k, "l2")
        np.testing.assert_allclose(knn_distances(z, k=k).double().numpy(), ref, rtol=1e-5)
        h_ref = reference_entropy(x, k, "l2")
        # float32 spacing at |H| ~ 370 is 3e-5; allow a few of it
        assert float(knn_entropy(z, k=k)) == pytest.approx(h_ref, abs=1e-4)


def test_float32_ill_conditioned_points_are_exact():
    """Tiny neighbour distances far from the mean defeat ||a||²+||b||²−2ab in float32."""
    g = torch.Generator().manual_seed(6)
    z = 1e-3 * torch.randn(2000, 8, generator=g)
    z[::2] += 50.0  # two tight clusters 100·√8 apart: centring cannot help
    z[1::2] -= 50.0
    x = z.double().numpy()
    for k in (1, 3):
        ref = reference_kth_distance(x, k, "l2")
        np.testing.assert_allclose(knn_distances(z, k=k).double().numpy(), ref, rtol=1e-5)
        assert float(knn_entropy(z, k=k)) == pytest.approx(reference_entropy(x, k, "l2"), abs=1e-4)


def test_lattice_ties_and_tight_cluster_mixed():
    """Exact ties (a lattice) next to a tight far cluster: every search path in one call."""
    g = torch.Generator().manual_seed(17)
    a = torch.arange(30.0)
    lattice = torch.cat([torch.cartesian_prod(a, a), torch.zeros(900, 2)], dim=1)
    tight = 40.0 + 1e-3 * torch.randn(200, 4, generator=g)
    z = torch.cat([lattice, tight])[torch.randperm(1100, generator=g)]
    x = z.double().numpy()
    for k in (1, 5):
        ref = reference_kth_distance(x, k, "l2")
        got = knn_distances(z, k=k, chunk_size=128).double().numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_two_level_selection_equals_topk():
    """The grouped selection behind the search returns topk's values, ties and infs included."""
    from ibcore.estimators.knn_entropy import _smallest

    g = torch.Generator().manual_seed(18)
    for n in (50, 2560, 2561, 5003):
        b = torch.randn(40, n, generator=g)
        b[:, ::7] = b[:, :1]  # many exact ties
        b[0, :] = math.inf
        b[0, 5] = 0.0
        for m in (1, 6, 10):
            vals, cols = _smallest(b, m)
            torch.testing.assert_close(vals, b.topk(m, dim=1, largest=False).values, rtol=0, atol=0)
            torch.testing.assert_close(b.gather(1, cols), vals, rtol=0, atol=0)


def test_indices_are_kth_neighbours():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(800, 5, generator=g, dtype=torch.float64)
    _, ref_idx = cKDTree(z.numpy()).query(z.numpy(), k=[4])
    assert torch.equal(knn_indices(z, k=3), torch.from_numpy(ref_idx[:, 0]).long())


# ---------------------------------------------------------------------------------------------
# Equivalences: eq. 11 == eq. 13, chunked == unchunked
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l2", "max"])
def test_eq11_equals_eq13(norm):
    g = torch.Generator().manual_seed(8)
    z = torch.randn(500, 6, generator=g, dtype=torch.float64)
    for k in (1, 4):
        h11 = knn_entropy(z, k=k, norm=norm, squared=False)
        h13 = knn_entropy(z, k=k, norm=norm, squared=True)
        assert float(h11) == pytest.approx(float(h13), abs=1e-12)
        d = knn_distances(z, k=k, norm=norm)
        d2 = knn_distances(z, k=k, norm=norm, squared=True)
        torch.testing.assert_close(d * d, d2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("norm", ["l2", "max"])
def test_chunked_equals_unchunked(norm):
    g = torch.Generator().manual_seed(9)
    z = torch.randn(200, 12, generator=g)
    for k in (1, 5):
        full = knn_distances(z, k=k, norm=norm, chunk_size=200)
        for chunk in (37, 64, 10_000, None):  # 37 and 64 leave a short last chunk
            torch.testing.assert_close(knn_distances(z, k=k, norm=norm, chunk_size=chunk), full)
            torch.testing.assert_close(
                knn_entropy(z, k=k, norm=norm, chunk_size=chunk),
                knn_entropy(z, k=k, norm=norm, chunk_size=200),
            )


def test_all_points_are_candidates_for_tiny_sets():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [5.0, 5.0]], dtype=torch.float64)
    want = torch.tensor([3.0, 10.0**0.5, 10.0**0.5, 41.0**0.5], dtype=torch.float64)
    torch.testing.assert_close(knn_distances(z, k=2), want)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l2", "max"])
@pytest.mark.parametrize("squared", [True, False])
def test_gradcheck(norm, squared):
    g = torch.Generator().manual_seed(10)
    z = torch.randn(12, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: knn_entropy(t, k=2, norm=norm, squared=squared), (z,), eps=1e-6, atol=1e-6
    )


def test_gradient_matches_eq14_closed_form():
    """∇ Ĥ = d/(2N) Σ_i ∇ log ||z_i − z_n(i)||², with the neighbours from SciPy."""
    g = torch.Generator().manual_seed(11)
    n, d, k = 600, 16, 3
    z = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    knn_entropy(z, k=k).backward()
    x = z.detach().numpy()
    _, nb = cKDTree(x).query(x, k=[k + 1])
    nb = nb[:, 0]
    diff = x - x[nb]
    term = 2.0 * diff / np.sum(diff * diff, axis=1, keepdims=True)  # ∇_{z_i} log r_i²
    want = np.zeros_like(x)
    np.add.at(want, np.arange(n), term)
    np.add.at(want, nb, -term)
    want *= d / (2.0 * n)
    np.testing.assert_allclose(z.grad.numpy(), want, rtol=1e-10, atol=1e-12)


def test_conditional_gradient_flows():
    g = torch.Generator().manual_seed(12)
    z = torch.randn(18, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.arange(18) % 3
    assert torch.autograd.gradcheck(
        lambda t: conditional_knn_entropy(t, y, k=2), (z,), eps=1e-6, atol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# Conditional entropy
# ---------------------------------------------------------------------------------------------


def test_conditional_entropy_on_mixture_matches_truth():
    sizes = [6000, 2500, 1500]
    covs = [np.eye(2), np.diag([4.0, 0.25]), correlated_cov(2)]
    means = [np.array([0.0, 0.0]), np.array([3.0, -1.0]), np.array([-2.0, 2.0])]
    parts, labels = [], []
    for c, (n_c, cov, mu) in enumerate(zip(sizes, covs, means, strict=True)):
        parts.append(sample_gaussian(n_c, cov, seed=20 + c) + torch.from_numpy(mu).float())
        labels.append(torch.full((n_c,), 7 * c, dtype=torch.long))  # labels need not be 0..C-1
    perm = torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(0))
    z, y = torch.cat(parts)[perm], torch.cat(labels)[perm]
    total = sum(sizes)
    truth = sum(n_c / total * gaussian_entropy(cov) for n_c, cov in zip(sizes, covs, strict=True))
    assert abs(float(conditional_knn_entropy(z, y, k=3)) - truth) < 0.05
    # ... and with the per-class reference on the same points
    x, yy = z.double().numpy(), y.numpy()
    ref = sum(
        np.mean(yy == c) * reference_entropy(x[yy == c], 3, "max") for c in np.unique(yy)
    )
    assert float(conditional_knn_entropy(z.double(), y, k=3, norm="max")) == pytest.approx(
        ref, abs=1e-5
    )


def test_conditional_class_too_small():
    z = torch.randn(20, 2, generator=torch.Generator().manual_seed(13))
    y = torch.zeros(20, dtype=torch.long)
    y[:2] = 1
    with pytest.raises(InvalidParameterError, match="at least k \\+ 1 = 3"):
        conditional_knn_entropy(z, y, k=2)
    assert torch.isfinite(conditional_knn_entropy(z, y, k=1))


# ---------------------------------------------------------------------------------------------
# Zero-entropy noise
# ---------------------------------------------------------------------------------------------


def test_zero_entropy_noise_has_zero_entropy_analytically():
    std = zero_entropy_noise_std()
    assert std == pytest.approx(1.0 / math.sqrt(TWO_PI_E), rel=1e-15)
    for d in (1, 10, 256):  # H[N(0, σ² I_d)] = d/2 · log(2πe σ²)
        assert 0.5 * d * math.log(TWO_PI_E * std**2) == pytest.approx(0.0, abs=1e-12)


def test_add_zero_entropy_noise_samples():
    z = torch.zeros(10_000, 2, requires_grad=True)
    noisy = add_zero_entropy_noise(z, generator=torch.Generator().manual_seed(14))
    again = add_zero_entropy_noise(z, generator=torch.Generator().manual_seed(14))
    assert torch.equal(noisy, again)
    cov = torch.cov(noisy.detach().T.double())
    torch.testing.assert_close(cov, torch.eye(2, dtype=torch.float64) / TWO_PI_E, atol=2e-3, rtol=0)
    assert abs(float(knn_entropy(noisy.detach(), k=3))) < 0.05  # the estimate sees ~0 nats too
    noisy.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_duplicate_points_raise():
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(15))
    z[7] = z[3]
    with pytest.raises(NonFiniteError, match="duplicate"):
        knn_entropy(z)
    assert float(knn_distances(z)[7]) == 0.0
    assert torch.isfinite(knn_entropy(z, k=2))  # the second neighbour is at a positive distance


def test_half_precision_input():
    z = torch.randn(400, 3, generator=torch.Generator().manual_seed(16))
    h = knn_entropy(z.to(torch.bfloat16), k=2)
    assert h.dtype == torch.bfloat16
    want = float(knn_entropy(z.to(torch.bfloat16).float(), k=2))
    assert float(h) == pytest.approx(want, abs=0.05)


@pytest.mark.parametrize("fn", [knn_entropy, knn_distances, knn_indices])
def test_bad_inputs(fn):
    z = torch.randn(10, 2)
    for k in (0, -1, 10, 11, 1.5, True):
        with pytest.raises(InvalidParameterError):
            fn(z, k=k)
    with pytest.raises(ShapeError):
        fn(torch.randn(10))
    with pytest.raises(ShapeError):
        fn(torch.randn(10, 2, 2))
    with pytest.raises(ShapeError):
        fn(torch.randn(10, 0))
    with pytest.raises(ShapeError):
        fn(np.zeros((10, 2)))
    with pytest.raises(InvalidParameterError):
        fn(torch.ones(10, 2, dtype=torch.long))
    for bad in (math.nan, math.inf, -math.inf):
        zb = z.clone()
        zb[3, 1] = bad
        with pytest.raises(NonFiniteError):
            fn(zb)
    with pytest.raises(UnknownNameError):
        fn(z, norm="l1")
    for chunk in (0, -3, 2.5):
        with pytest.raises(InvalidParameterError):
            fn(z, chunk_size=chunk)


def test_bad_inputs_conditional_and_helpers():
    z = torch.randn(10, 2)
    y = torch.arange(10) % 2
    with pytest.raises(ShapeError):
        conditional_knn_entropy(z, y[:9])
    with pytest.raises(ShapeError):
        conditional_knn_entropy(z, y.reshape(5, 2))
    with pytest.raises(InvalidParameterError):
        conditional_knn_entropy(z, y.float())
    with pytest.raises(InvalidParameterError):
        conditional_knn_entropy(z, y, k=0)
    with pytest.raises(InvalidParameterError):
        conditional_knn_entropy(z, y, k=5)  # each class has 5 points
    with pytest.raises(UnknownNameError):
        conditional_knn_entropy(z, y, norm="cosine")
    with pytest.raises(NonFiniteError):
        conditional_knn_entropy(torch.full((10, 2), math.nan), y)
    with pytest.raises(InvalidParameterError):
        conditional_knn_entropy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(InvalidParameterError):
        log_unit_ball_volume(0)
    with pytest.raises(UnknownNameError):
        log_unit_ball_volume(3, "manhattan")
    with pytest.raises(InvalidParameterError):
        add_zero_entropy_noise(torch.zeros(3, dtype=torch.long))

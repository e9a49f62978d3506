r"""Runner of the *Foundations* chapter: two experiments with closed-form answers.

``gaussian_vib``
    A jointly Gaussian pair (X, Y) with known covariance (canonical correlations ρ_i, mixed by
    fixed random matrices). A linear Gaussian encoder ``Z = A X + ξ``, ``ξ ~ N(0, I)``, is
    trained at several β with the variational IB objective

    .. math::
        \mathcal L_\beta = \underbrace{\mathbb E_x \mathrm{KL}\big(p(z|x)\,\|\,r(z)\big)}_{\text{rate}}
        + \beta\,\underbrace{\mathbb E_{x,y}\mathbb E_{z|x}\big[-\log q(y|z)\big]}_{\text{distortion}}
        \;\ge\; I(Z;X) - \beta I(Z;Y) + \beta H(Y),

    with a learned Gaussian marginal ``r(z) = N(m, LLᵀ)`` and a learned linear Gaussian decoder
    ``q(y|z) = N(Wz + b, SSᵀ)``. Both families contain the true marginal and the true posterior
    of a linear Gaussian encoder, so the bound is tight at its minimum and the minimiser in A is
    the Gaussian IB solution (Chechik et al. 2005). The expectation over ξ is Gaussian and is
    taken in closed form, so the only noise in the gradient is the mini-batch. After every epoch
    the *exact* ``I(Z;X)`` and ``I(Z;Y)`` of the current A are computed from the population
    covariance (:func:`ibcore.estimators.gaussian_ib.mutual_information_linear_gaussian`).
    History rows: ``epoch`` (0 = before training), ``beta``, ``I_zx``, ``I_zy``, the population
    bounds ``rate_bound`` (≥ I_zx) and ``relevance_bound`` (≤ I_zy), and the epoch means
    ``train_loss``, ``train_rate``, ``train_distortion``. Metrics: the covariances, ``I_xy``,
    ``critical_betas``, ``analytic_curve`` and one ``final`` row per β (distance to the curve
    and excess of the IB Lagrangian over its optimum).

``estimator_bench``
    (a) The DV, NWJ, JSD and InfoNCE bounds (:mod:`ibcore.estimators.mi_bounds`) on correlated
    Gaussians ``y = ρx + √(1-ρ²)ε`` in d dimensions, ``I(X;Y) = -(d/2) log(1-ρ²)``, with the
    optimal critic (the log density ratio) and with a separable MLP critic trained for a fixed
    number of steps; mean and standard deviation over fresh evaluation batches.
    (b) The Kozachenko–Leonenko kNN entropy estimator on ``N(0, I_d)``,
    ``H = (d/2) log(2πe)``, as the dimension and the sample size grow.
    Metrics: ``bounds`` (rows: bound, critic, true_mi, mean, std, bias), ``knn_by_dim`` and
    ``knn_by_size`` (rows: dim, n, k, true_entropy, mean, std, bias), ``log_batch_size``.
    History rows: per-epoch training curves of the critics (``part = "critic_training"``).

Checkpoints go to ``<results_root>/../runs/foundations/<experiment>/<profile>-seed<N>/``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ibcore.device import isolated_rng
from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.estimators.gaussian_ib import (
    critical_betas,
    gaussian_ib_curve,
    mutual_information_linear_gaussian,
)
from ibcore.estimators.knn_entropy import knn_entropy
from ibcore.estimators.mi_bounds import (
    MineEMA,
    dv_bound,
    infonce_bound,
    jsd_bound,
    nwj_bound,
)
from ibcore.results import RunRecorder
from ibcore.runners.context import RunContext, prepare_run
from ibcore.tasks import Task, run_experiments, written_result
from ibcore.training import Trainer
from ibcore.validation import check_int, check_weight

CHAPTER = "foundations"
EXPERIMENTS = ("gaussian_vib", "estimator_bench")
BOUNDS = ("dv", "nwj", "jsd", "infonce")
"""The MI bounds of the bench; ``jsd`` trains its critic on the Jensen–Shannon objective and
reads the MI out with NWJ on ``T + 1`` (the JSD objective itself is not an MI bound)."""

__all__ = [
    "BOUNDS",
    "CHAPTER",
    "EXPERIMENTS",
    "PROFILES",
    "FoundationsConfig",
    "GaussianProblem",
    "LinearGaussianVIB",
    "SeparableCritic",
    "analytic_curve",
    "correlated_gaussians",
    "gaussian_entropy",
    "gaussian_log_ratio_scores",
    "make_gaussian_problem",
    "mi_readout",
    "optimal_critic_scores",
    "relevance_on_curve",
    "rho_for_mi",
    "run",
]


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundationsConfig:
    """Settings of both experiments (one profile = one instance)."""

    # gaussian_vib: the problem (fixed across seeds and profiles: the "known covariance")
    canonical_correlations: tuple[float, ...] = (0.95, 0.8, 0.5)
    nuisance_dims: int = 1
    problem_seed: int = 20050101
    # gaussian_vib: training
    vib_betas: tuple[float, ...] = (1.05, 1.4, 3.0, 8.0, 30.0)
    vib_samples: int = 4096
    vib_batch_size: int = 256
    vib_epochs: int = 100
    vib_lr: float = 0.1
    vib_init_scale: float = 0.3
    curve_points: int = 400
    # estimator_bench (a): MI bounds
    bound_dim: int = 20
    bound_mis: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0)
    bound_batch_size: int = 128
    critic_hidden: int = 128
    critic_embed: int = 32
    critic_lr: float = 5e-4
    critic_samples: int = 65536
    critic_epochs: int = 2
    bound_repeats: int = 20
    mine_ema_decay: float = 0.99
    # estimator_bench (b): kNN entropy
    knn_k: int = 1
    knn_dims: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    knn_samples: int = 2000
    knn_sizes: tuple[int, ...] = (250, 500, 1000, 2000, 4000)
    knn_size_dims: tuple[int, ...] = (2, 16, 64)
    knn_repeats: int = 5

    def __post_init__(self) -> None:
        for rho in self.canonical_correlations:
            check_weight("canonical correlation", rho, low=0.0, high=1.0,
                         low_inclusive=False, high_inclusive=False)
        for beta in self.vib_betas:
            check_weight("vib beta", beta, low=0.0, low_inclusive=False)
        for mi in self.bound_mis:
            check_weight("bound mi", mi, low=0.0, low_inclusive=False)
        check_int("nuisance_dims", self.nuisance_dims, low=0)
        for name in ("vib_samples", "vib_batch_size", "vib_epochs", "curve_points", "bound_dim",
                     "bound_batch_size", "critic_hidden", "critic_embed", "critic_samples",
                     "critic_epochs", "bound_repeats", "knn_k", "knn_samples", "knn_repeats"):
            check_int(name, getattr(self, name), low=1)
        if self.bound_batch_size < 2:
            raise InvalidParameterError("bound_batch_size must be ≥ 2 so that negatives exist")


_CPU = FoundationsConfig()

PROFILES: dict[str, FoundationsConfig] = {
    "smoke": dataclasses.replace(
        _CPU,
        vib_betas=(1.4, 8.0),
        vib_samples=1024,
        vib_batch_size=128,
        vib_epochs=12,
        curve_points=100,
        bound_dim=10,
        bound_mis=(2.0, 6.0, 10.0),
        bound_batch_size=64,
        critic_hidden=32,
        critic_embed=16,
        critic_lr=2e-3,
        critic_samples=512,
        critic_epochs=1,
        bound_repeats=3,
        knn_dims=(1, 4, 16, 64),
        knn_samples=256,
        knn_sizes=(128, 256, 512),
        knn_size_dims=(4,),
        knn_repeats=2,
    ),
    "cpu": _CPU,
    "paper": dataclasses.replace(
        _CPU,
        vib_betas=(1.05, 1.2, 1.4, 2.0, 3.0, 5.0, 8.0, 15.0, 30.0, 100.0),
        vib_samples=16384,
        vib_epochs=200,
        curve_points=1000,
        bound_mis=(2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0),
        bound_batch_size=256,
        critic_hidden=256,
        critic_samples=262144,
        critic_epochs=8,
        bound_repeats=100,
        knn_samples=8000,
        knn_sizes=(250, 500, 1000, 2000, 4000, 8000, 16000),
        knn_size_dims=(2, 8, 16, 64, 128),
        knn_repeats=20,
    ),
}


# ---------------------------------------------------------------------------------------------
# jointly Gaussian problem with known canonical correlations
# ---------------------------------------------------------------------------------------------


def _random_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def _random_mixing(n: int, generator: torch.Generator) -> Tensor:
    """``Q₁ diag(s) Q₂ᵀ`` with singular values log-uniform in [1/2, 2] (well conditioned)."""
    q1, q2 = _random_orthogonal(n, generator), _random_orthogonal(n, generator)
    log_s = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * math.log(2.0)
    return q1 @ torch.diag(log_s.exp()) @ q2.T


@dataclass(frozen=True)
class GaussianProblem:
    r"""Zero-mean jointly Gaussian (X, Y) built from canonical coordinates.

    ``X = M U`` and ``Y = N V`` with standard normal ``U ∈ R^{d_x}``, ``V ∈ R^{d_y}`` whose only
    correlations are ``Cov(U_i, V_i) = ρ_i``. Hence ``Σ_x = MMᵀ``, ``Σ_y = NNᵀ``,
    ``Σ_xy = M R Nᵀ`` with ``R = [diag(ρ); 0]``, the canonical correlations of (X, Y) are the
    ρ_i, the eigenvalues of ``Σ_{x|y} Σ_x^{-1}`` are ``1 − ρ_i²`` (and 1 for the nuisance
    coordinates), and ``I(X;Y) = −½ Σ_i log(1 − ρ_i²)``.
    """

    mix_x: Tensor
    mix_y: Tensor
    rho: Tensor

    @property
    def dim_x(self) -> int:
        return int(self.mix_x.shape[0])

    @property
    def dim_y(self) -> int:
        return int(self.mix_y.shape[0])

    def _coupling(self) -> Tensor:
        r = torch.zeros(self.dim_x, self.dim_y, dtype=torch.float64)
        k = self.rho.numel()
        r[:k, :k] = torch.diag(self.rho)
        return r

    @property
    def cov_x(self) -> Tensor:
        return self.mix_x @ self.mix_x.T

    @property
    def cov_y(self) -> Tensor:
        return self.mix_y @ self.mix_y.T

    @property
    def cov_xy(self) -> Tensor:
        return self.mix_x @ self._coupling() @ self.mix_y.T

    @property
    def mutual_information(self) -> float:
        """``I(X;Y) = −½ Σ log(1 − ρ_i²)`` in nats."""
        return float(-0.5 * torch.log1p(-self.rho**2).sum())

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` i.i.d. pairs ``(x, y)`` as float64 tensors of shapes ``[n, d_x]``, ``[n, d_y]``."""
        n = check_int("n", n, low=1)
        u = torch.randn(n, self.dim_x, generator=generator, dtype=torch.float64)
        e = torch.randn(n, self.dim_y, generator=generator, dtype=torch.float64)
        k = self.rho.numel()
        v = e.clone()
        v[:, :k] = self.rho * u[:, :k] + torch.sqrt(1 - self.rho**2) * e[:, :k]
        return u @ self.mix_x.T, v @ self.mix_y.T


def make_gaussian_problem(
    canonical_correlations: Sequence[float], nuisance_dims: int, generator: torch.Generator
) -> GaussianProblem:
    """A :class:`GaussianProblem` with the given canonical correlations and random mixing.

    ``d_y = len(canonical_correlations)`` and ``d_x = d_y + nuisance_dims`` (the nuisance
    coordinates of X carry no information about Y).
    """
    rho = torch.tensor([float(r) for r in canonical_correlations], dtype=torch.float64)
    if rho.numel() == 0:
        raise ShapeError("give at least one canonical correlation")
    if not bool(((rho > 0) & (rho < 1)).all()):
        raise InvalidParameterError(
            f"canonical correlations must lie in (0, 1), got {rho.tolist()}"
        )
    nuisance_dims = check_int("nuisance_dims", nuisance_dims, low=0)
    dim_y = rho.numel()
    dim_x = dim_y + nuisance_dims
    return GaussianProblem(
        _random_mixing(dim_x, generator), _random_mixing(dim_y, generator), rho
    )


def gaussian_entropy(cov: Tensor) -> float:
    """Differential entropy ``½ log det(2πe Σ)`` of ``N(μ, Σ)`` in nats."""
    cov = torch.as_tensor(cov, dtype=torch.float64)
    d = cov.shape[0]
    return float(0.5 * (d * math.log(2 * math.pi * math.e) + torch.linalg.slogdet(cov)[1]))


def analytic_curve(
    problem: GaussianProblem, n_points: int, beta_max_factor: float = 1e3
) -> dict[str, list[float]]:
    """The Gaussian IB curve on a log-spaced β grid from 1 to ``beta_max_factor · max β_c``.

    Returns ``{"beta", "I_zx", "I_zy"}`` (nats); the first point (β = 1) is the origin.
    """
    n_points = check_int("n_points", n_points, low=2)
    finite = [b for b in _critical(problem) if math.isfinite(b)]
    top = beta_max_factor * max(finite)
    betas = np.logspace(0.0, math.log10(top), n_points)
    curve = gaussian_ib_curve(problem.cov_x, problem.cov_xy, problem.cov_y, betas)
    ix = [float(v) for v in curve["i_tx"]]
    iy = [float(v) for v in curve["i_ty"]]
    return {"beta": [float(b) for b in betas], "I_zx": ix, "I_zy": iy}


def _curve_point(problem: GaussianProblem, beta: float) -> tuple[float, float]:
    out = gaussian_ib_curve(problem.cov_x, problem.cov_xy, problem.cov_y,
                            np.asarray([beta], dtype=float))
    return float(out["i_tx"][0]), float(out["i_ty"][0])


def relevance_on_curve(problem: GaussianProblem, info_x: float, tol: float = 1e-10) -> float:
    """The largest ``I(Z;Y)`` any representation with ``I(Z;X) = info_x`` can reach (nats).

    The point of the analytic IB curve whose first coordinate is ``info_x``, found by bisection
    in log β (``I(Z;X)`` of the optimum grows monotonically with β).
    """
    info_x = check_weight("info_x", info_x)
    if info_x == 0.0:
        return 0.0
    lo = min(b for b in _critical(problem) if math.isfinite(b))
    hi = 2.0 * lo
    while _curve_point(problem, hi)[0] < info_x:
        hi *= 4.0
        if hi > 1e15:
            raise InvalidParameterError(f"info_x = {info_x} lies beyond the IB curve's range")
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if _curve_point(problem, mid)[0] < info_x:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < tol:
            break
    return _curve_point(problem, math.sqrt(lo * hi))[1]


def _critical(problem: GaussianProblem) -> list[float]:
    return [float(b) for b in critical_betas(problem.cov_x, problem.cov_xy, problem.cov_y)]


# ---------------------------------------------------------------------------------------------
# gaussian_vib: the linear Gaussian VIB model
# ---------------------------------------------------------------------------------------------


def _lower_with_positive_diagonal(raw: Tensor) -> Tensor:
    """``tril(raw, -1) + diag(exp(diag raw))``: a Cholesky factor from unconstrained entries."""
    return torch.tril(raw, -1) + torch.diag(torch.exp(torch.diagonal(raw)))


class LinearGaussianVIB(nn.Module):
    r"""Encoder ``p(z|x) = N(Ax, I)``, marginal ``r(z) = N(m, (PᵀP)⁻¹)``, decoder
    ``q(y|z) = N(Wz + b, (QᵀQ)⁻¹)``; P and Q are lower triangular with positive diagonals.

    The two Gaussians are parametrised by Cholesky factors of their *precisions*, so both terms
    need only matrix products (no solves):

    * :meth:`rate` is ``KL(N(Ax, I) ‖ r) = ½[‖P‖²_F + ‖P(Ax − m)‖² − d_z] − Σ log P_ii``;
      its average over x is an upper bound on ``I(Z;X)``, tight when r is the marginal of Z.
    * :meth:`distortion` is ``E_ξ[−log q(y | Ax + ξ)] = ½ d_y log 2π − Σ log Q_ii
      + ½‖Q(y − WAx − b)‖² + ½‖QW‖²_F``, the closed-form expectation over ``ξ ~ N(0, I)``;
      its average is ``≥ H(Y|Z)``, tight when q is the true posterior ``p(y|z)``.
    """

    def __init__(
        self,
        dim_x: int,
        dim_y: int,
        dim_z: int,
        *,
        init_scale: float,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        dim_x, dim_y, dim_z = (check_int(n, v) for n, v in
                               (("dim_x", dim_x), ("dim_y", dim_y), ("dim_z", dim_z)))
        init_scale = check_weight("init_scale", init_scale)
        a = torch.randn(dim_z, dim_x, generator=generator, dtype=dtype) * init_scale
        self.encoder = nn.Parameter(a)
        self.marginal_mean = nn.Parameter(torch.zeros(dim_z, dtype=dtype))
        self.marginal_precision_raw = nn.Parameter(torch.zeros(dim_z, dim_z, dtype=dtype))
        self.decoder_weight = nn.Parameter(torch.zeros(dim_y, dim_z, dtype=dtype))
        self.decoder_bias = nn.Parameter(torch.zeros(dim_y, dtype=dtype))
        self.decoder_precision_raw = nn.Parameter(torch.zeros(dim_y, dim_y, dtype=dtype))

    def rate(self, x: Tensor) -> Tensor:
        """Per-sample ``KL(p(z|x) ‖ r(z))`` in nats, shape ``[B]``."""
        p = _lower_with_positive_diagonal(self.marginal_precision_raw)
        mahal = ((x @ self.encoder.T - self.marginal_mean) @ p.T).pow(2).sum(1)
        return 0.5 * (p.pow(2).sum() + mahal - p.shape[0]) - torch.diagonal(
            self.marginal_precision_raw
        ).sum()

    def distortion(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample ``E_ξ[−log q(y | Ax + ξ)]`` in nats, shape ``[B]``."""
        q = _lower_with_positive_diagonal(self.decoder_precision_raw)
        mean = x @ (self.decoder_weight @ self.encoder).T + self.decoder_bias
        resid = ((y - mean) @ q.T).pow(2).sum(1)
        noise = (q @ self.decoder_weight).pow(2).sum()
        log_norm = 0.5 * q.shape[0] * math.log(2 * math.pi) - torch.diagonal(
            self.decoder_precision_raw
        ).sum()
        return log_norm + 0.5 * (resid + noise)


    def population_terms(
        self, cov_x: Tensor, cov_xy: Tensor, cov_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        r"""Rate and distortion averaged over the zero-mean population ``(X, Y)``, exactly.

        With ``C = WA``: ``E‖P(Ax − m)‖² = ‖Pm‖² + tr(PAΣ_xAᵀPᵀ)`` and
        ``E‖Q(y − Cx − b)‖² = ‖Qb‖² + tr(Q S Qᵀ)``, ``S = Σ_y − Σ_xyᵀCᵀ − CΣ_xy + CΣ_xCᵀ``.
        By (fdn-rate) and (fdn-distortion) of the chapter, ``rate − I(Z;X) = KL(p(z) ‖ r)`` and
        ``I(Z;Y) − (H(Y) − distortion) = E_z KL(p(y|z) ‖ q(y|z))``: the slack of each bound.
        """
        cov_x, cov_xy, cov_y = (torch.as_tensor(c, dtype=self.encoder.dtype,
                                                device=self.encoder.device)
                                for c in (cov_x, cov_xy, cov_y))
        a = self.encoder
        p = _lower_with_positive_diagonal(self.marginal_precision_raw)
        pa = p @ a
        mahal = (p @ self.marginal_mean).pow(2).sum() + torch.trace(pa @ cov_x @ pa.T)
        rate = 0.5 * (p.pow(2).sum() + mahal - p.shape[0]) - torch.diagonal(
            self.marginal_precision_raw
        ).sum()
        q = _lower_with_positive_diagonal(self.decoder_precision_raw)
        c = self.decoder_weight @ a
        resid_cov = cov_y - cov_xy.T @ c.T - c @ cov_xy + c @ cov_x @ c.T
        resid = (q @ self.decoder_bias).pow(2).sum() + torch.trace(q @ resid_cov @ q.T)
        noise = (q @ self.decoder_weight).pow(2).sum()
        log_norm = 0.5 * q.shape[0] * math.log(2 * math.pi) - torch.diagonal(
            self.decoder_precision_raw
        ).sum()
        return rate, log_norm + 0.5 * (resid + noise)


def vib_terms(model: LinearGaussianVIB, x: Tensor, y: Tensor, beta: float) -> dict[str, Tensor]:
    """Batch means of rate and distortion, and ``loss = rate + β · distortion``."""
    rate = model.rate(x).mean()
    distortion = model.distortion(x, y).mean()
    return {"loss": rate + beta * distortion, "rate": rate, "distortion": distortion}


def _epoch_point(model: LinearGaussianVIB, problem: GaussianProblem) -> dict[str, float]:
    """Exact ``I(Z;X)``, ``I(Z;Y)`` of the current encoder and the population VIB bounds on them."""
    ix, iy = _exact_information(model, problem)
    with torch.no_grad():
        rate, distortion = model.population_terms(problem.cov_x, problem.cov_xy, problem.cov_y)
    return {"I_zx": ix, "I_zy": iy, "rate_bound": float(rate),
            "relevance_bound": gaussian_entropy(problem.cov_y) - float(distortion)}


def _exact_information(model: LinearGaussianVIB, problem: GaussianProblem) -> tuple[float, float]:
    a = model.encoder.detach().to("cpu", torch.float64)
    ix, iy = mutual_information_linear_gaussian(a, problem.cov_x, problem.cov_xy, problem.cov_y)
    return float(ix), float(iy)


# ---------------------------------------------------------------------------------------------
# estimator_bench: correlated Gaussians, critics and read-outs
# ---------------------------------------------------------------------------------------------


def rho_for_mi(mi: float, dim: int) -> float:
    """The per-coordinate correlation ρ with ``−(d/2) log(1 − ρ²) = mi``."""
    mi = check_weight("mi", mi, low=0.0, low_inclusive=False)
    dim = check_int("dim", dim)
    return math.sqrt(-math.expm1(-2.0 * mi / dim))


def correlated_gaussians(
    n: int, dim: int, rho: float, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """``n`` pairs ``x ~ N(0, I_d)``, ``y = ρx + √(1−ρ²) ε``: ``I(X;Y) = −(d/2) log(1 − ρ²)``."""
    n, dim = check_int("n", n), check_int("dim", dim)
    rho = check_weight("rho", rho, low=0.0, high=1.0, high_inclusive=False)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    e = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    y = rho * x + math.sqrt(1.0 - rho**2) * e
    return x.to(dtype), y.to(dtype)


def gaussian_log_ratio_scores(x: Tensor, y: Tensor, rho: float) -> Tensor:
    r"""``S[i, j] = log p(y_j | x_i) − log p(y_j)`` for the pairs of :func:`correlated_gaussians`.

    ``= −(d/2) log(1−ρ²) − ‖y_j − ρx_i‖² / (2(1−ρ²)) + ‖y_j‖²/2``, the optimal critic
    ``T* = log p(x, y)/(p(x)p(y))`` evaluated on every pair of the batch.
    """
    if x.dim() != 2 or x.shape != y.shape:
        raise ShapeError(f"x and y must both be [N, d], got {tuple(x.shape)}, {tuple(y.shape)}")
    rho = check_weight("rho", rho, low=0.0, high=1.0, high_inclusive=False)
    x64, y64 = x.double(), y.double()
    d = x.shape[1]
    s2 = 1.0 - rho**2
    sq = (y64.pow(2).sum(1).unsqueeze(0) - 2 * rho * x64 @ y64.T
          + rho**2 * x64.pow(2).sum(1).unsqueeze(1))
    out = -0.5 * d * math.log(s2) - sq / (2 * s2) + 0.5 * y64.pow(2).sum(1).unsqueeze(0)
    return out.to(x.dtype)


def optimal_critic_scores(bound: str, x: Tensor, y: Tensor, rho: float) -> Tensor:
    """The score matrix of the critic that makes ``bound`` tight: ``T* + 1`` for NWJ, else ``T*``."""
    _check_bound(bound)
    scores = gaussian_log_ratio_scores(x, y, rho)
    return scores + 1.0 if bound == "nwj" else scores


def mi_readout(bound: str, scores: Tensor) -> Tensor:
    """The MI estimate (nats) of a critic trained for ``bound`` (JSD reads out with NWJ on T+1)."""
    _check_bound(bound)
    if bound == "dv":
        return dv_bound(scores)
    if bound == "nwj":
        return nwj_bound(scores)
    if bound == "jsd":
        return nwj_bound(scores + 1.0)
    return infonce_bound(scores)


def _check_bound(bound: str) -> None:
    if bound not in BOUNDS:
        raise UnknownNameError(f"unknown bound {bound!r}; choose one of {', '.join(BOUNDS)}")


def _init_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default ``U(±1/√fan_in)`` initialisation, drawn from an explicit generator."""
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def _mlp(dim_in: int, hidden: int, dim_out: int, generator: torch.Generator) -> nn.Sequential:
    layers = [nn.Linear(dim_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
              nn.Linear(hidden, dim_out)]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            _init_linear(layer, generator)
    return nn.Sequential(*layers)


class SeparableCritic(nn.Module):
    """``T(x, y) = f(x)ᵀ g(y)`` with two ReLU MLPs; :meth:`forward` gives the ``[N, N]`` scores."""

    def __init__(self, dim: int, hidden: int, embed: int, generator: torch.Generator) -> None:
        super().__init__()
        self.f = _mlp(dim, hidden, embed, generator)
        self.g = _mlp(dim, hidden, embed, generator)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.f(x) @ self.g(y).T


def _critic_objective(bound: str, scores: Tensor, mine: MineEMA | None) -> Tensor:
    """The value each critic maximises: its own bound (DV with MINE's moving-average gradient)."""
    if bound == "dv":
        assert mine is not None
        return mine.objective(scores)
    if bound == "nwj":
        return nwj_bound(scores)
    if bound == "jsd":
        return jsd_bound(scores)
    return infonce_bound(scores)


# ---------------------------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context(RunContext):
    chapter: ClassVar[str] = CHAPTER


def _fit(trainer: Trainer, resume: bool, recorder: RunRecorder) -> list[dict[str, Any]]:
    """``trainer.fit`` that credits the recorder with time spent before a resume."""
    t0 = time.perf_counter()
    history = trainer.fit(resume=resume)
    earlier = trainer.elapsed_seconds - (time.perf_counter() - t0)
    if earlier > 1.0:
        recorder.add_elapsed(earlier)
    return history


def _fmt_beta(beta: float) -> str:
    return f"{beta:g}".replace(".", "p")


def _run_gaussian_vib(ctx: _Context) -> Path:
    cfg = ctx.config
    problem = make_gaussian_problem(cfg.canonical_correlations, cfg.nuisance_dims,
                                    torch.Generator().manual_seed(cfg.problem_seed))
    curve = analytic_curve(problem, cfg.curve_points)
    crit = _critical(problem)
    opt_at = gaussian_ib_curve(problem.cov_x, problem.cov_xy, problem.cov_y,
                               np.asarray(cfg.vib_betas, dtype=float))
    opt_ix, opt_iy = opt_at["i_tx"].tolist(), opt_at["i_ty"].tolist()
    data_gen = torch.Generator().manual_seed(ctx.seed * 7919 + 1)
    x, y = problem.sample(cfg.vib_samples, data_gen)
    ckpt_dir = ctx.checkpoint_dir("gaussian_vib")

    with ctx.recorder("gaussian_vib") as rec:
        finals = []
        for k, beta in enumerate(cfg.vib_betas):
            init_gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + k)
            model = LinearGaussianVIB(problem.dim_x, problem.dim_y, problem.dim_x,
                                      init_scale=cfg.vib_init_scale, generator=init_gen)
            model.to(ctx.device)
            with torch.no_grad():
                start = vib_terms(model, x.to(ctx.device), y.to(ctx.device), beta)
            rec.history.append({"epoch": 0, "beta": beta, **_epoch_point(model, problem),
                                **{f"train_{n}": float(v) for n, v in start.items()}})

            def epoch_end(epoch: int, model: LinearGaussianVIB = model) -> dict[str, float]:
                with isolated_rng(ctx.device):  # exact information: no draw, RNG untouched
                    return _epoch_point(model, problem)

            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.vib_lr, foreach=True)
            trainer = Trainer(
                {"vib": model},
                optimizer,
                (x, y),
                batch_size=cfg.vib_batch_size,
                epochs=cfg.vib_epochs,
                seed=ctx.seed * 1000 + k,
                device=ctx.device,
                loss_fn=lambda batch, beta=beta, model=model: vib_terms(model, *batch, beta),
                scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(
                    optimizer, T_max=cfg.vib_epochs, eta_min=0.01 * cfg.vib_lr
                ),
                checkpoint_path=ckpt_dir / f"beta{_fmt_beta(beta)}.pt",
                fingerprint=ctx.fingerprint("gaussian_vib", beta=beta),
                epoch_end_fn=epoch_end,
                progress=ctx.progress,
                desc=f"gaussian_vib β={beta:g}",
            )
            for row in _fit(trainer, ctx.resume, rec):
                rec.history.append({"epoch": row["epoch"], "beta": beta, **row})
            ix, iy = _exact_information(model, problem)
            on_curve = relevance_on_curve(problem, ix)
            lagrangian = ix - beta * iy
            optimum = float(opt_ix[k] - beta * opt_iy[k])
            finals.append({
                "beta": float(beta), "I_zx": ix, "I_zy": iy,
                "I_zy_on_curve": on_curve, "gap_I_zy": on_curve - iy,
                "I_zx_optimal": float(opt_ix[k]), "I_zy_optimal": float(opt_iy[k]),
                "lagrangian": lagrangian, "lagrangian_optimal": optimum,
                "lagrangian_gap": lagrangian - optimum,
            })
        rec.metrics.update({
            "max_gap_I_zy": max(f["gap_I_zy"] for f in finals),
            "max_lagrangian_gap": max(f["lagrangian_gap"] for f in finals),
            "I_xy": problem.mutual_information,
            "H_y": gaussian_entropy(problem.cov_y),
            "canonical_correlations": [float(r) for r in problem.rho],
            "critical_betas": [b for b in crit if math.isfinite(b)],
            "cov_x": problem.cov_x.tolist(),
            "cov_xy": problem.cov_xy.tolist(),
            "cov_y": problem.cov_y.tolist(),
            "analytic_curve": curve,
            "final": finals,
        })
    assert rec.path is not None
    return rec.path


def _train_critic(
    ctx: _Context, rec: RunRecorder, bound: str, mi: float, index: int
) -> SeparableCritic:
    """Train a separable critic to maximise ``bound`` on fresh correlated Gaussians.

    The DV critic uses MINE's moving-average gradient (:class:`MineEMA`); its running average is
    checkpointed with the critic, so a resumed DV run continues exactly.
    """
    cfg = ctx.config
    rho = rho_for_mi(mi, cfg.bound_dim)
    gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 101 * index)
    critic = SeparableCritic(cfg.bound_dim, cfg.critic_hidden, cfg.critic_embed, gen).to(ctx.device)
    data = correlated_gaussians(cfg.critic_samples, cfg.bound_dim, rho, gen)
    mine = MineEMA(cfg.mine_ema_decay) if bound == "dv" else None

    def loss_fn(batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        scores = critic(*batch)
        objective = _critic_objective(bound, scores, mine)
        with torch.no_grad():
            estimate = mi_readout(bound, scores.detach())
        return {"loss": -objective, "estimate": estimate}

    modules: dict[str, torch.nn.Module] = {"critic": critic}
    if mine is not None:
        modules["mine_ema"] = mine
    trainer = Trainer(
        modules,
        torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, foreach=True),
        data,
        batch_size=cfg.bound_batch_size,
        epochs=cfg.critic_epochs,
        seed=ctx.seed * 1000 + index,
        device=ctx.device,
        loss_fn=loss_fn,
        checkpoint_path=ctx.checkpoint_dir("estimator_bench") / f"{bound}-mi{_fmt_beta(mi)}.pt",
        fingerprint=ctx.fingerprint("estimator_bench", bound=bound, mi=mi,
                                    **({"checkpointed_ema": True} if mine is not None else {})),
        progress=ctx.progress,
        desc=f"{bound} critic, I={mi:g}",
    )
    for row in _fit(trainer, ctx.resume, rec):
        rec.history.append({"part": "critic_training", "bound": bound, "true_mi": float(mi),
                            **row})
    critic.eval()
    return critic


def _summary(values: Sequence[float], truth: float) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": mean, "std": std, "bias": mean - truth}


def _bound_bench(ctx: _Context, rec: RunRecorder) -> list[dict[str, Any]]:
    cfg = ctx.config
    rows: list[dict[str, Any]] = []
    index = 0
    for mi in cfg.bound_mis:
        rho = rho_for_mi(mi, cfg.bound_dim)
        eval_gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 7 + int(mi * 1000))
        batches = [correlated_gaussians(cfg.bound_batch_size, cfg.bound_dim, rho, eval_gen)
                   for _ in range(cfg.bound_repeats)]
        for bound in BOUNDS:
            critic = _train_critic(ctx, rec, bound, mi, index)
            index += 1
            trained, optimal, jsd_trained, jsd_optimal = [], [], [], []
            with torch.no_grad():
                for bx, by in batches:
                    scores = critic(bx.to(ctx.device), by.to(ctx.device)).double().cpu()
                    trained.append(float(mi_readout(bound, scores)))
                    best = optimal_critic_scores(bound, bx.double(), by.double(), rho)
                    optimal.append(float(mi_readout(bound, best)))
                    if bound == "jsd":
                        jsd_trained.append(float(jsd_bound(scores)))
                        jsd_optimal.append(float(jsd_bound(best)))
            for critic_kind, values in (("trained", trained), ("optimal", optimal)):
                rows.append({"bound": bound, "critic": critic_kind, "true_mi": float(mi),
                             "n_repeats": len(values), **_summary(values, mi)})
            if bound == "jsd":
                # 2·JSD − log 4 itself: the optimal critic's average is its Monte-Carlo value
                truth = float(np.mean(jsd_optimal))
                for critic_kind, values in (("trained", jsd_trained), ("optimal", jsd_optimal)):
                    rows.append({"bound": "jsd_objective", "critic": critic_kind,
                                 "true_mi": float(mi), "n_repeats": len(values),
                                 **_summary(values, truth)})
    return rows


def _knn_rows(
    dims: Sequence[int], sizes: Sequence[int], k: int, repeats: int, generator: torch.Generator
) -> list[dict[str, Any]]:
    """kNN entropy of ``N(0, I_d)`` samples against ``H = (d/2) log(2πe)``, per (d, N)."""
    rows = []
    for d in dims:
        truth = 0.5 * d * math.log(2 * math.pi * math.e)
        for n in sizes:
            values = []
            for _ in range(repeats):
                z = torch.randn(n, d, generator=generator, dtype=torch.float64)
                values.append(float(knn_entropy(z, k=k)))
            rows.append({"dim": int(d), "n": int(n), "k": int(k), "true_entropy": truth,
                         "n_repeats": repeats, **_summary(values, truth)})
    return rows


def _run_estimator_bench(ctx: _Context) -> Path:
    cfg = ctx.config
    with ctx.recorder("estimator_bench") as rec:
        bounds = _bound_bench(ctx, rec)
        knn_gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 99)
        by_dim = _knn_rows(cfg.knn_dims, (cfg.knn_samples,), cfg.knn_k, cfg.knn_repeats, knn_gen)
        by_size = _knn_rows(cfg.knn_size_dims, cfg.knn_sizes, cfg.knn_k, cfg.knn_repeats, knn_gen)
        rec.metrics.update({
            "bound_dim": cfg.bound_dim,
            "bound_batch_size": cfg.bound_batch_size,
            "log_batch_size": math.log(cfg.bound_batch_size),
            "true_mi": [float(m) for m in cfg.bound_mis],
            "bounds": bounds,
            "knn_by_dim": by_dim,
            "knn_by_size": by_size,
        })
    assert rec.path is not None
    return rec.path


_EXPERIMENT_FNS: dict[str, Callable[[_Context], Path]] = {
    "gaussian_vib": _run_gaussian_vib,
    "estimator_bench": _run_estimator_bench,
}


def make_context(**run_args: Any) -> _Context:
    """The run's context (the runner protocol of :mod:`ibcore.tasks`)."""
    return prepare_run(_Context, PROFILES, EXPERIMENTS, **run_args)


def plan(ctx: _Context, experiments: Sequence[str]) -> list[Task]:
    """One task for all the chosen experiments: they share models and run in one process."""
    return [Task("all", tuple(experiments))]


def run_task(ctx: _Context, task: Task) -> None:
    for experiment in task.experiments:
        _EXPERIMENT_FNS[experiment](ctx)


def assemble(ctx: _Context, experiment: str) -> Path:
    """The result file its task wrote."""
    return written_result(ctx.recorder(experiment))


def run(
    profile: str = "smoke",
    *,
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    results_root: Path | None = None,
    progress: bool = True,
    experiments: Sequence[str] = EXPERIMENTS,
    launcher: Any = None,
) -> dict[str, Path]:
    """Run the chapter's experiments at ``profile``; return ``{experiment: result file}``.

    ``experiments`` selects a subset (default: all of :data:`EXPERIMENTS`).
    ``launcher`` (see :mod:`ibcore.launchers`) says where they run; default: here.
    """
    return run_experiments(CHAPTER, launcher=launcher, profile=profile, device=device, seed=seed,
                           resume=resume, results_root=results_root, progress=progress,
                           experiments=experiments)

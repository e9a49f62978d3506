r"""The information bottleneck for jointly Gaussian variables, in closed form.

Chechik, Globerson, Tishby and Weiss (2005), "Information bottleneck for Gaussian variables",
JMLR 6. For jointly Gaussian ``(X, Y)`` and the linear encoder ``T = A X + ξ`` with
``ξ ~ N(0, I)``, the IB problem ``min_A I(T; X) − β I(T; Y)`` is solved by projecting onto
the left eigenvectors of ``Σ_{x|y} Σ_x⁻¹``:

* ``Σ_{x|y} = Σ_x − Σ_xy Σ_y⁻¹ Σ_yx`` and the eigenpairs ``vᵢᵀ Σ_{x|y} Σ_x⁻¹ = λᵢ vᵢᵀ``,
  ``0 < λ₁ ≤ … ≤ λ_n ≤ 1`` (equivalently ``Σ_{x|y} vᵢ = λᵢ Σ_x vᵢ``). A small λ means a direction
  of X that Y explains well.
* critical values ``βᵢᶜ = 1 / (1 − λᵢ)``: direction i enters the solution once β > βᵢᶜ.
* the optimal projection has rows ``αᵢ vᵢᵀ`` with
  ``αᵢ = sqrt((β(1 − λᵢ) − 1) / (λᵢ rᵢ))``, ``rᵢ = vᵢᵀ Σ_x vᵢ``, and zero rows for β ≤ βᵢᶜ.
* on the optimal curve, summing over the active directions,
  ``I(T; X) = ½ Σ log((β − 1)(1 − λᵢ) / λᵢ)`` and ``I(T; Y) = I(T; X) − ½ Σ log(β(1 − λᵢ))``.

All information values are in nats. Computations run in the dtype of ``cov_x`` (use float64 for
exact comparisons).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ibcore.errors import InvalidParameterError, ShapeError
from ibcore.validation import check_float, check_weight

__all__ = [
    "critical_betas",
    "gaussian_ib_curve",
    "gaussian_ib_eigen",
    "gaussian_ib_projection",
    "gaussian_mutual_information",
    "mutual_information_linear_gaussian",
]


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------


def _check_matrix(name: str, x: torch.Tensor, rows: int | None, cols: int | None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if (
        x.dim() != 2
        or (rows is not None and x.shape[0] != rows)
        or (cols is not None and x.shape[1] != cols)
    ):
        want = f"[{'*' if rows is None else rows}, {'*' if cols is None else cols}]"
        raise ShapeError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    return check_float(name, x)


def _check_symmetric(name: str, x: torch.Tensor) -> torch.Tensor:
    tol = 1e3 * torch.finfo(x.dtype).eps * max(1.0, float(x.abs().max()))
    if float((x - x.T).abs().max()) > tol:
        raise InvalidParameterError(f"{name} must be symmetric; use (S + S.T) / 2")
    return 0.5 * (x + x.T)


def _cholesky(name: str, x: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(x)
    if int(info) != 0:
        raise InvalidParameterError(
            f"{name} is not positive definite; add a small ridge (e.g. 1e-6·I) or check the data"
        )
    return chol


def _logdet_spd(name: str, x: torch.Tensor) -> torch.Tensor:
    return 2.0 * _cholesky(name, x).diagonal().log().sum()


def _prepare(
    cov_x: torch.Tensor, cov_xy: torch.Tensor, cov_y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the three blocks; return (Σ_x, Σ_{x|y}), both symmetric, in Σ_x's dtype."""
    _check_matrix("cov_x", cov_x, None, None)
    dx = cov_x.shape[0]
    _check_matrix("cov_x", cov_x, dx, dx)
    _check_matrix("cov_xy", cov_xy, dx, None)
    dy = cov_xy.shape[1]
    _check_matrix("cov_y", cov_y, dy, dy)
    dtype, device = cov_x.dtype, cov_x.device
    cov_xy = cov_xy.to(dtype=dtype, device=device)
    cov_x = _check_symmetric("cov_x", cov_x)
    cov_y = _check_symmetric("cov_y", cov_y.to(dtype=dtype, device=device))
    joint = torch.cat([torch.cat([cov_x, cov_xy], 1), torch.cat([cov_xy.T, cov_y], 1)], 0)
    _cholesky("the joint covariance [[cov_x, cov_xy], [cov_xy.T, cov_y]]", joint)
    chol_y = _cholesky("cov_y", cov_y)
    w = torch.linalg.solve_triangular(chol_y, cov_xy.T, upper=False)  # L_y⁻¹ Σ_yx
    cov_x_given_y = cov_x - w.T @ w
    return cov_x, 0.5 * (cov_x_given_y + cov_x_given_y.T)


# ---------------------------------------------------------------------------------------------
# spectrum
# ---------------------------------------------------------------------------------------------


def gaussian_ib_eigen(
    cov_x: torch.Tensor, cov_xy: torch.Tensor, cov_y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Eigenvalues λ (ascending) and left eigenvectors of ``Σ_{x|y} Σ_x⁻¹``.

    Solves the symmetric-definite problem ``Σ_{x|y} v = λ Σ_x v`` through the Cholesky factor
    ``Σ_x = L Lᵀ``: with ``L⁻¹ Σ_{x|y} L⁻ᵀ = U diag(λ) Uᵀ``, ``V = L⁻ᵀ U``. The columns ``vᵢ`` of
    ``V`` then satisfy ``vᵢᵀ Σ_{x|y} Σ_x⁻¹ = λᵢ vᵢᵀ`` and are normalised to ``vᵢᵀ Σ_x vᵢ = 1``.

    Args:
        cov_x: ``Σ_x``, ``[d_x, d_x]``; cov_xy: ``Σ_xy``, ``[d_x, d_y]``; cov_y: ``Σ_y``,
            ``[d_y, d_y]``. The joint covariance must be symmetric positive definite.

    Returns:
        ``(lambdas [d_x], V [d_x, d_x])`` with ``V[:, i]`` the eigenvector of ``lambdas[i]``.
    """
    cov_x, cov_x_given_y = _prepare(cov_x, cov_xy, cov_y)
    chol = _cholesky("cov_x", cov_x)
    tmp = torch.linalg.solve_triangular(chol, cov_x_given_y, upper=False)  # L⁻¹ Σ_{x|y}
    m = torch.linalg.solve_triangular(chol, tmp.T, upper=False)  # L⁻¹ Σ_{x|y} L⁻ᵀ
    lambdas, u = torch.linalg.eigh(0.5 * (m + m.T))
    v = torch.linalg.solve_triangular(chol.T, u, upper=True)  # L⁻ᵀ U
    # λ ∈ (0, 1] in exact arithmetic; clip round-off
    lambdas = lambdas.clamp(min=torch.finfo(lambdas.dtype).tiny, max=1.0)
    return lambdas, v


def critical_betas(cov_x: torch.Tensor, cov_xy: torch.Tensor, cov_y: torch.Tensor) -> torch.Tensor:
    r"""Critical trade-offs ``βᵢᶜ = 1 / (1 − λᵢ)``, ascending; ``inf`` where λᵢ = 1.

    Below ``β₁ᶜ`` the optimal encoder is ``A = 0`` (``T`` carries no information); each time β
    crosses a critical value one more eigen-direction joins the representation. Directions of
    X that are independent of Y have λ = 1 (there are at least ``d_x − d_y`` of them, since
    ``Σ_xy`` has rank ≤ d_y) and never enter; λ within ``1000·eps`` of 1 is treated as 1.
    """
    lambdas, _ = gaussian_ib_eigen(cov_x, cov_xy, cov_y)
    gap = 1.0 - lambdas
    eps = 1e3 * torch.finfo(lambdas.dtype).eps
    return torch.where(gap > eps, 1.0 / gap.clamp_min(eps), torch.full_like(gap, float("inf")))


def _alphas(lambdas: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    excess = beta * (1.0 - lambdas) - 1.0
    active = excess > 0
    return torch.where(active, (excess.clamp_min(0.0) / (lambdas * r)).sqrt(), 0.0 * excess)


def gaussian_ib_projection(
    cov_x: torch.Tensor, cov_xy: torch.Tensor, cov_y: torch.Tensor, beta: float
) -> torch.Tensor:
    r"""The optimal IB projection ``A(β)`` for ``T = A X + ξ``, ``ξ ~ N(0, I)``.

    Row i is ``αᵢ vᵢᵀ`` with ``αᵢ = sqrt((β(1 − λᵢ) − 1) / (λᵢ rᵢ))`` and ``rᵢ = vᵢᵀ Σ_x vᵢ``
    when ``β > βᵢᶜ = 1/(1 − λᵢ)``, and a zero row otherwise. Rows are ordered by ascending λ
    (most informative direction first). The solution is unique up to an orthogonal
    transformation of T (and the sign of each row), which changes no information quantity.

    Args:
        beta: the trade-off β ≥ 0 of ``min I(T; X) − β I(T; Y)``.

    Returns:
        ``A``, shape ``[d_x, d_x]``.
    """
    beta = check_weight("beta", beta, low=0.0)
    lambdas, v = gaussian_ib_eigen(cov_x, cov_xy, cov_y)
    r = (v * (cov_x.to(v) @ v)).sum(dim=0)  # vᵢᵀ Σ_x vᵢ (= 1 with our normalisation)
    return _alphas(lambdas, r, beta)[:, None] * v.T


def gaussian_mutual_information(
    cov_x: torch.Tensor, cov_xy: torch.Tensor, cov_y: torch.Tensor
) -> torch.Tensor:
    r"""``I(X; Y) = ½ (log det Σ_x − log det Σ_{x|y})`` in nats: the ceiling of ``I(T; Y)``."""
    cov_x, cov_x_given_y = _prepare(cov_x, cov_xy, cov_y)
    return 0.5 * (_logdet_spd("cov_x", cov_x) - _logdet_spd("cov_x_given_y", cov_x_given_y))


def gaussian_ib_curve(
    cov_x: torch.Tensor,
    cov_xy: torch.Tensor,
    cov_y: torch.Tensor,
    betas: Sequence[float] | torch.Tensor | np.ndarray,
) -> dict[str, torch.Tensor]:
    r"""The optimal information curve at each β, from the closed forms of Chechik et al.

    For the active set ``𝒜(β) = {i : β > βᵢᶜ}``:

    .. math::
        I(T;X) = \tfrac12 \sum_{i \in \mathcal A} \log\frac{(\beta - 1)(1 - \lambda_i)}{\lambda_i},
        \qquad
        I(T;Y) = I(T;X) - \tfrac12 \sum_{i \in \mathcal A} \log\bigl(\beta(1 - \lambda_i)\bigr).

    The curve ``β ↦ (I(T;X), I(T;Y))`` is increasing and concave, with slope
    ``dI(T;Y)/dI(T;X) = 1/β``, and ``I(T;Y) → I(X;Y)`` as β → ∞.

    Returns:
        dict with ``"beta"``, ``"i_tx"``, ``"i_ty"`` (each ``[len(betas)]``, nats),
        ``"critical_betas"`` (``[d_x]``), ``"lambdas"`` (``[d_x]``) and ``"i_xy"`` (0-dim).
    """
    lambdas, _ = gaussian_ib_eigen(cov_x, cov_xy, cov_y)
    dtype, device = lambdas.dtype, lambdas.device
    try:
        b_all = torch.as_tensor(betas, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidParameterError(f"betas must be a 1-D sequence of numbers: {exc}") from exc
    if b_all.dim() != 1 or b_all.numel() == 0:
        raise ShapeError(f"betas must be 1-D and non-empty, got shape {tuple(b_all.shape)}")
    values = [float(b) for b in b_all.cpu()]
    for b in values:
        check_weight("beta", b, low=0.0)
    beta = torch.tensor(values, dtype=dtype, device=device)[:, None]  # [B, 1]
    one_minus = (1.0 - lambdas)[None, :]  # [1, d]
    active = beta * one_minus > 1.0
    # where inactive, substitute 1 inside the logs so that the masked terms are exactly 0
    ones = torch.ones(active.shape, dtype=dtype, device=device)
    tx_terms = torch.where(active, (beta - 1.0) * one_minus / lambdas, ones)
    ty_terms = torch.where(active, beta * one_minus, ones)
    i_tx = 0.5 * tx_terms.log().sum(dim=1)
    i_ty = i_tx - 0.5 * ty_terms.log().sum(dim=1)
    return {
        "beta": beta[:, 0],
        "i_tx": i_tx,
        "i_ty": i_ty,
        "critical_betas": critical_betas(cov_x, cov_xy, cov_y),
        "lambdas": lambdas,
        "i_xy": gaussian_mutual_information(cov_x, cov_xy, cov_y),
    }


def mutual_information_linear_gaussian(
    a: torch.Tensor,
    cov_x: torch.Tensor,
    cov_xy: torch.Tensor,
    cov_y: torch.Tensor,
    noise_cov: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact ``I(T; X)`` and ``I(T; Y)`` in nats for ``T = A X + ξ``, ``ξ ~ N(0, Σ_ξ)``.

    With ``ξ`` independent of ``(X, Y)``, ``Cov(T) = A Σ_x Aᵀ + Σ_ξ`` and
    ``Cov(T | Y) = A Σ_{x|y} Aᵀ + Σ_ξ``, so

    .. math::
        I(T;X) = \tfrac12 \log\frac{\det(A\Sigma_xA^\top + \Sigma_\xi)}{\det \Sigma_\xi},
        \qquad
        I(T;Y) = \tfrac12 \log\frac{\det(A\Sigma_xA^\top + \Sigma_\xi)}
                                   {\det(A\Sigma_{x|y}A^\top + \Sigma_\xi)}.

    Differentiable with respect to ``A`` (for training a linear encoder against the exact
    values).

    Args:
        a: ``A``, shape ``[k, d_x]`` (any k ≥ 1).
        cov_x, cov_xy, cov_y: the joint covariance blocks (see :func:`gaussian_ib_eigen`).
        noise_cov: ``Σ_ξ``, ``[k, k]`` symmetric positive definite; ``None`` means ``I_k``.

    Returns:
        ``(i_tx, i_ty)``, two 0-dim tensors.
    """
    cov_x_checked, cov_x_given_y = _prepare(cov_x, cov_xy, cov_y)
    _check_matrix("a", a, None, cov_x_checked.shape[0])
    k = a.shape[0]
    a = a.to(cov_x_checked.dtype)
    if noise_cov is None:
        noise = torch.eye(k, dtype=a.dtype, device=a.device)
    else:
        _check_matrix("noise_cov", noise_cov, k, k)
        noise = _check_symmetric("noise_cov", noise_cov.to(a))
    logdet_t = _logdet_spd("A cov_x Aᵀ + noise_cov", a @ cov_x_checked @ a.T + noise)
    logdet_t_given_y = _logdet_spd("A cov_x|y Aᵀ + noise_cov", a @ cov_x_given_y @ a.T + noise)
    logdet_noise = _logdet_spd("noise_cov", noise)
    return 0.5 * (logdet_t - logdet_noise), 0.5 * (logdet_t - logdet_t_given_y)

"""Closed-form KL divergences for rate terms: diagonal Gaussians, Dirichlets, the GMVIB rate.

All results are in nats. Every function sums over the last (event) dimension and keeps the
leading (batch) dimensions, so a ``[B, D]`` input gives a ``[B]`` output.

The GMVIB rate (``gmvib.md`` eq. 11) is the KL divergence between the factorised encoder
``p(z_1|x) ... p(z_K|x) p(e|x)`` and the factorised prior ``r(z_1) ... r(z_K) r(e)``: a sum of K
Gaussian terms against ``N(0, I)`` plus one Dirichlet term.
"""

from __future__ import annotations

import torch

from ibcore.errors import InvalidParameterError, ShapeError
from ibcore.validation import check_finite, check_float

__all__ = [
    "gmvib_rate",
    "kl_diag_gaussian_std_normal",
    "kl_diag_gaussians",
    "kl_dirichlet",
]


def _check_float_tensor(name: str, x: torch.Tensor, *, min_dim: int = 1) -> torch.Tensor:
    """Raise unless ``x`` is a finite floating-point tensor with at least ``min_dim`` dims."""
    check_float(name, x)
    if x.dim() < min_dim:
        raise ShapeError(
            f"{name} must have at least {min_dim} dimension(s) (the last one is the event "
            f"dimension), got shape {tuple(x.shape)}"
        )
    return x


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ShapeError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


def _check_positive(name: str, x: torch.Tensor) -> None:
    if bool((x <= 0).any()):
        raise InvalidParameterError(
            f"{name} must be > 0 everywhere (Dirichlet concentrations), got min "
            f"{float(x.min()):.4g}; pass it through softplus(.) + eps"
        )


def kl_diag_gaussian_std_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""KL(N(mu, diag exp(logvar)) ‖ N(0, I)) in nats, summed over the last dimension.

    .. math::
        \mathrm{KL} = \tfrac12 \sum_j \left(\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1\right),
        \qquad \sigma_j^2 = e^{\mathrm{logvar}_j}.

    This is the correct form of ``gmvib.md`` eq. 12, which is printed loosely as
    ``½[|μ|² − log det Σ + det Tr(Σ) − n]``: the stray "det" in front of the trace does not
    belong there; the closed form is ``½[|μ|² − log det Σ + tr Σ − n]``, which for a diagonal
    Σ is the sum above.

    Args:
        mu: means, shape ``[..., D]``.
        logvar: log-variances, same shape as ``mu``.

    Returns:
        Tensor of shape ``[...]`` (the leading dimensions of ``mu``).
    """
    _check_float_tensor("mu", mu)
    _check_float_tensor("logvar", logvar)
    _check_same_shape("mu", mu, "logvar", logvar)
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=-1)


def kl_diag_gaussians(
    mu_q: torch.Tensor,
    logvar_q: torch.Tensor,
    mu_p: torch.Tensor,
    logvar_p: torch.Tensor,
) -> torch.Tensor:
    r"""KL(N(mu_q, diag σ_q²) ‖ N(mu_p, diag σ_p²)) in nats, summed over the last dimension.

    .. math::
        \mathrm{KL} = \tfrac12 \sum_j \left(\log\frac{\sigma_{p,j}^2}{\sigma_{q,j}^2}
        + \frac{\sigma_{q,j}^2 + (\mu_{q,j}-\mu_{p,j})^2}{\sigma_{p,j}^2} - 1\right).

    ``mu_q`` and ``logvar_q`` must have the same shape ``[..., D]``; ``mu_p`` and ``logvar_p``
    may be broadcast to it (e.g. a learned prior of shape ``[D]``).

    Returns:
        Tensor of shape ``mu_q.shape[:-1]``.
    """
    for name, x in (("mu_q", mu_q), ("logvar_q", logvar_q), ("mu_p", mu_p), ("logvar_p", logvar_p)):
        _check_float_tensor(name, x)
    _check_same_shape("mu_q", mu_q, "logvar_q", logvar_q)
    for name, x in (("mu_p", mu_p), ("logvar_p", logvar_p)):
        try:
            out = torch.broadcast_shapes(x.shape, mu_q.shape)
        except RuntimeError as exc:
            raise ShapeError(
                f"{name} of shape {tuple(x.shape)} does not broadcast to mu_q's shape "
                f"{tuple(mu_q.shape)}"
            ) from exc
        if out != mu_q.shape:
            raise ShapeError(
                f"{name} of shape {tuple(x.shape)} would enlarge mu_q's shape "
                f"{tuple(mu_q.shape)}; give the prior fewer or equal dimensions"
            )
    var_ratio = (logvar_q - logvar_p).exp()
    mahal = (mu_q - mu_p).pow(2) * (-logvar_p).exp()
    return 0.5 * (var_ratio + mahal - 1.0 - (logvar_q - logvar_p)).sum(dim=-1)


def kl_dirichlet(alpha_q: torch.Tensor, alpha_p: torch.Tensor | float) -> torch.Tensor:
    r"""KL(Dir(alpha_q) ‖ Dir(alpha_p)) in nats; the last dimension of ``alpha_q`` is K.

    With :math:`a_0 = \sum_k a_k`, :math:`b_0 = \sum_k b_k` (densities as in ``gmvib.md`` eq. 4):

    .. math::
        \mathrm{KL} = \log\Gamma(a_0) - \sum_k \log\Gamma(a_k) - \log\Gamma(b_0)
        + \sum_k \log\Gamma(b_k) + \sum_k (a_k - b_k)\,\bigl(\psi(a_k) - \psi(a_0)\bigr),

    where ψ is the digamma function (``E_{Dir(a)}[log θ_k] = ψ(a_k) − ψ(a_0)``).

    Args:
        alpha_q: concentrations, shape ``[..., K]``, all > 0.
        alpha_p: prior concentrations: a positive float (symmetric prior) or a tensor that
            broadcasts to ``alpha_q`` (typically shape ``[K]``).

    Returns:
        Tensor of shape ``alpha_q.shape[:-1]``.
    """
    _check_float_tensor("alpha_q", alpha_q)
    _check_positive("alpha_q", alpha_q)
    if isinstance(alpha_p, torch.Tensor):
        _check_float_tensor("alpha_p", alpha_p, min_dim=0)
        if alpha_p.dim() > 0:
            try:
                out = torch.broadcast_shapes(alpha_p.shape, alpha_q.shape)
            except RuntimeError as exc:
                raise ShapeError(
                    f"alpha_p of shape {tuple(alpha_p.shape)} does not broadcast to alpha_q's "
                    f"shape {tuple(alpha_q.shape)}; give it shape [K] = [{alpha_q.shape[-1]}]"
                ) from exc
            if out != alpha_q.shape:
                raise ShapeError(
                    f"alpha_p of shape {tuple(alpha_p.shape)} would enlarge alpha_q's shape "
                    f"{tuple(alpha_q.shape)}; give it shape [K] = [{alpha_q.shape[-1]}]"
                )
        alpha_p = alpha_p.to(dtype=alpha_q.dtype, device=alpha_q.device)
    else:
        if isinstance(alpha_p, bool) or not isinstance(alpha_p, (int, float)):
            raise InvalidParameterError(
                f"alpha_p must be a positive float or a tensor, got {type(alpha_p).__name__}"
            )
        alpha_p = torch.full((), float(alpha_p), dtype=alpha_q.dtype, device=alpha_q.device)
        check_finite("alpha_p", alpha_p)
    _check_positive("alpha_p", alpha_p)
    alpha_p = alpha_p.expand_as(alpha_q)

    a0 = alpha_q.sum(dim=-1)
    b0 = alpha_p.sum(dim=-1)
    log_norm_q = torch.lgamma(a0) - torch.lgamma(alpha_q).sum(dim=-1)
    log_norm_p = torch.lgamma(b0) - torch.lgamma(alpha_p).sum(dim=-1)
    e_log_theta = torch.digamma(alpha_q) - torch.digamma(a0).unsqueeze(-1)
    return log_norm_q - log_norm_p + ((alpha_q - alpha_p) * e_log_theta).sum(dim=-1)


def gmvib_rate(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    alpha: torch.Tensor,
    alpha_prior: float | torch.Tensor,
) -> torch.Tensor:
    r"""The GMVIB rate term, ``gmvib.md`` eq. 11, per example, in nats.

    .. math::
        R(x) = \sum_{k=1}^K \mathrm{KL}\bigl(\mathcal N(\mu_k, \mathrm{diag}\,\sigma_k^2)
        \,\|\, \mathcal N(0, I)\bigr) + \mathrm{KL}\bigl(\mathrm{Dir}(\alpha) \,\|\,
        \mathrm{Dir}(\alpha_{\text{prior}})\bigr).

    The Gaussian terms use the corrected eq. 12 (see :func:`kl_diag_gaussian_std_normal`).

    Args:
        mu: component means, shape ``[B, K, D]``.
        logvar: component log-variances, shape ``[B, K, D]``.
        alpha: Dirichlet concentrations of the mixing weights ``e``, shape ``[B, K]``, > 0.
        alpha_prior: prior concentration(s): a positive float or a tensor of shape ``[K]``.

    Returns:
        Tensor of shape ``[B]``.
    """
    _check_float_tensor("mu", mu)
    if mu.dim() != 3:
        raise ShapeError(f"mu must have shape [B, K, D], got {tuple(mu.shape)}")
    _check_float_tensor("logvar", logvar)
    _check_same_shape("mu", mu, "logvar", logvar)
    _check_float_tensor("alpha", alpha)
    if alpha.shape != mu.shape[:2]:
        raise ShapeError(
            f"alpha must have shape [B, K] = {list(mu.shape[:2])} to match mu, got "
            f"{tuple(alpha.shape)}"
        )
    if isinstance(alpha_prior, torch.Tensor) and alpha_prior.dim() > 0:
        if alpha_prior.shape != (mu.shape[1],):
            raise ShapeError(
                f"alpha_prior must be a float or a tensor of shape [K] = [{mu.shape[1]}], got "
                f"{tuple(alpha_prior.shape)}"
            )
    gauss = kl_diag_gaussian_std_normal(mu, logvar).sum(dim=-1)
    return gauss + kl_dirichlet(alpha, alpha_prior)

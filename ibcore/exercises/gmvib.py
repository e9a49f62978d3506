r"""Self-checks of the GMVIB exercises: the Gaussian and the Dirichlet KL terms of the rate."""

from __future__ import annotations

import torch

from ibcore.estimators.kl import kl_diag_gaussian_std_normal, kl_dirichlet
from ibcore.exercises.checking import Case, Check, Mistake

__all__ = ["CHECKS"]


def _gauss_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    out = []
    for b, d in ((3, 4), (5, 2), (2, 8)):
        mu = torch.randn(b, d, generator=g, dtype=torch.float64)
        logvar = 1.5 * torch.randn(b, d, generator=g, dtype=torch.float64)
        out.append(Case(f"mu, logvar of shape ({b}, {d}) (seed 5)", (mu, logvar)))
    return out


def _gauss_det(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    d = mu.shape[-1]
    return 0.5 * (mu.pow(2).sum(-1) + logvar.exp().prod(-1) - logvar.sum(-1) - d)


def _gauss_log_std(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return kl_diag_gaussian_std_normal(mu, 2.0 * logvar)


GAUSSIAN_KL = Check(
    name="gmvib.gaussian_kl",
    task="gaussian_kl(mu, logvar) -> KL(N(mu, diag exp(logvar)) ‖ N(0, I)) in nats, one value "
         "per row of the [B, D] inputs",
    reference=kl_diag_gaussian_std_normal,
    cases=_gauss_cases,
    mistakes=(
        Mistake(_gauss_det,
                "the variances are multiplied where they should be added: the closed form has "
                "the trace of Σ (the sum of the σ_j²), not its determinant — the slip in the "
                "source's printed eq. (12)."),
        Mistake(_gauss_log_std,
                "logvar is log σ², not log σ: the variance is exp(logvar), and log σ² is logvar "
                "itself."),
    ),
)


def _dir_cases() -> list[Case]:
    g = torch.Generator().manual_seed(7)
    out = []
    for b, k, prior in ((3, 4, 1.0), (4, 3, 0.5), (2, 6, 2.0)):
        alpha_q = 0.2 + 3.0 * torch.rand(b, k, generator=g, dtype=torch.float64)
        alpha_p = torch.full((k,), prior, dtype=torch.float64)
        alpha_p[0] += 0.5  # an asymmetric prior, so that swapped arguments show
        out.append(Case(f"alpha_q of shape ({b}, {k}), alpha_p = ({prior + 0.5:g}, {prior:g}, …)",
                        (alpha_q, alpha_p)))
    return out


def _dir_swapped(alpha_q: torch.Tensor, alpha_p: torch.Tensor) -> torch.Tensor:
    return kl_dirichlet(alpha_p.expand_as(alpha_q).clone(), alpha_q)


def _dir_digamma_prior(alpha_q: torch.Tensor, alpha_p: torch.Tensor) -> torch.Tensor:
    alpha_p = alpha_p.expand_as(alpha_q)
    a0, b0 = alpha_q.sum(-1), alpha_p.sum(-1)
    norm = torch.lgamma(a0) - torch.lgamma(alpha_q).sum(-1) - torch.lgamma(b0) + torch.lgamma(
        alpha_p).sum(-1)
    return norm + ((alpha_q - alpha_p) * (torch.digamma(alpha_q) - torch.digamma(b0)[..., None])
                   ).sum(-1)


def _dir_no_prior_norm(alpha_q: torch.Tensor, alpha_p: torch.Tensor) -> torch.Tensor:
    alpha_p = alpha_p.expand_as(alpha_q)
    b0 = alpha_p.sum(-1)
    return kl_dirichlet(alpha_q, alpha_p) + torch.lgamma(b0) - torch.lgamma(alpha_p).sum(-1)


DIRICHLET_KL = Check(
    name="gmvib.dirichlet_kl",
    task="dirichlet_kl(alpha_q, alpha_p) -> KL(Dir(alpha_q) ‖ Dir(alpha_p)) in nats, one value "
         "per row of the [B, K] concentrations alpha_q, for prior concentrations alpha_p [K]",
    reference=kl_dirichlet,
    cases=_dir_cases,
    mistakes=(
        Mistake(_dir_swapped,
                "the arguments are swapped: this is KL(Dir(alpha_p) ‖ Dir(alpha_q)). The rate "
                "averages over the encoder's weights, so the expectation is under Dir(alpha_q)."),
        Mistake(_dir_digamma_prior,
                "E[log e_k] under the encoder is ψ(α_k) − ψ(a_0) with a_0 the sum of the "
                "encoder's concentrations α, not of the prior's."),
        Mistake(_dir_no_prior_norm,
                "the prior's normaliser is missing: add −log Γ(b_0) + Σ_k log Γ(α_0,k), with b_0 "
                "the sum of the prior's concentrations."),
    ),
)

CHECKS = (GAUSSIAN_KL, DIRICHLET_KL)

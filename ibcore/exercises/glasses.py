r"""Self-checks of the variational-glasses exercises: term A under fixed noise, the coefficient table."""

from __future__ import annotations

import math

import torch

from ibcore.estimators.kl import kl_diag_gaussian_std_normal
from ibcore.exercises.checking import Case, Check, Mistake
from ibcore.objectives.bibae import coefficients

__all__ = ["CHECKS", "MODELS_ASKED"]


def _a_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    out = []
    for b, d, s in ((4, 3, 0.1), (6, 16, 0.5), (3, 2, 1.5)):
        f = torch.randn(b, d, generator=g, dtype=torch.float64)
        out.append(Case(f"codes f of shape ({b}, {d}), sigma0 = {s:g}", (f, s)))
    return out


def _a_term(f: torch.Tensor, sigma0: float) -> torch.Tensor:
    """A = E_x KL(N(f(x), σ0² I) ‖ N(0, I)), averaged over the batch, in nats."""
    logvar = torch.full_like(f, 2.0 * math.log(sigma0))
    return kl_diag_gaussian_std_normal(f, logvar).mean()


def _a_log_sigma(f: torch.Tensor, sigma0: float) -> torch.Tensor:
    d = f.shape[-1]
    return 0.5 * (f.pow(2).sum(-1) + d * (sigma0**2 - math.log(sigma0) - 1.0)).mean()


def _a_sum(f: torch.Tensor, sigma0: float) -> torch.Tensor:
    return _a_term(f, sigma0) * f.shape[0]


A_TERM = Check(
    name="glasses.a_term",
    task="a_term(f, sigma0) -> term A in nats for a deterministic encoder with codes f [B, d] "
         "read as N(f(x), sigma0² I), averaged over the batch",
    reference=_a_term,
    cases=_a_cases,
    mistakes=(
        Mistake(_a_log_sigma,
                "the log-determinant term is d·log σ0², not d·log σ0: the KL has log of the "
                "variance."),
        Mistake(_a_sum,
                "the batch is summed, not averaged: A is an expectation over x, so take the mean "
                "over the B codes."),
    ),
)

MODELS_ASKED: tuple[str, ...] = ("vae", "beta_vae", "aae", "infovae", "gan", "vae_gan", "bib_ae")


def _coef_cases() -> list[Case]:
    return [Case(f"model = {m!r}, beta = {b:g}", (m, b)) for b in (0.5, 3.0) for m in MODELS_ASKED]


def _coef_infovae_plus_b(model: str, beta: float) -> dict[str, float]:
    out = coefficients(model, beta)
    if model in ("infovae", "bib_ae"):
        out["B"] = 1.0
    return out


def _coef_c_as_loss(model: str, beta: float) -> dict[str, float]:
    out = coefficients(model, beta)
    if "C" in out:
        out["C"] = -out["C"]
    return out


def _coef_beta_on_a(model: str, beta: float) -> dict[str, float]:
    out = coefficients(model, beta)
    if model == "beta_vae":
        out = {"A": beta, "C": -1.0}
    return out


COEFFICIENTS = Check(
    name="glasses.coefficients",
    task="coefficients(model, beta) -> {term: coefficient} of the minimised Lagrangian, for "
         f"model in {', '.join(MODELS_ASKED)}; terms not in the model are left out",
    reference=coefficients,
    cases=_coef_cases,
    mistakes=(
        Mistake(_coef_infovae_plus_b,
                "B has the wrong sign in InfoVAE and the BIB-AE: as the source writes them, "
                "A − B is the rate I(X;Z) exactly, so B enters with −1 (only the AAE adds it)."),
        Mistake(_coef_c_as_loss,
                "C has the wrong sign: C is a log-likelihood, a reward, so in a Lagrangian that is "
                "minimised it enters with −β (or −1), not +β."),
        Mistake(_coef_beta_on_a,
                "the β-VAE's β sits on the wrong term: in the source's convention β multiplies the "
                "likelihood C (A − βC), not the rate A."),
    ),
)

CHECKS = (A_TERM, COEFFICIENTS)

r"""The BIB-AE Lagrangian of ``variational_glasses.md`` and its special cases, term by term.

The source writes the unsupervised IB Lagrangian (15) with the bounds (12) and (18) as the
*bounded information bottleneck autoencoder* (BIB-AE), eq. (26)-(29), minimised over the
encoder φ and the decoder θ:

.. math::
    \mathcal L_{\text{BIB-AE}} = \underbrace{(\mathrm A - \mathrm B)}_{I_\phi(X;Z),\ (27)}
    \;-\;\beta\,\underbrace{(\mathrm C - \mathrm D)}_{I^{U_L}_{\theta,\phi}(Z;X),\ (28)}

with the four terms, all in nats per sample,

* **A** :math:`= \mathbb E_{p_D(x)}\,\mathrm{KL}(q_\phi(z|x)\,\|\,p_\theta(z))`,
* **B** :math:`= \mathrm{KL}(q_\phi(z)\,\|\,p_\theta(z))` (aggregate posterior vs prior),
* **C** :math:`= \mathbb E_{p_D(x)}\mathbb E_{q_\phi(z|x)}\log p_\theta(x|z)` (a log-likelihood:
  a *reward*, hence the minus sign in front of β),
* **D** :math:`= \mathrm{KL}(p_D(x)\,\|\,p_\theta(x))` (data vs generated distribution).

Every model of section 4 is a choice of coefficients for these terms; :data:`MODELS` holds
them symbolically (``"+1"``, ``"−β"`` …), :func:`coefficients` turns them into numbers,
:func:`lagrangian` assembles any model from term values, and one function per model
(:func:`vae_lagrangian`, …) names its inputs. The per-model functions go through
:func:`lagrangian`, so the table the book renders (:func:`term_table`) is the code that trains.

How each term is *estimated* (closed form, MMD, an adversarial classifier) is the caller's
choice: these functions only add up the values they are given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError, UnknownNameError
from ibcore.validation import check_weight

__all__ = [
    "MODELS",
    "TERMS",
    "TERM_DEFINITIONS",
    "ModelSpec",
    "aae_lagrangian",
    "ae_lagrangian",
    "beta_vae_lagrangian",
    "bib_ae_lagrangian",
    "coefficients",
    "gan_lagrangian",
    "generative_compression_lagrangian",
    "infovae_lagrangian",
    "lagrangian",
    "novelty_ae_lagrangian",
    "shannon_ae_lagrangian",
    "term_table",
    "vae_gan_lagrangian",
    "vae_lagrangian",
]

TERMS: tuple[str, ...] = ("A", "B", "C", "D")

TERM_DEFINITIONS: dict[str, str] = {
    "A": r"$\mathbb{E}_{p_\mathcal{D}(x)}\,\mathrm{KL}(q_\phi(z|x)\,\|\,p_\theta(z))$",
    "B": r"$\mathrm{KL}(q_\phi(z)\,\|\,p_\theta(z))$",
    "C": r"$\mathbb{E}_{p_\mathcal{D}(x)}\mathbb{E}_{q_\phi(z|x)}\log p_\theta(x|z)$",
    "D": r"$\mathrm{KL}(p_\mathcal{D}(x)\,\|\,p_\theta(x))$",
}
"""LaTeX of each term, as in eq. (27)-(28)."""

_FACTORS = ("1", "β")


@dataclass(frozen=True)
class ModelSpec:
    """One row of the model × term table.

    ``coefficients`` maps a term to a symbolic coefficient: a sign (``+``/``−``) and a factor
    (``1`` or ``β``). ``rate_replaces_ab``: the encoder is deterministic and quantized, so the
    pair A − B (= I(X; Ẑ)) is one number, the rate H(Ẑ) (eq. 35); the Lagrangian then takes
    that rate as input ``R`` in place of A and B.
    """

    name: str
    equation: str
    coefficients: Mapping[str, str]
    note: str = ""
    rate_replaces_ab: bool = False
    inputs: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        for term, coef in self.coefficients.items():
            if term not in TERMS:
                raise UnknownNameError(f"unknown term {term!r}; terms are {', '.join(TERMS)}")
            if len(coef) < 2 or coef[0] not in "+−" or coef[1:] not in _FACTORS:
                raise InvalidParameterError(f"bad symbolic coefficient {coef!r} for {term}")
        if self.rate_replaces_ab:
            if self.coefficients.get("A") != "+1" or self.coefficients.get("B") != "−1":
                raise InvalidParameterError("a rate stands for A − B: give A '+1' and B '−1'")
            inputs = ("R", *(t for t in TERMS if t in self.coefficients and t not in "AB"))
        else:
            inputs = tuple(t for t in TERMS if t in self.coefficients)
        object.__setattr__(self, "inputs", inputs)


MODELS: dict[str, ModelSpec] = {
    "ae": ModelSpec(
        "plain AE", "(31), β → ∞", {"C": "−1"},
        "only the likelihood: the β-VAE Lagrangian divided by β as β → ∞",
    ),
    "vae": ModelSpec("VAE", "(30)", {"A": "+1", "C": "−1"}, "β-VAE at β = 1"),
    "beta_vae": ModelSpec("β-VAE", "(31)", {"A": "+1", "C": "−β"},
                          "β weighs the likelihood, so the weight on A relative to C is 1/β"),
    "aae": ModelSpec("AAE", "(32)", {"B": "+1", "C": "−β"},
                     "B enters with + : the aggregate is pulled to the prior"),
    "infovae": ModelSpec(
        "InfoVAE", "(33)", {"A": "+1", "B": "−1", "C": "−β"},
        "as the source writes it: A − B = I(X;Z) exactly, so the prior drops out; the "
        "InfoVAE paper's own objective has B with a positive weight",
    ),
    "gan": ModelSpec(
        "GAN", "(20), (24)", {"D": "+β"},
        "vanilla GANs keep only D; (24)-(25) add −β·C with z drawn from the prior",
    ),
    "vae_gan": ModelSpec("VAE/GAN", "(34)", {"A": "+1", "C": "−β", "D": "+β"}),
    "shannon_ae": ModelSpec(
        "Shannon rate-distortion AE", "(35)", {"A": "+1", "B": "−1", "C": "−β"},
        "deterministic quantized encoder: A − B = I(X;Ẑ) = H(Ẑ), the rate",
        rate_replaces_ab=True,
    ),
    "generative_compression": ModelSpec(
        "generative compression AE", "(36)", {"A": "+1", "B": "−1", "C": "−β", "D": "+β"},
        "the rate H(Ẑ) for A − B, plus the adversarial term D",
        rate_replaces_ab=True,
    ),
    "novelty_ae": ModelSpec(
        "novelty-detection AE", "§4.3", {"B": "+1", "C": "−β", "D": "+β"},
        "the source names the terms B, C, D of Pidhorskyi et al.; signs as they train them",
    ),
    "bib_ae": ModelSpec("BIB-AE", "(26)-(29)", {"A": "+1", "B": "−1", "C": "−β", "D": "+β"}),
}
"""Every model of the source as a choice of terms, keyed by a short name."""


def _spec(model: str) -> ModelSpec:
    if model not in MODELS:
        raise UnknownNameError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    return MODELS[model]


def coefficients(model: str, beta: float = 1.0) -> dict[str, float]:
    """The numeric coefficient of each term of ``model``'s Lagrangian at ``beta`` (β ≥ 0)."""
    beta = check_weight("beta", beta)
    out = {}
    for term, coef in _spec(model).coefficients.items():
        sign = 1.0 if coef[0] == "+" else -1.0
        out[term] = sign * (beta if coef[1:] == "β" else 1.0)
    return out


def _as_scalar(name: str, value: Tensor | float) -> Tensor:
    t = value if isinstance(value, Tensor) else torch.as_tensor(float(value))
    if t.dim() != 0:
        raise ShapeError(
            f"term {name} must be a scalar (average it over the batch first), got shape "
            f"{tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t.detach())):
        raise NonFiniteError(f"term {name} is {float(t.detach())}; check its estimator")
    return t


def lagrangian(model: str, terms: Mapping[str, Tensor | float], beta: float = 1.0) -> Tensor:
    r"""``Σ_t c_t(β) · terms[t]`` over the terms of ``model`` (to be **minimised**).

    ``terms`` must hold exactly ``MODELS[model].inputs``: the terms the model uses (``R``
    instead of ``A`` and ``B`` for the quantized models), each a scalar tensor or float. A
    missing or extra term raises :class:`UnknownNameError`, so a term can never be dropped or
    added silently.
    """
    spec = _spec(model)
    given, wanted = set(terms), set(spec.inputs)
    if given != wanted:
        raise UnknownNameError(
            f"the {spec.name} Lagrangian {spec.equation} takes the terms "
            f"{', '.join(spec.inputs)}; got {', '.join(sorted(given)) or 'none'}"
            + (f" (missing {', '.join(sorted(wanted - given))})" if wanted - given else "")
            + (f" (not part of it: {', '.join(sorted(given - wanted))})" if given - wanted else "")
        )
    coefs = coefficients(model, beta)
    if spec.rate_replaces_ab:
        coefs = {"R": coefs.pop("A"), **{k: v for k, v in coefs.items() if k != "B"}}
    total: Tensor | None = None
    for term in spec.inputs:
        value = coefs[term] * _as_scalar(term, terms[term])
        total = value if total is None else total + value
    assert total is not None
    return total


def term_table(models: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Rows ``{"key", "model", "equation", "A", "B", "C", "D", "note"}`` of the term table.

    Coefficients are symbolic (``"+1"``, ``"−β"``); a term a model does not use is ``""``.
    """
    rows = []
    for key in models if models is not None else MODELS:
        spec = _spec(key)
        row = {"key": key, "model": spec.name, "equation": spec.equation}
        row.update({t: spec.coefficients.get(t, "") for t in TERMS})
        row["note"] = spec.note
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# one function per model
# ---------------------------------------------------------------------------------------------


def ae_lagrangian(C: Tensor | float) -> Tensor:
    """Plain autoencoder: ``−C``."""
    return lagrangian("ae", {"C": C})


def vae_lagrangian(A: Tensor | float, C: Tensor | float) -> Tensor:
    """VAE, eq. (30): ``A − C`` (the negative ELBO)."""
    return lagrangian("vae", {"A": A, "C": C})


def beta_vae_lagrangian(A: Tensor | float, C: Tensor | float, beta: float) -> Tensor:
    """β-VAE, eq. (31): ``A − β C`` (the source's β multiplies the likelihood)."""
    return lagrangian("beta_vae", {"A": A, "C": C}, beta)


def aae_lagrangian(B: Tensor | float, C: Tensor | float, beta: float = 1.0) -> Tensor:
    """AAE, eq. (32): ``B − β C``."""
    return lagrangian("aae", {"B": B, "C": C}, beta)


def infovae_lagrangian(
    A: Tensor | float, B: Tensor | float, C: Tensor | float, beta: float = 1.0
) -> Tensor:
    """InfoVAE as the source writes it, eq. (33): ``A − B − β C``."""
    return lagrangian("infovae", {"A": A, "B": B, "C": C}, beta)


def gan_lagrangian(D: Tensor | float, beta: float = 1.0) -> Tensor:
    """Vanilla GAN, eq. (20) with the D part of (24): ``β D``."""
    return lagrangian("gan", {"D": D}, beta)


def vae_gan_lagrangian(
    A: Tensor | float, C: Tensor | float, D: Tensor | float, beta: float = 1.0
) -> Tensor:
    """VAE/GAN, eq. (34): ``A − β C + β D``."""
    return lagrangian("vae_gan", {"A": A, "C": C, "D": D}, beta)


def shannon_ae_lagrangian(R: Tensor | float, C: Tensor | float, beta: float = 1.0) -> Tensor:
    """Shannon rate-distortion AE, eq. (35): ``R − β C`` with the rate ``R = H(Ẑ)`` (= A − B)."""
    return lagrangian("shannon_ae", {"R": R, "C": C}, beta)


def generative_compression_lagrangian(
    R: Tensor | float, C: Tensor | float, D: Tensor | float, beta: float = 1.0
) -> Tensor:
    """Generative compression, eq. (36): ``R − β (C − D)``."""
    return lagrangian("generative_compression", {"R": R, "C": C, "D": D}, beta)


def novelty_ae_lagrangian(
    B: Tensor | float, C: Tensor | float, D: Tensor | float, beta: float = 1.0
) -> Tensor:
    """Novelty-detection AE of section 4.3: ``B − β C + β D``."""
    return lagrangian("novelty_ae", {"B": B, "C": C, "D": D}, beta)


def bib_ae_lagrangian(
    A: Tensor | float,
    B: Tensor | float,
    C: Tensor | float,
    D: Tensor | float,
    beta: float = 1.0,
) -> Tensor:
    """BIB-AE, eq. (26)-(28): ``(A − B) − β (C − D)``."""
    return lagrangian("bib_ae", {"A": A, "B": B, "C": C, "D": D}, beta)

r"""Self-checks of the entropy-estimator IB exercises: the kNN entropy estimate and eq. 10."""

from __future__ import annotations

import math

import torch

from ibcore.estimators.knn_entropy import conditional_knn_entropy, knn_entropy
from ibcore.exercises.checking import Case, Check, Mistake
from ibcore.objectives.entropy_ib import entropy_ib_loss

__all__ = ["CHECKS"]


def _knn_cases() -> list[Case]:
    g = torch.Generator().manual_seed(13)
    out = []
    for n, d, k in ((50, 2, 1), (80, 5, 3), (40, 1, 2)):
        z = torch.randn(n, d, generator=g, dtype=torch.float64)
        out.append(Case(f"z of shape ({n}, {d}), k = {k}", (z, k)))
    return out


def _knn_minus_psi(z: torch.Tensor, k: int) -> torch.Tensor:
    return knn_entropy(z, k) - 2.0 * torch.special.digamma(torch.tensor(float(z.shape[0]),
                                                                            dtype=z.dtype))


def _knn_squared_no_half(z: torch.Tensor, k: int) -> torch.Tensor:
    n, d = z.shape
    dist = torch.cdist(z, z) + torch.diag(torch.full((n,), float("inf"), dtype=z.dtype))
    r = dist.kthvalue(k, dim=1).values
    return knn_entropy(z, k) + d * r.log().mean()


def _knn_diameter_ball(z: torch.Tensor, k: int) -> torch.Tensor:
    return knn_entropy(z, k) - z.shape[1] * math.log(2.0)


KNN_ENTROPY = Check(
    name="entropy_ib.knn_entropy",
    task="knn_entropy(z, k) -> the Kozachenko–Leonenko estimate of H[Z] in nats from N samples "
         "z [N, d], Euclidean distance to the k-th nearest other sample",
    reference=knn_entropy,
    cases=_knn_cases,
    mistakes=(
        Mistake(_knn_minus_psi,
                "the first term is +ψ(N), not −ψ(N): the source's eq. (11) prints the sign wrong, "
                "which shifts the estimate by 2ψ(N)."),
        Mistake(_knn_squared_no_half,
                "with squared distances the factor is d/(2N), not d/N: log r² = 2 log r."),
        Mistake(_knn_diameter_ball,
                "the ball volume does not match the distance: with radii r(i) use V_d, the "
                "volume of the ball of radius one (c_d = V_d/2^d belongs with diameters 2r(i))."),
    ),
    nonfinite_hint="A k-th neighbour at distance 0 gives log 0 = −inf: is each point counted as "
                   "its own nearest neighbour? Leave it out (e.g. put +inf on the diagonal).",
)


def _eq10_cases() -> list[Case]:
    g = torch.Generator().manual_seed(17)
    out = []
    for counts, d, b2 in (((20, 10, 6), 2, 0.3), ((8, 24), 3, 0.7), ((12, 12, 5, 9), 2, 0.0)):
        y = torch.cat([torch.full((c,), i, dtype=torch.long) for i, c in enumerate(counts)])
        z = torch.randn(len(y), d, generator=g, dtype=torch.float64) + y[:, None].double()
        out.append(Case(f"z of shape ({len(y)}, {d}), class sizes {counts}, beta2 = {b2:g}",
                        (z, y, b2)))
    return out


def _eq10(z: torch.Tensor, y: torch.Tensor, beta2: float) -> torch.Tensor:
    """Eq. 10, H[Z|Y] + (β'' − 1) H[Z], with k = 1 and the noise already in z."""
    return entropy_ib_loss(z, y, beta2, noise=False, k=1)["loss"]


def _eq10_uniform_classes(z: torch.Tensor, y: torch.Tensor, beta2: float) -> torch.Tensor:
    classes = torch.unique(y)
    h_zy = torch.stack([knn_entropy(z[y == c], 1) for c in classes]).mean()
    return h_zy + (beta2 - 1.0) * knn_entropy(z, 1)


def _eq10_flipped_weight(z: torch.Tensor, y: torch.Tensor, beta2: float) -> torch.Tensor:
    return conditional_knn_entropy(z, y, 1) + (1.0 - beta2) * knn_entropy(z, 1)


EQ10 = Check(
    name="entropy_ib.eq10_loss",
    task="eq10_loss(z, y, beta2) -> Ĥ[Z|Y] + (beta2 − 1) Ĥ[Z] in nats (k = 1), for latents "
         "z [N, d] that already contain the noise and integer labels y [N]",
    reference=_eq10,
    cases=_eq10_cases,
    mistakes=(
        Mistake(_eq10_uniform_classes,
                "the classes are weighted equally: H[Z|Y] = Σ_y p(y) H[Z|Y=y] weights each class "
                "by its share N_y/N of the batch, and these batches are unbalanced."),
        Mistake(_eq10_flipped_weight,
                "the weight of Ĥ[Z] has the wrong sign: it is β'' − 1, which is negative, so the "
                "objective rewards a spread-out latent."),
    ),
)

CHECKS = (KNN_ENTROPY, EQ10)

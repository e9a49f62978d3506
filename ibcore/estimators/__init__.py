"""Information measures, each tested against closed forms or independent references.

* :mod:`~ibcore.estimators.kl` — KL divergences of Gaussians and Dirichlets; the GMVIB rate.
* :mod:`~ibcore.estimators.knn_entropy` — Kozachenko–Leonenko kNN entropy, H[Z|Y], zero-entropy noise.
* :mod:`~ibcore.estimators.mi_bounds` — DV (MINE), NWJ, Jensen–Shannon and InfoNCE bounds on MI.
* :mod:`~ibcore.estimators.divergences` — unbiased MMD², density-ratio (classifier) KL.
* :mod:`~ibcore.estimators.rate` — bits of integer latents (discretized Gaussian, learned factorized).
* :mod:`~ibcore.estimators.gaussian_ib` — the Gaussian information bottleneck in closed form.
"""

from ibcore.estimators.divergences import density_ratio_kl, mmd2_unbiased
from ibcore.estimators.gaussian_ib import (
    critical_betas,
    gaussian_ib_curve,
    gaussian_ib_projection,
    mutual_information_linear_gaussian,
)
from ibcore.estimators.kl import (
    gmvib_rate,
    kl_diag_gaussian_std_normal,
    kl_diag_gaussians,
    kl_dirichlet,
)
from ibcore.estimators.knn_entropy import (
    add_zero_entropy_noise,
    conditional_knn_entropy,
    knn_distances,
    knn_entropy,
    zero_entropy_noise_std,
)
from ibcore.estimators.mi_bounds import (
    MineEMA,
    dv_bound,
    infonce_bound,
    jsd_bound,
    nwj_bound,
)
from ibcore.estimators.rate import FactorizedDensity, discretized_gaussian_probs, gaussian_bits

__all__ = [
    "FactorizedDensity",
    "MineEMA",
    "add_zero_entropy_noise",
    "conditional_knn_entropy",
    "critical_betas",
    "density_ratio_kl",
    "discretized_gaussian_probs",
    "dv_bound",
    "gaussian_bits",
    "gaussian_ib_curve",
    "gaussian_ib_projection",
    "gmvib_rate",
    "infonce_bound",
    "jsd_bound",
    "kl_diag_gaussian_std_normal",
    "kl_diag_gaussians",
    "kl_dirichlet",
    "knn_distances",
    "knn_entropy",
    "mmd2_unbiased",
    "mutual_information_linear_gaussian",
    "nwj_bound",
    "zero_entropy_noise_std",
]

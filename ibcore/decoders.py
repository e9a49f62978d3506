r"""A per-class Gaussian-mixture decoder fitted to frozen latents (``entropy_estimator_ib.md``, §4).

Training the encoder on eq. 10 clusters the latent by class (appendix A.2), so one Gaussian per
class decodes it. From training latents :math:`z_i` with labels :math:`y_i`,

.. math::

    \pi_c = \frac{N_c}{N}, \qquad \mu_c = \frac{1}{N_c}\sum_{i: y_i = c} z_i, \qquad
    \Sigma_c = \frac{1}{N_c}\sum_{i: y_i = c} (z_i - \mu_c)(z_i - \mu_c)^\top + \lambda \bar s\, I,

where :math:`\bar s` is the mean per-dimension variance of the latents around their class means
and :math:`\lambda` a small ridge (a class of fewer than K + 1 points, or a collapsed cluster,
would otherwise have a singular covariance). With ``shared=True`` every class uses the pooled
within-class covariance (linear discriminant analysis). The decoder's output is the posterior

.. math::

    \log q(y = c \mid z) = \log \pi_c + \log \mathcal N(z; \mu_c, \Sigma_c)
    - \log \sum_{c'} \pi_{c'}\, \mathcal N(z; \mu_{c'}, \Sigma_{c'}),

differentiable in :math:`z` (so FGSM can attack encoder + decoder together). The decoder
computes on the device of the latents it is given and returns its output there, wherever it was
fitted (:meth:`GaussianMixtureDecoder.to` moves it once, to avoid a copy per call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ibcore.errors import InvalidParameterError, ShapeError
from ibcore.validation import check_finite, check_int, check_weight

__all__ = ["GaussianMixtureDecoder", "fit_gaussian_mixture"]


@dataclass(frozen=True)
class GaussianMixtureDecoder:
    """Fitted class priors ``log_prior [C]``, means ``means [C, K]``, Cholesky factors
    ``chol [C, K, K]`` of the class covariances (float64), all on one device."""

    log_prior: Tensor
    means: Tensor
    chol: Tensor

    @property
    def classes(self) -> int:
        return int(self.means.shape[0])

    @property
    def latent_dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device: torch.device | str) -> GaussianMixtureDecoder:
        """The same decoder with its parameters on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if self.means.device == device:
            return self
        return GaussianMixtureDecoder(self.log_prior.to(device), self.means.to(device),
                                      self.chol.to(device))

    def log_likelihood(self, z: Tensor) -> Tensor:
        r""":math:`\log \mathcal N(z; \mu_c, \Sigma_c)` for every row and class, ``[B, C]``
        (float64, on ``z``'s device)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ShapeError(f"z must have shape [B, {self.latent_dim}], got {tuple(z.shape)}")
        params = self.to(z.device)
        zz = z.to(params.means.dtype)
        diff = (zz.unsqueeze(0) - params.means.unsqueeze(1)).transpose(1, 2)  # [C, K, B]
        sol = torch.linalg.solve_triangular(params.chol, diff, upper=False)  # L⁻¹(z − μ)
        maha = sol.square().sum(dim=1).T  # [B, C]
        logdet = 2.0 * torch.log(torch.diagonal(params.chol, dim1=1, dim2=2)).sum(dim=1)  # [C]
        return -0.5 * (maha + logdet + self.latent_dim * math.log(2.0 * math.pi))

    def log_posterior(self, z: Tensor) -> Tensor:
        """``log q(y | z)`` ``[B, C]`` in ``z``'s dtype and on ``z``'s device (usable as logits)."""
        joint = self.log_likelihood(z) + self.log_prior.to(z.device)
        return (joint - torch.logsumexp(joint, dim=1, keepdim=True)).to(z.dtype)

    def __call__(self, z: Tensor) -> Tensor:
        return self.log_posterior(z)

    def predict(self, z: Tensor) -> Tensor:
        """The most probable class of each row."""
        return self.log_posterior(z).argmax(dim=1)


def fit_gaussian_mixture(
    z: Tensor, y: Tensor, classes: int, *, ridge: float = 1e-3, shared: bool = False
) -> GaussianMixtureDecoder:
    """Fit one Gaussian per class to latents ``z [N, K]`` with labels ``y [N]`` (see module doc).

    Every class in ``range(classes)`` needs at least one sample; ``ridge`` > 0 is λ.
    """
    if not isinstance(z, Tensor) or z.dim() != 2:
        raise ShapeError(f"z must be a [N, K] tensor of latents, got {getattr(z, 'shape', z)!r}")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != z.shape[0]:
        raise ShapeError(f"y must have shape ({z.shape[0]},) to match z, got "
                         f"{tuple(getattr(y, 'shape', ()))}")
    if y.is_floating_point():
        raise InvalidParameterError(f"y must hold integer labels, got dtype {y.dtype}")
    classes = check_int("classes", classes, low=2)
    ridge = check_weight("ridge", ridge, low=0.0, low_inclusive=False)
    check_finite("z", z)
    zd = z.detach().to(torch.float64)
    yy = y.to(zd.device)
    counts = torch.bincount(yy, minlength=classes)
    if counts.numel() > classes or int(yy.min()) < 0:
        raise InvalidParameterError(f"labels must lie in [0, {classes}), got {yy.unique().tolist()}")
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().squeeze(1).tolist()
        raise InvalidParameterError(
            f"classes {missing} have no sample; fit on a set that contains every class"
        )
    k = zd.shape[1]
    means = torch.stack([zd[yy == c].mean(0) for c in range(classes)])
    centred = zd - means[yy]
    covs = torch.stack([centred[yy == c].T @ centred[yy == c] / float(counts[c])
                        for c in range(classes)])
    pooled = (centred.T @ centred) / zd.shape[0]
    scale = float(torch.diagonal(pooled).mean())
    if not scale > 0.0:
        scale = float(zd.var(dim=0).mean()) if zd.shape[0] > 1 else 0.0
    if not scale > 0.0:
        raise InvalidParameterError(
            "all latents are identical, so no covariance can be fitted; check the encoder"
        )
    eye = torch.eye(k, dtype=torch.float64, device=zd.device)
    if shared:
        covs = pooled.expand(classes, k, k)
    chol = torch.linalg.cholesky(covs + ridge * scale * eye)
    log_prior = torch.log(counts.to(torch.float64) / zd.shape[0])
    return GaussianMixtureDecoder(log_prior, means, chol)

r"""Sample-based divergences between two distributions: kernel MMD² and a density-ratio KL.

Both are used for the marginal-matching terms of ``variational_glasses.md`` (terms A, B and D
of eq. 26-28): MMD as in InfoVAE / WAE, and a KL estimated through a classifier's logit
(density-ratio estimation, the remark after eq. 18).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.validation import check_float, check_int, check_weight

__all__ = [
    "ClassifierKL",
    "classifier_kl",
    "density_ratio_kl",
    "frechet_distance",
    "median_heuristic_bandwidth",
    "mmd2_unbiased",
]

_KERNELS = ("rbf", "imq")
_MEDIAN_MAX_POINTS = 1000


def _check_samples(name: str, x: torch.Tensor, *, min_n: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ShapeError(
            f"{name} must have shape [n, d] (one sample per row), got {tuple(x.shape)}; "
            "use x.reshape(len(x), -1) or x[:, None] for scalars"
        )
    if x.shape[0] < min_n:
        raise ShapeError(f"{name} needs at least {min_n} samples (rows), got {x.shape[0]}")
    return check_float(name, x)


def _check_same_dim(x: torch.Tensor, y: torch.Tensor, names: tuple[str, str]) -> None:
    if x.shape[1] != y.shape[1]:
        raise ShapeError(
            f"{names[0]} and {names[1]} must have the same number of columns (dimension d), "
            f"got {x.shape[1]} and {y.shape[1]}"
        )


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, clamped at 0 against round-off."""
    return torch.cdist(a, b).pow(2).clamp_min(0.0)


def median_heuristic_bandwidth(x: torch.Tensor, y: torch.Tensor, kernel: str = "rbf") -> float:
    r"""Bandwidth σ chosen from the median pairwise distance of the pooled sample.

    Let ``med²`` be the median of ``‖z_i − z_j‖²`` over distinct pairs of the pooled sample
    ``Z = X ∪ Y`` (at most the first 1000 rows of each of X and Y are used, so the cost stays
    bounded; the result is detached from autograd).

    * ``"rbf"``: σ = med, the median distance (Gretton et al. 2012), i.e.
      ``k(a, b) = exp(−‖a − b‖² / (2 med²))``.
    * ``"imq"``: σ with ``2 d σ² = med²``, so that the IMQ constant ``C = 2 d σ²`` equals the
      median squared distance. For ``Z ~ N(0, s² I_d)``, ``‖z_i − z_j‖² ≈ 2 d s²`` and this
      recovers WAE's choice σ = s.
    """
    if kernel not in _KERNELS:
        raise UnknownNameError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    z = torch.cat([x[:_MEDIAN_MAX_POINTS], y[:_MEDIAN_MAX_POINTS]]).detach()
    d2 = _sq_dists(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    med2 = float(d2[iu[0], iu[1]].median())
    if not med2 > 0.0:
        raise InvalidParameterError(
            "the median pairwise distance of the samples is 0 (many repeated points); pass an "
            "explicit bandwidth"
        )
    if kernel == "rbf":
        return math.sqrt(med2)
    return math.sqrt(med2 / (2.0 * x.shape[1]))


def _kernel(d2: torch.Tensor, kernel: str, sigma: float, dim: int) -> torch.Tensor:
    if kernel == "rbf":
        return torch.exp(-d2 / (2.0 * sigma**2))
    c = 2.0 * dim * sigma**2
    return c / (c + d2)


def mmd2_unbiased(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: str = "rbf",
    bandwidth: float | None = None,
) -> torch.Tensor:
    r"""Unbiased U-statistic estimate of the squared maximum mean discrepancy MMD²(P, Q).

    .. math::
        \widehat{\mathrm{MMD}}^2 = \frac{1}{N(N-1)} \sum_{i \ne j} k(x_i, x_j)
        + \frac{1}{M(M-1)} \sum_{i \ne j} k(y_i, y_j) - \frac{2}{NM} \sum_{i, j} k(x_i, y_j)

    Its expectation is exactly MMD² ≥ 0, but single estimates can be **negative** (most often
    when P = Q). Differentiable with respect to ``x`` and ``y``.

    Kernels, with σ = ``bandwidth``:

    * ``"rbf"``: ``k(a, b) = exp(−‖a − b‖² / (2σ²))``.
    * ``"imq"``: inverse multiquadratic ``k(a, b) = C / (C + ‖a − b‖²)`` with ``C = 2 d σ²``,
      the InfoVAE / WAE convention (σ² = variance per coordinate of the N(0, σ² I_d) prior;
      WAE uses σ = 1).

    With ``bandwidth=None``, σ comes from :func:`median_heuristic_bandwidth` (RBF: σ = median
    pairwise distance of the pooled sample; IMQ: C = median squared distance), treated as a
    constant in the gradient.

    Args:
        x: samples of P, shape ``[N, d]``, N ≥ 2.
        y: samples of Q, shape ``[M, d]``, M ≥ 2.
        kernel: ``"rbf"`` or ``"imq"``.
        bandwidth: σ > 0, or ``None`` for the median heuristic.

    Returns:
        0-dim tensor.
    """
    _check_samples("x", x, min_n=2)
    _check_samples("y", y, min_n=2)
    _check_same_dim(x, y, ("x", "y"))
    if kernel not in _KERNELS:
        raise UnknownNameError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    if bandwidth is None:
        sigma = median_heuristic_bandwidth(x, y, kernel)
    else:
        sigma = check_weight("bandwidth", bandwidth, low=0.0, low_inclusive=False)
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    k_xx = _kernel(_sq_dists(x, x), kernel, sigma, d)
    k_yy = _kernel(_sq_dists(y, y), kernel, sigma, d)
    k_xy = _kernel(_sq_dists(x, y), kernel, sigma, d)
    # the diagonals k(x_i, x_i) = 1 for both kernels, and are excluded from the U-statistic
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return term_xx + term_yy - 2.0 * k_xy.mean()


def _init_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """Uniform(±1/sqrt(fan_in)) initialisation drawn from an explicit generator."""
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            u = torch.rand(p.shape, generator=generator, dtype=p.dtype)
            p.copy_((2.0 * u - 1.0) * bound)


def density_ratio_kl(
    p_samples: torch.Tensor,
    q_samples: torch.Tensor,
    *,
    hidden: int = 64,
    steps: int = 500,
    lr: float = 1e-2,
    holdout: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> float:
    r"""Estimate KL(P‖Q) by training a classifier whose logit approximates ``log p/q``.

    A small MLP ``f`` (one hidden layer of ``hidden`` tanh units) is trained to separate
    P-samples (label 1) from Q-samples (label 0) with the class-balanced logistic loss

    .. math::
        \mathcal L(f) = \tfrac12\,\mathbb E_P[\mathrm{sp}(-f)] + \tfrac12\,\mathbb E_Q[\mathrm{sp}(f)],

    whose minimiser over all functions is ``f* = log p/q`` whatever the two sample sizes (the
    balancing replaces the prior log-odds ``log N_P/N_Q``). Then

    .. math::  \widehat{\mathrm{KL}}(P\|Q) = \frac{1}{|P_{\text{held-out}}|}
               \sum_{x \in P_{\text{held-out}}} f(x).

    Training uses full-batch Adam for ``steps`` steps on a random ``1 − holdout`` fraction of
    each sample set (inputs standardised with the training mean and standard deviation); the
    average runs over the other P samples.

    The estimate is **biased** with finite samples and finite training: an imperfect
    classifier usually underestimates large divergences, and an overfitting one can
    overestimate; the held-out average removes only the optimistic bias of evaluating on the
    training points. Use it to compare settings, not as an exact value.

    Args:
        p_samples: samples of P, shape ``[N_P, d]``, N_P ≥ 4.
        q_samples: samples of Q, shape ``[N_Q, d]``, N_Q ≥ 4.
        hidden: hidden units of the MLP (≥ 1).
        steps: Adam steps (≥ 1).
        lr: Adam learning rate.
        holdout: fraction of P and Q samples held out from training, in (0, 1).
        generator: random source for the split and the initial weights (CPU generator);
            ``None`` uses a fresh generator seeded with 0, so results are reproducible.
        device: where to train (default: the device of ``p_samples``).

    Returns:
        The KL estimate in nats, as a Python float.
    """
    _check_samples("p_samples", p_samples, min_n=4)
    _check_samples("q_samples", q_samples, min_n=4)
    _check_same_dim(p_samples, q_samples, ("p_samples", "q_samples"))
    check_int("hidden", hidden, low=1)
    check_int("steps", steps, low=1)
    check_weight("lr", lr, low=0.0, low_inclusive=False)
    check_weight("holdout", holdout, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    dev = torch.device(device) if device is not None else p_samples.device
    dtype = p_samples.dtype

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        n_test = min(max(1, round(holdout * n)), n - 1)
        perm = torch.randperm(n, generator=generator).to(x.device)
        x = x.detach()[perm].to(device=dev, dtype=dtype)
        return x[n_test:], x[:n_test]

    p_train, p_test = split(p_samples)
    q_train, _ = split(q_samples)
    pooled = torch.cat([p_train, q_train])
    shift = pooled.mean(dim=0)
    scale = pooled.std(dim=0).clamp_min(1e-8)

    d = p_samples.shape[1]
    layers = (nn.Linear(d, hidden), nn.Linear(hidden, 1))
    for layer in layers:
        _init_linear(layer, generator)
    net = nn.Sequential(layers[0], nn.Tanh(), layers[1]).to(device=dev, dtype=dtype)

    def logit(x: torch.Tensor) -> torch.Tensor:
        return net((x - shift) / scale).squeeze(-1)

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * F.softplus(-logit(p_train)).mean() + 0.5 * F.softplus(logit(q_train)).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(logit(p_test).mean())


@dataclass(frozen=True)
class ClassifierKL:
    """What :func:`classifier_kl` measured on the held-out samples.

    ``kl_nats``: the plug-in estimate (mean held-out logit on P); ``dv_nats``: the
    Donsker–Varadhan value ``mean_P f − log mean_Q e^f`` of the same logit; ``accuracy``: the
    class-balanced held-out accuracy of the classifier (0.5 = the two sets look alike);
    ``steps``: the Adam step whose weights were kept (the lowest validation loss).
    """

    kl_nats: float
    dv_nats: float
    accuracy: float
    steps: int


def classifier_kl(
    p_samples: torch.Tensor,
    q_samples: torch.Tensor,
    *,
    hidden: int = 64,
    max_steps: int = 1000,
    lr: float = 1e-2,
    eval_every: int = 10,
    patience: int = 10,
    generator: torch.Generator | None = None,
) -> ClassifierKL:
    r"""KL(P‖Q) through a classifier's logit, with early stopping on a validation split.

    Each sample set is split at random into halves: one half is held out for the estimate, the
    other is split again into a training part (3/4) and a validation part (1/4). The classifier
    (one hidden layer of ``hidden`` tanh units, inputs standardised with the training mean and
    std) minimises the class-balanced logistic loss

    .. math::
        \mathcal L(f) = \tfrac12\,\mathbb E_P[\mathrm{sp}(-f)] + \tfrac12\,\mathbb E_Q[\mathrm{sp}(f)],

    whose minimiser is ``f* = log p/q``, by full-batch Adam; every ``eval_every`` steps the loss
    on the validation part is computed, the weights with the lowest one are kept, and training
    stops after ``patience`` evaluations without improvement (or at ``max_steps``). On the
    held-out halves

    .. math::  \widehat{\mathrm{KL}} = \overline{f(x)}_{x\in P_{\text{held-out}}}, \qquad
               \widehat{\mathrm{DV}} = \overline{f(x)}_{P} - \log \overline{e^{f(y)}}_{Q},

    and DV is a lower bound on KL for every ``f`` (up to its finite-sample error). Without early
    stopping an over-confident logit inflates the plug-in mean: the stopping rule is what makes
    the estimate usable when the two sets are easy to separate.

    Args:
        p_samples, q_samples: ``[N, d]`` samples of P and Q, at least 8 rows each.
        hidden: hidden units (≥ 1); max_steps, eval_every, patience: ≥ 1; lr > 0.
        generator: random source of the splits and initial weights (CPU); ``None`` seeds 0.
    """
    _check_samples("p_samples", p_samples, min_n=8)
    _check_samples("q_samples", q_samples, min_n=8)
    _check_same_dim(p_samples, q_samples, ("p_samples", "q_samples"))
    for name, value in (("hidden", hidden), ("max_steps", max_steps),
                        ("eval_every", eval_every), ("patience", patience)):
        check_int(name, value, low=1)
    check_weight("lr", lr, low=0.0, low_inclusive=False)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    dtype = p_samples.dtype

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        perm = torch.randperm(n, generator=generator).to(x.device)
        x = x.detach()[perm]
        n_test = n // 2
        n_val = max(1, (n - n_test) // 4)
        return x[n_test + n_val:], x[n_test:n_test + n_val], x[:n_test]

    p_train, p_val, p_test = split(p_samples)
    q_train, q_val, q_test = split(q_samples)
    pooled = torch.cat([p_train, q_train])
    shift = pooled.mean(dim=0)
    scale = pooled.std(dim=0).clamp_min(1e-8)
    d = p_samples.shape[1]
    layers = (nn.Linear(d, hidden), nn.Linear(hidden, 1))
    for layer in layers:
        _init_linear(layer, generator)
    net = nn.Sequential(layers[0], nn.Tanh(), layers[1]).to(device=p_samples.device, dtype=dtype)

    def logit(x: torch.Tensor) -> torch.Tensor:
        return net((x - shift) / scale).squeeze(-1)

    def loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return 0.5 * F.softplus(-logit(p)).mean() + 0.5 * F.softplus(logit(q)).mean()

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    with torch.no_grad():
        best_loss, best_step = float(loss(p_val, q_val)), 0
    best_state = copy.deepcopy(net.state_dict())
    waited = 0
    for step in range(1, max_steps + 1):
        opt.zero_grad(set_to_none=True)
        loss(p_train, q_train).backward()
        opt.step()
        if step % eval_every == 0 or step == max_steps:
            with torch.no_grad():
                val = float(loss(p_val, q_val))
            if val < best_loss:
                best_loss, best_step, waited = val, step, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                waited += 1
                if waited >= patience:
                    break
    net.load_state_dict(best_state)
    with torch.no_grad():
        fp, fq = logit(p_test).double(), logit(q_test).double()
        kl = float(fp.mean())
        dv = kl - float(torch.logsumexp(fq, 0) - math.log(fq.shape[0]))
        acc = 0.5 * float((fp > 0).double().mean() + (fq < 0).double().mean())
    return ClassifierKL(kl, dv, acc, best_step)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix (eigenvalues clamped at 0)."""
    vals, vecs = torch.linalg.eigh(0.5 * (a + a.T))
    return (vecs * vals.clamp_min(0.0).sqrt()) @ vecs.T


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    r"""Fréchet distance between Gaussians fitted to two sample sets (the FID formula),

    .. math::  \lVert\mu_x-\mu_y\rVert^2 + \operatorname{tr}\bigl(\Sigma_x + \Sigma_y
               - 2\,(\Sigma_x^{1/2}\Sigma_y\Sigma_x^{1/2})^{1/2}\bigr),

    with sample means and covariances (float64). It is 0 for identical Gaussians; for
    ``N(m, s² I_d)`` against ``N(0, I_d)`` it is ``‖m‖² + d (1 − s)²``.

    Args:
        x, y: ``[N, d]`` and ``[M, d]`` features, at least 2 rows each.
    """
    _check_samples("x", x, min_n=2)
    _check_samples("y", y, min_n=2)
    _check_same_dim(x, y, ("x", "y"))
    a, b = x.detach().double(), y.detach().double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = torch.atleast_2d(torch.cov(a.T))
    cov_b = torch.atleast_2d(torch.cov(b.T))
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a + cov_b - 2.0 * cross)
    return max(float(value), 0.0)

r"""Kozachenko–Leonenko k-nearest-neighbour entropy estimator (Kirsch, Lyle & Gal, §4.1–4.2).

For samples :math:`z_1, \dots, z_N \in \mathbb{R}^d` let :math:`r(i)` be the distance from
:math:`z_i` to its :math:`k`-th nearest neighbour (itself excluded). The estimate in nats is

.. math::

    \hat H[Z] = \psi(N) - \psi(k) + \log V_d + \frac{d}{N} \sum_{i=1}^N \log r(i),

where :math:`\psi` is the digamma function and :math:`V_d` the volume of the ball of *radius one*
of the chosen norm (:func:`log_unit_ball_volume`). The source document writes the same estimator
as its eq. 11 with :math:`\epsilon(i) = 2 r(i)` and :math:`c_d` the volume of the ball of
*diameter one* (Kraskov et al., 2004); since :math:`c_d \epsilon(i)^d = V_d r(i)^d` the two forms
are identical, and this module uses the radius form throughout. Note that eq. 11 as printed in
the source has :math:`-\psi(N)`; the estimator has :math:`+\psi(N)` (an error of
:math:`2\psi(N) \approx 18` nats at :math:`N = 10^4` otherwise), which the tests confirm against
closed-form entropies. Eq. 13 is the same value written with squared distances,
:math:`\frac{d}{2N}\sum_i \log r(i)^2`, whose gradient (eq. 14) avoids the square root.

Neighbour search is exact and runs in row chunks, so memory stays bounded. For the L2 norm
each chunk costs one matrix product: :math:`\|z_j\|^2 - 2 z_i^\top z_j` (the row constant
:math:`\|z_i\|^2` does not change the ranking) gives a few candidate neighbours per row; their
distances are recomputed directly from :math:`z_i - z_j`, and a row is accepted only when a
rounding-error bound proves that no point outside the candidates can be closer. Rows that
cannot be certified (for example points much closer to each other than to the origin, in
float32) are searched again with direct differences. The max norm is searched with direct
differences throughout. The gradient flows only through the recomputed distances to the
selected neighbours (the selection itself is discrete), so the backward pass costs
:math:`O(Nd)`.
"""

from __future__ import annotations

import math

import torch

from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError, UnknownNameError
from ibcore.validation import check_float

__all__ = [
    "NORMS",
    "add_zero_entropy_noise",
    "conditional_knn_entropy",
    "knn_distances",
    "knn_entropy",
    "knn_indices",
    "log_unit_ball_volume",
    "zero_entropy_noise_std",
]

#: Norms the estimator supports: Euclidean (``"l2"``) and maximum (``"max"``, :math:`\ell^\infty`).
NORMS: tuple[str, ...] = ("l2", "max")

# Memory budget of one chunk of the distance matrix (rows x N entries) when chunk_size is None.
_CHUNK_BYTES = 64 * 2**20
# Candidates kept per row beyond k by the matrix-product search before the exact re-ranking.
_EXTRA_CANDIDATES = 8
# Safety factor of the rounding-error bound of the matrix-product distances (see _l2_bound).
_BOUND_FACTOR = 1.0
# Column group width of the two-level selection of the smallest entries (see _smallest).
_GROUP = 64


# --------------------------------------------------------------------------------------------
# Constants of the estimator
# --------------------------------------------------------------------------------------------


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise UnknownNameError(f"unknown norm {norm!r}; use one of {', '.join(map(repr, NORMS))}")
    return norm


def log_unit_ball_volume(d: int, norm: str = "l2") -> float:
    r"""Log-volume :math:`\log V_d` of the *radius-one* ball of ``norm`` in :math:`\mathbb{R}^d`.

    ``"l2"``: :math:`V_d = \pi^{d/2} / \Gamma(d/2 + 1)`; ``"max"``: :math:`V_d = 2^d` (the cube
    :math:`[-1, 1]^d`). Kraskov et al. and the source's eq. 11 use the diameter-one ball
    :math:`c_d = V_d / 2^d` together with :math:`\epsilon = 2 r`; see the module docstring.
    """
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise InvalidParameterError(f"d must be an integer ≥ 1 (the dimension), got {d!r}")
    _check_norm(norm)
    if norm == "l2":
        return 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)
    return d * math.log(2.0)


def _digamma_int(n: int) -> float:
    """ψ(n) for a positive integer, in float64."""
    return float(torch.special.digamma(torch.tensor(float(n), dtype=torch.float64)))


def zero_entropy_noise_std() -> float:
    r"""Standard deviation :math:`1/\sqrt{2\pi e}` of zero-entropy Gaussian noise (§3.1).

    Each coordinate of :math:`\mathcal{N}(0, \sigma^2)` has entropy
    :math:`\tfrac12 \log(2\pi e \sigma^2)`, which is zero for :math:`\sigma^2 = 1/(2\pi e)`.
    """
    return 1.0 / math.sqrt(2.0 * math.pi * math.e)


def add_zero_entropy_noise(
    z: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Return :math:`z + \epsilon` with :math:`\epsilon \sim \mathcal{N}(0, I / (2\pi e))` (§3.1).

    The noise has differential entropy exactly 0 nats, so :math:`H[Z + \epsilon] \ge 0`
    (appendix A.1). Differentiable with respect to ``z``; the noise is drawn on ``z``'s device
    and dtype from ``generator`` (which must live on that device) or the global generator.
    """
    check_float("z", z)
    noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    return z + noise * zero_entropy_noise_std()


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_points(z: torch.Tensor) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise ShapeError(f"z must be a torch.Tensor of shape (N, d), got {type(z).__name__}")
    if z.dim() != 2:
        raise ShapeError(
            f"z must have shape (N, d) — one row per sample — got {tuple(z.shape)}; "
            "flatten the features with z.reshape(len(z), -1)"
        )
    if z.shape[1] < 1:
        raise ShapeError(f"z must have at least one feature column, got shape {tuple(z.shape)}")
    return check_float("z", z)


def _check_k(k: int, n: int, what: str = "points") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise InvalidParameterError(f"k must be an integer ≥ 1, got {k!r}")
    if k < 1:
        raise InvalidParameterError(f"k must be ≥ 1 (the k-th nearest neighbour), got {k}")
    if k >= n:
        raise InvalidParameterError(
            f"k = {k} needs at least k + 1 = {k + 1} {what}, got {n}; "
            "use more samples or a smaller k"
        )
    return k


def _check_chunk_size(chunk_size: int | None) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidParameterError(
            f"chunk_size must be None (automatic) or an integer ≥ 1, got {chunk_size!r}"
        )
    return chunk_size


def _rows_per_chunk(n_cols: int, row_bytes: int, chunk_size: int | None) -> int:
    """Rows per chunk: ``chunk_size`` if given, else as many as fit in ``_CHUNK_BYTES``."""
    if chunk_size is not None:
        return chunk_size
    return max(1, min(n_cols, _CHUNK_BYTES // max(1, row_bytes)))


def _search_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are searched in float32 (cdist and the error bound need it)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


# --------------------------------------------------------------------------------------------
# Exact neighbour search (no gradient)
# --------------------------------------------------------------------------------------------


def _exact_rows(
    x: torch.Tensor, rows: torch.Tensor, k: int, p: float, chunk_size: int | None
) -> torch.Tensor:
    """k-th neighbour of ``x[rows]`` among all rows of ``x``, by direct differences (exact)."""
    n = x.shape[0]
    out = torch.empty(rows.shape[0], dtype=torch.long, device=x.device)
    step = _rows_per_chunk(n, n * x.element_size(), chunk_size)
    for s in range(0, rows.shape[0], step):
        r = rows[s : s + step]
        dist = torch.cdist(x[r], x, p=p, compute_mode="donot_use_mm_for_euclid_dist")
        dist[torch.arange(r.shape[0], device=x.device), r] = math.inf
        if k == 1:
            out[s : s + step] = dist.argmin(dim=1)
        else:
            out[s : s + step] = dist.topk(k, dim=1, largest=False).indices[:, k - 1]
    return out


def _l2_bound(x: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    r"""Per-row bound on the rounding error of :math:`\|x_j\|^2 - 2 x_i^\top x_j` over all j.

    A dot product of length d has error :math:`\lesssim \sqrt{d}\,u\,\|x_i\|\|x_j\|` in practice
    (probabilistic bound; the worst case grows with d instead of √d); with
    :math:`M = \max_j \|x_j\|` this gives
    :math:`c (1 + \sqrt{d})\, \mathrm{eps}\,(M^2 + 2\|x_i\| M)`
    with a safety factor c. The caller raises it further if any observed error is larger.
    """
    eps = torch.finfo(x.dtype).eps
    norms = sq.sqrt()
    m = norms.max()
    return _BOUND_FACTOR * (1.0 + math.sqrt(x.shape[1])) * eps * (m * m + 2.0 * norms * m)


def _candidate_sq_distances(
    x: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor
) -> torch.Tensor:
    """Exact ``||x_i - x_j||^2`` for ``i`` in ``rows`` and ``j`` in the matching row of ``cand``."""
    out = torch.empty(cand.shape, dtype=x.dtype, device=x.device)
    step = max(1, _CHUNK_BYTES // (cand.shape[1] * x.shape[1] * x.element_size()))
    for s in range(0, cand.shape[0], step):
        e = min(s + step, cand.shape[0])
        diff = x[cand[s:e]]
        diff.sub_(x[rows[s:e]].unsqueeze(1)).square_()
        torch.sum(diff, dim=2, out=out[s:e])
    return out


def _kth_among(
    x: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact k-th nearest among the candidates ``cand`` (one row per entry of ``rows``).

    Returns its index, its exact squared distance, and the exact squared distances to all
    candidates.
    """
    exact = _candidate_sq_distances(x, rows, cand)
    if cand.shape[1] == k:
        kth, pos = exact.max(dim=1)
    else:
        kth, pos = exact.topk(k, dim=1, largest=False, sorted=True)
        kth, pos = kth[:, k - 1], pos[:, k - 1]
    return cand.gather(1, pos.unsqueeze(1)).squeeze(1), kth, exact


def _certify(
    x: torch.Tensor, sq: torch.Tensor, bound: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact k-th neighbours of the first ``len(idx)`` rows from their approximate top lists.

    ``vals``/``idx`` hold, per row, the smallest values of :math:`\|x_j\|^2 - 2x_i^\top x_j`
    in increasing order (error at most ``bound``). Returns the chosen indices and the mask of
    rows that could not be certified (to be searched by direct differences).
    """
    n_rows, n_top = idx.shape
    others = x.shape[0] - 1
    rows = torch.arange(n_rows, device=x.device)
    uncertified = torch.zeros(n_rows, dtype=torch.bool, device=x.device)
    # First check: the k best approximate candidates against the (k+1)-th value.
    best, kth, exact = _kth_among(x, rows, idx[:, :k], k)
    if k == others:
        return best, uncertified  # every other point is a candidate
    sq_rows = sq[:n_rows]
    observed = (vals[:, :k] - (exact - sq_rows.unsqueeze(1))).abs().max()
    slack = sq_rows - torch.maximum(bound[:n_rows], 2.0 * observed)
    bad = (~(kth <= vals[:, k] + slack)).nonzero().squeeze(1)
    if bad.numel() == 0:
        return best, uncertified
    # Second check: all candidates but the last against the last value (or every other point).
    n_wide = n_top if n_top == others else n_top - 1
    chosen, kth, _ = _kth_among(x, bad, idx[bad, :n_wide], k)
    best[bad] = chosen
    if n_wide < others:
        uncertified[bad[~(kth <= vals[bad, n_wide] + slack[bad])]] = True
    return best, uncertified


def _smallest(block: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` smallest entries of each row of a contiguous ``block``, sorted, with columns.

    Same values as ``block.topk(m, largest=False)`` at a fraction of its cost on long rows:
    split each row into groups of ``_GROUP`` columns and take the group minima (one vectorised
    pass); the ``m`` smallest entries all lie in the ``m`` groups with the smallest minima
    (every entry outside them is at least the m-th smallest minimum, and those m minima are
    already m entries no larger than it), so ``topk`` only runs over those groups.
    """
    rows, n = block.shape
    n_groups = n // _GROUP
    if n_groups < 4 * m:
        return block.topk(m, dim=1, largest=False, sorted=True)
    grouped = block[:, : n_groups * _GROUP].view(rows, n_groups, _GROUP)
    groups = grouped.amin(dim=2).topk(m, dim=1, largest=False, sorted=False).indices
    offsets = torch.arange(_GROUP, device=block.device)
    cols = (groups.unsqueeze(2) * _GROUP + offsets).reshape(rows, m * _GROUP)
    if n_groups * _GROUP < n:  # the last, partial group is always a candidate
        tail = torch.arange(n_groups * _GROUP, n, device=block.device)
        cols = torch.cat([cols, tail.expand(rows, tail.numel())], dim=1)
    vals, pos = block.gather(1, cols).topk(m, dim=1, largest=False, sorted=True)
    return vals, cols.gather(1, pos)


def _search_l2(x: torch.Tensor, k: int, chunk_size: int | None) -> torch.Tensor:
    r"""Exact k-th L2 neighbour of every row of ``x`` (see the module docstring).

    Per chunk of rows one matrix product ranks all points by :math:`\|x_j\|^2 - 2x_i^\top x_j`
    (rounding error at most ``bound``) and keeps the ``k + 9`` smallest values (:func:`_smallest`).
    Then, for all rows at once: when the largest exact distance to the ``k`` best is below the
    approximate ``(k+1)``-th value minus the bound, no other point can be nearer. Rows that fail are
    re-ranked exactly over ``k + 8`` candidates and checked against the ``(k+9)``-th value;
    rows that fail again are searched by direct differences. The first chunk is checked at
    once: if most of its rows fail (low dimension in float32, say), every row is searched by
    direct differences instead.
    """
    n = x.shape[0]
    x = x - x.mean(dim=0)  # centring shrinks the norms, hence the rounding error
    sq = (x * x).sum(dim=1)
    if not bool(torch.isfinite(sq).all()):
        raise NonFiniteError("squared norms of z overflow; rescale z or use float64")
    n_top = min(k + _EXTRA_CANDIDATES + 1, n - 1)
    bound = _l2_bound(x, sq)
    # Columns padded to whole groups of _smallest with points at infinite distance.
    pad = -n % _GROUP
    x_cols = torch.cat([x, x.new_zeros(pad, x.shape[1])])
    sq_cols = torch.cat([sq, sq.new_full((pad,), math.inf)]).unsqueeze(0)
    vals = torch.empty(n, n_top, dtype=x.dtype, device=x.device)
    idx = torch.empty(n, n_top, dtype=torch.long, device=x.device)
    step = _rows_per_chunk(n, (n + pad) * x.element_size(), chunk_size)
    buf = torch.empty(min(step, n), n + pad, dtype=x.dtype, device=x.device)
    for s in range(0, n, step):
        e = min(s + step, n)
        block = buf[: e - s]
        torch.addmm(sq_cols, x[s:e], x_cols.T, beta=1.0, alpha=-2.0, out=block)
        block.diagonal(offset=s).fill_(math.inf)
        vals[s:e], idx[s:e] = _smallest(block, n_top)
        if s == 0 and e < n:
            _, probe = _certify(x, sq, bound, vals[:e], idx[:e], k)
            if 2 * int(probe.sum()) > e:  # the matrix product cannot resolve these points
                return _exact_rows(x, torch.arange(n, device=x.device), k, 2.0, chunk_size)
    del buf, x_cols
    best, uncertified = _certify(x, sq, bound, vals, idx, k)
    if bool(uncertified.any()):
        rows = uncertified.nonzero().squeeze(1)
        best[rows] = _exact_rows(x, rows, k, 2.0, chunk_size)
    return best


def knn_indices(
    z: torch.Tensor, k: int = 1, norm: str = "l2", chunk_size: int | None = None
) -> torch.Tensor:
    """Index of the k-th nearest neighbour of each row of ``z`` (itself excluded), shape (N,).

    Exact (ties broken arbitrarily); no gradient. ``chunk_size`` rows of the N x N distance
    matrix are held at a time (default: as many as fit in 64 MiB).
    """
    _check_points(z)
    _check_norm(norm)
    _check_k(k, z.shape[0])
    _check_chunk_size(chunk_size)
    return _indices(z, k, norm, chunk_size)


def _indices(z: torch.Tensor, k: int, norm: str, chunk_size: int | None) -> torch.Tensor:
    with torch.no_grad():
        x = z.detach().to(_search_dtype(z.dtype))
        if norm == "l2":
            return _search_l2(x, k, chunk_size)
        rows = torch.arange(x.shape[0], device=x.device)
        return _exact_rows(x, rows, k, math.inf, chunk_size)


# --------------------------------------------------------------------------------------------
# Differentiable distances and the estimator
# --------------------------------------------------------------------------------------------


def _selected_distances(
    z: torch.Tensor, idx: torch.Tensor, norm: str, squared: bool
) -> torch.Tensor:
    """Differentiable distance ``z_i -> z_idx[i]`` recomputed from the difference vectors."""
    diff = z - z[idx]
    if norm == "l2":
        sq = (diff * diff).sum(dim=1)
        return sq if squared else sq.sqrt()
    dist = diff.abs().amax(dim=1)
    return dist * dist if squared else dist


def knn_distances(
    z: torch.Tensor,
    k: int = 1,
    norm: str = "l2",
    chunk_size: int | None = None,
    squared: bool = False,
) -> torch.Tensor:
    r"""Distance of each row of ``z`` (N, d) to its k-th nearest neighbour, itself excluded.

    Returns a tensor of shape (N,) (squared distances if ``squared``; for ``"max"`` that is the
    square of the max-norm distance). The neighbour search is exact and chunked (see
    :func:`knn_indices`); the returned distances are recomputed from :math:`z_i - z_{n_k(i)}`,
    so gradients reach both :math:`z_i` and its neighbour. Duplicate points give distance 0,
    where the gradient of the unsquared L2 distance is undefined (NaN).
    """
    idx = knn_indices(z, k, norm, chunk_size)
    return _selected_distances(z, idx, norm, bool(squared))


def _entropy_from_points(
    z: torch.Tensor, k: int, norm: str, chunk_size: int | None, squared: bool
) -> torch.Tensor:
    """Eq. 11 / eq. 13 on already validated points."""
    n, d = z.shape
    work = z if z.dtype in (torch.float32, torch.float64) else z.float()
    idx = _indices(work, k, norm, chunk_size)
    dist = _selected_distances(work, idx, norm, squared)
    n_zero = int((dist == 0).sum())
    if n_zero:
        raise NonFiniteError(
            f"{n_zero} point(s) have their k-th nearest neighbour at distance 0 (duplicate "
            "points), so log-distance is -inf; add noise (add_zero_entropy_noise) or remove "
            "duplicates, or use a larger k"
        )
    if not bool(torch.isfinite(dist).all()):
        raise NonFiniteError(
            "a nearest-neighbour distance overflowed to inf; rescale z or use float64"
        )
    # Sum in float64: in high d the constant and the log-distance term are large and of
    # opposite sign, so float32 rounding of either would show in the difference.
    log_dist = dist.to(torch.float64).log()
    scale = 0.5 * d if squared else float(d)
    const = _digamma_int(n) - _digamma_int(k) + log_unit_ball_volume(d, norm)
    return (const + scale * log_dist.mean()).to(z.dtype)


def knn_entropy(
    z: torch.Tensor,
    k: int = 1,
    norm: str = "l2",
    chunk_size: int | None = None,
    squared: bool = True,
) -> torch.Tensor:
    r"""Kozachenko–Leonenko estimate of the differential entropy :math:`H[Z]` in nats.

    .. math::

        \hat H[Z] = \psi(N) - \psi(k) + \log V_d + \frac{d}{2N}\sum_i \log r(i)^2

    (eq. 13 with ``squared=True``; eq. 11, :math:`\frac{d}{N}\sum_i \log r(i)`, otherwise — the
    same value; ``squared`` only changes the computational graph, eq. 14 vs eq. 12). ``z`` holds
    N samples of dimension d, ``r(i)`` is the ``norm`` distance to the k-th nearest neighbour
    and :math:`V_d` the radius-one ball volume (:func:`log_unit_ball_volume`). Differentiable
    with respect to ``z``; returns a 0-dim tensor of ``z``'s dtype (summed in float64).

    Raises :class:`NonFiniteError` if some point's k-th neighbour is at distance 0 (duplicate
    points would give :math:`-\infty`); add zero-entropy noise or use a larger k.
    """
    _check_points(z)
    _check_norm(norm)
    _check_k(k, z.shape[0])
    _check_chunk_size(chunk_size)
    return _entropy_from_points(z, k, norm, chunk_size, bool(squared))


def conditional_knn_entropy(
    z: torch.Tensor,
    y: torch.Tensor,
    k: int = 1,
    norm: str = "l2",
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Estimate :math:`H[Z \mid Y] = \sum_c p(c)\, \hat H[Z \mid Y = c]` for categorical labels.

    ``y`` (N,) holds integer labels; :math:`p(c) = N_c / N` is the empirical class frequency
    and :math:`\hat H[Z \mid Y = c]` is :func:`knn_entropy` on the :math:`N_c` rows of class c
    (with uniform classes this is the source's :math:`\frac1C \sum_y H[Z \mid y]`, §4).
    Every class present needs at least k + 1 samples. Differentiable with respect to ``z``.
    """
    _check_points(z)
    _check_norm(norm)
    _check_chunk_size(chunk_size)
    if not isinstance(y, torch.Tensor):
        raise ShapeError(f"y must be a torch.Tensor of shape (N,), got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != z.shape[0]:
        raise ShapeError(
            f"y must have shape (N,) = ({z.shape[0]},) to match z, got {tuple(y.shape)}"
        )
    if y.is_floating_point() or y.is_complex():
        raise InvalidParameterError(
            f"y must hold integer class labels, got dtype {y.dtype}; convert it with y.long()"
        )
    n = z.shape[0]
    _check_k(k, n)
    classes, counts = torch.unique(y, return_counts=True)
    for c, n_c in zip(classes.tolist(), counts.tolist(), strict=True):
        if n_c <= k:
            raise InvalidParameterError(
                f"class {c} has {n_c} sample(s), but the k-NN estimate with k = {k} needs at "
                f"least k + 1 = {k + 1} points per class; use a larger batch, a smaller k, or "
                "drop that class"
            )
    labels = y.to(z.device)
    total = z.new_zeros(())
    for c, n_c in zip(classes.tolist(), counts.tolist(), strict=True):
        h_c = _entropy_from_points(z[labels == c], k, norm, chunk_size, True)
        total = total + (n_c / n) * h_c
    return total

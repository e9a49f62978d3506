"""Deep InfoMax chapter: objectives, critics, probes, MINE, data and the runner."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_infrastructure import write_cifar10_standin

from ibcore import training
from ibcore.errors import (
    InvalidParameterError,
    NonFiniteError,
    ResultFileError,
    ShapeError,
    UnknownNameError,
)
from ibcore.estimators.mi_bounds import dv_bound, infonce_bound, jsd_bound
from ibcore.models.dcgan import (
    Classifier,
    ConvDecoder,
    DCGANEncoder,
    GlobalCritic,
    LocalCritic,
    PriorDiscriminator,
)
from ibcore.objectives.infomax import (
    dim_mi_terms,
    global_mi,
    local_mi,
    local_negatives_per_positive,
    occlude_squares,
    prior_discriminator_loss,
    prior_generator_loss,
    sample_uniform_prior,
    scale_gradient,
)
from ibcore.probes import (
    MineConfig,
    ProbeConfig,
    accuracy,
    balanced_draw,
    extract_features,
    few_label_probe,
    mine_estimate,
    standardize,
    train_probe,
)
from ibcore.projection import pca_2d
from ibcore.runners import infomax as runner

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]

# an asymmetric 3×3 score matrix S[i, j] = T(C(x_i), E(x_j)) and its hand-computed bounds
S = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [1.5, -0.5, 3.0]]


def _hand_bounds(s: list[list[float]]) -> dict[str, float]:
    n = len(s)
    diag = [s[i][i] for i in range(n)]
    off = [s[i][j] for i in range(n) for j in range(n) if i != j]
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    dv = sum(diag) / n - math.log(sum(math.exp(v) for v in off) / len(off))
    jsd = -sum(sp(-v) for v in diag) / n - sum(sp(v) for v in off) / len(off)
    # InfoNCE with the softmax over the inputs i for a fixed code j (columns)
    nce = math.log(n) + sum(
        s[j][j] - math.log(sum(math.exp(s[i][j]) for i in range(n))) for j in range(n)
    ) / n
    return {"dv": dv, "jsd": jsd, "infonce": nce}


# --------------------------------------------------------------------------- objectives


@pytest.mark.parametrize("estimator", ["dv", "jsd", "infonce"])
def test_global_mi_matches_hand_computation(estimator: str) -> None:
    got = float(global_mi(torch.tensor(S, dtype=torch.float64), estimator))
    assert got == pytest.approx(_hand_bounds(S)[estimator], abs=1e-12)


def test_infonce_direction_is_over_inputs() -> None:
    # the row-wise (codes-over-an-input) InfoNCE differs on this asymmetric matrix
    s = torch.tensor(S, dtype=torch.float64)
    rowwise = math.log(3) - float(F.cross_entropy(s, torch.arange(3)))
    assert float(global_mi(s, "infonce")) != pytest.approx(rowwise, abs=1e-6)


@pytest.mark.parametrize("estimator", ["dv", "jsd", "infonce"])
def test_local_mi_is_average_of_per_location_bounds(estimator: str) -> None:
    slices = [S, [[0.1, 0.2, 0.3], [0.0, -1.0, 0.4], [2.0, 1.0, 0.5]]]
    scores = torch.tensor(slices, dtype=torch.float64).permute(1, 2, 0)  # [B, B, M²]
    want = sum(_hand_bounds(sl)[estimator] for sl in slices) / 2
    assert float(local_mi(scores, estimator, "same_location")) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("estimator", ["dv", "jsd", "infonce"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_local_mi_matches_the_loop_over_locations(estimator: str, dtype: torch.dtype) -> None:
    """The batched local term equals the per-location loop of the global bounds (value and
    gradient, up to the order of floating-point sums), including non-finite scores raising."""
    bound = {"dv": dv_bound, "jsd": jsd_bound, "infonce": lambda m: infonce_bound(m.T)}[estimator]
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    gen = torch.Generator().manual_seed(3)
    for b, m2 in [(2, 1), (7, 9), (64, 36)]:
        raw = 3.0 * torch.randn(b, b, m2, generator=gen, dtype=dtype)
        s_loop, s_vec = raw.clone().requires_grad_(True), raw.clone().requires_grad_(True)
        loop = torch.stack([bound(s_loop[:, :, l]) for l in range(m2)]).mean()
        vec = local_mi(s_vec, estimator, "same_location")
        loop.backward()
        vec.backward()
        torch.testing.assert_close(vec, loop, **tol)
        torch.testing.assert_close(s_vec.grad, s_loop.grad, **tol)
    bad = torch.zeros(3, 3, 2, dtype=dtype)
    bad[0, 1, 1] = math.nan
    for negatives in ("same_location", "all_locations"):
        with pytest.raises(NonFiniteError):
            local_mi(bad, estimator, negatives)


def _hand_local_all_locations(s: torch.Tensor, estimator: str) -> float:
    """The source's local bound by explicit loops: positive (j, l) against S[k, j, l'], k ≠ j."""
    b, _, m2 = s.shape
    v = s.tolist()
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    pos = [v[j][j][l] for j in range(b) for l in range(m2)]
    neg = [v[k][j][l] for j in range(b) for k in range(b) if k != j for l in range(m2)]
    if estimator == "jsd":
        return -sum(sp(-x) for x in pos) / len(pos) - sum(sp(x) for x in neg) / len(neg)
    if estimator == "dv":
        return sum(pos) / len(pos) - math.log(sum(math.exp(x) for x in neg) / len(neg))
    total = 0.0
    for j in range(b):
        negs = [v[k][j][l] for k in range(b) if k != j for l in range(m2)]
        for l in range(m2):
            p = v[j][j][l]
            total += p - math.log(math.exp(p) + sum(math.exp(x) for x in negs))
    return math.log(1 + (b - 1) * m2) + total / (b * m2)


@pytest.mark.parametrize("estimator", ["dv", "jsd", "infonce"])
def test_local_mi_with_the_sources_negatives_matches_loops(estimator: str) -> None:
    gen = torch.Generator().manual_seed(5)
    for b, m2 in [(2, 1), (3, 4), (5, 9)]:
        s = 2.0 * torch.randn(b, b, m2, generator=gen, dtype=torch.float64)
        got = float(local_mi(s, estimator))  # the default is the source's negatives
        assert got == pytest.approx(_hand_local_all_locations(s, estimator), abs=1e-10)


def test_local_negatives_differ_where_they_should() -> None:
    gen = torch.Generator().manual_seed(6)
    s = 2.0 * torch.randn(4, 4, 9, generator=gen, dtype=torch.float64)
    # JSD averages positives and negatives separately over the same pairs: the same number
    assert float(local_mi(s, "jsd", "all_locations")) == pytest.approx(
        float(local_mi(s, "jsd", "same_location")), abs=1e-12)
    for est in ("dv", "infonce"):
        assert float(local_mi(s, est, "all_locations")) != pytest.approx(
            float(local_mi(s, est, "same_location")), abs=1e-6)
    # InfoNCE's ceiling: log(1 + (B − 1) M²) with all locations, log B with the same location
    sep = torch.full((4, 4, 9), -50.0, dtype=torch.float64)
    for j in range(4):
        sep[j, j, :] = 50.0
    assert float(local_mi(sep, "infonce")) == pytest.approx(math.log(1 + 3 * 9), abs=1e-9)
    assert float(local_mi(sep, "infonce", "same_location")) == pytest.approx(math.log(4),
                                                                             abs=1e-9)
    assert local_negatives_per_positive(64, 64, "all_locations") == 63 * 64
    assert local_negatives_per_positive(64, 64, "same_location") == 63
    with pytest.raises(UnknownNameError):
        local_mi(s, "jsd", "everywhere")


def test_occlude_squares_blanks_one_square_per_image() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.ones(50, 2, 8, 8)
    out = occlude_squares(x, 3, generator=gen)
    assert torch.equal(x, torch.ones(50, 2, 8, 8))  # a copy
    blank = out == 0
    assert (blank.sum(dim=(1, 2, 3)) == 2 * 9).all()  # one 3×3 square in every channel
    assert torch.equal(blank[:, 0], blank[:, 1])
    for i in range(50):  # a square: its rows and columns span 3 each
        r, c = torch.nonzero(blank[i, 0], as_tuple=True)
        assert int(r.max() - r.min()) == 2 and int(c.max() - c.min()) == 2
    corners = {(int(torch.nonzero(blank[i, 0])[0, 0]), int(torch.nonzero(blank[i, 0])[0, 1]))
               for i in range(50)}
    assert len(corners) > 10  # positions vary
    with pytest.raises(InvalidParameterError):
        occlude_squares(x, 9)
    with pytest.raises(ShapeError):
        occlude_squares(x[0], 3)


def test_prior_losses_closed_form() -> None:
    zero = torch.zeros(4)
    assert float(prior_discriminator_loss(zero, zero)) == pytest.approx(math.log(4.0))
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5])
    want = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2 + math.log1p(
        math.exp(0.5))
    assert float(prior_discriminator_loss(real, fake)) == pytest.approx(want)
    # non-saturating generator loss −log σ(s)
    assert float(prior_generator_loss(torch.tensor([0.5, -2.0]))) == pytest.approx(
        -(math.log(1 / (1 + math.exp(-0.5))) + math.log(1 / (1 + math.exp(2.0)))) / 2)
    v = sample_uniform_prior(1000, 64, generator=torch.Generator().manual_seed(0))
    assert v.shape == (1000, 64) and float(v.min()) >= 0.0 and float(v.max()) < 1.0
    assert float(v.mean()) == pytest.approx(0.5, abs=0.01)


def test_scale_gradient() -> None:
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([3.0, 5.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.75, 1.25]))
    with pytest.raises(InvalidParameterError):
        scale_gradient(x, -1.0)


def test_dim_terms_route_weighted_gradients() -> None:
    """Encoder features get −∇(αÎ_G + βÎ_L); critics get −∇(Î_G + Î_L)."""
    g = torch.Generator().manual_seed(3)
    local = torch.randn(5, 6, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randn(5, 4, generator=g, dtype=torch.float64)
    gc = GlobalCritic(6, 4, hidden=7, embed=3, generator=g).double()
    lc = LocalCritic(6, 4, hidden=7, embed=3, generator=g).double()
    alpha, beta = 0.3, 0.8
    for est in ("dv", "jsd", "infonce"):
        lo, yy = local.clone().requires_grad_(), y.clone().requires_grad_()
        terms = dim_mi_terms(lo, yy, gc, lc, est, alpha=alpha, beta=beta)
        gc.zero_grad()
        lc.zero_grad()
        terms["loss"].backward()
        crit_grad = [p.grad.clone() for p in (*gc.parameters(), *lc.parameters())]
        # independent reference: the two bounds computed separately
        lo2, y2 = local.clone().requires_grad_(), y.clone().requires_grad_()
        ig = global_mi(gc(lo2, y2), est)
        il = local_mi(lc(lo2, y2), est)
        gl, gy = torch.autograd.grad(-(alpha * ig + beta * il), (lo2, y2), retain_graph=True)
        assert torch.allclose(lo.grad, gl, atol=1e-10)
        assert torch.allclose(yy.grad, gy, atol=1e-10)
        ref = torch.autograd.grad(-(ig + il), [*gc.parameters(), *lc.parameters()])
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(crit_grad, ref, strict=True))
        want = float((alpha * ig + beta * il).detach())
        assert float(terms["objective"]) == pytest.approx(want)
        assert float(terms["loss"].detach()) == pytest.approx(float(-(ig + il).detach()))


def test_objective_bad_inputs() -> None:
    s = torch.tensor(S)
    with pytest.raises(UnknownNameError, match="estimator"):
        global_mi(s, "nwj2")
    with pytest.raises(ShapeError):
        global_mi(torch.zeros(3), "dv")
    with pytest.raises(ShapeError):
        local_mi(torch.zeros(3, 2, 4), "jsd")
    lc, gc = LocalCritic(2, 3, hidden=4, embed=2), GlobalCritic(2, 3, hidden=4, embed=2)
    with pytest.raises(InvalidParameterError, match="alpha"):
        dim_mi_terms(torch.zeros(4, 2, 8, 8), torch.zeros(4, 3), gc, lc, "dv", alpha=-1, beta=1)
    with pytest.raises(ShapeError, match="at least 2"):
        dim_mi_terms(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3), gc, lc, "dv", alpha=1, beta=1)
    with pytest.raises(ShapeError):
        prior_generator_loss(torch.zeros(2, 2))
    with pytest.raises(ShapeError):
        lc(torch.zeros(4, 3, 8, 8), torch.zeros(4, 3))


# --------------------------------------------------------------------------- models


def test_encoder_shapes_and_bad_images() -> None:
    g = torch.Generator().manual_seed(0)
    enc = DCGANEncoder(1, width=4, fc_dim=32, y_dim=64, generator=g)
    out = enc(torch.zeros(2, 1, 32, 32))
    assert out.local.shape == (2, 8, 8, 8) and out.conv.shape == (2, 16, 4, 4)
    assert out.fc.shape == (2, 32) and out.y.shape == (2, 64)
    with pytest.raises(ShapeError, match="32"):
        enc(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ShapeError):
        enc(torch.zeros(2, 3, 32, 32))
    with pytest.raises(InvalidParameterError):
        DCGANEncoder(1, width=0)
    dec = ConvDecoder(1, width=4, fc_dim=32, y_dim=64, generator=g)
    assert dec(out.y).shape == (2, 1, 32, 32)
    assert Classifier(enc, 10, generator=g)(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    # initialisation is a pure function of the generator
    a = DCGANEncoder(1, width=4, fc_dim=32, generator=torch.Generator().manual_seed(5))
    b = DCGANEncoder(1, width=4, fc_dim=32, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_critic_scores_pair_the_right_features() -> None:
    g = torch.Generator().manual_seed(1)
    local = torch.randn(3, 5, 8, 8, generator=g)
    y = torch.randn(3, 6, generator=g)
    lc = LocalCritic(5, 6, hidden=8, embed=4, generator=g).requires_grad_(False)
    s = lc(local, y)
    assert s.shape == (3, 3, 64)
    for i, j, l in [(0, 0, 0), (1, 2, 17), (2, 0, 63)]:
        c = local[i, :, l // 8, l % 8]
        want = lc.phi(c[None])[0] @ lc.chi(y[j : j + 1])[0]
        assert float(s[i, j, l]) == pytest.approx(float(want), abs=1e-5)
    gc = GlobalCritic(5, 6, hidden=8, embed=4, generator=g).requires_grad_(False)
    sg = gc(local, y)
    want = gc.phi(local[2].reshape(1, -1))[0] @ gc.chi(y[1:2])[0]
    assert float(sg[2, 1]) == pytest.approx(float(want), abs=1e-5)
    assert PriorDiscriminator(6, hidden=(4,), generator=g)(y).shape == (3,)


def test_shuffled_batch_gives_chance_level_local_scores() -> None:
    """A local critic trained on aligned pairs identifies the partner; shuffled pairs: chance."""
    g = torch.Generator().manual_seed(0)
    d, b = 4, 16

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.randn(b, d, generator=g)
        local = u[:, :, None, None] + 0.3 * torch.randn(b, d, 8, 8, generator=g)
        return local, u

    lc = LocalCritic(d, d, hidden=16, embed=8, generator=g)
    opt = torch.optim.Adam(lc.parameters(), lr=1e-2)
    for _ in range(60):
        local, u = batch()
        loss = -local_mi(lc(local, u), "infonce")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        local, u = batch()
        aligned = lc(local, u)
        shuffled = lc(local, u[torch.randperm(b, generator=g)])
        hits = (aligned.argmax(0) == torch.arange(b)[:, None]).float().mean()
        assert float(local_mi(aligned, "infonce")) > 1.0 and float(hits) > 0.5
        # shuffled: the diagonal is exchangeable with the negatives, E[InfoNCE] ≤ 0
        independent = [float(local_mi(lc(batch()[0], batch()[1]), "infonce")) for _ in range(5)]
        assert float(local_mi(shuffled, "infonce")) < 0.5
        assert np.mean(independent) < 0.1
        jsd = float(local_mi(lc(batch()[0], batch()[1]), "jsd"))
        assert jsd < float(local_mi(aligned, "jsd"))


# --------------------------------------------------------------------------- probes and MINE


def test_probes_reach_100_percent_on_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]])

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 3, (n,), generator=g)
        return centers[y] + 0.5 * torch.randn(n, 3, generator=g), y

    (tx, ty), (vx, vy) = sample(300), sample(200)
    tx, vx = standardize(tx, vx)
    cfg = ProbeConfig(epochs=20, mlp_epochs=20, batch_size=32, lr=1e-2, mlp_lr=1e-2)
    for kind in ("linear", "mlp"):
        res = train_probe(kind, tx, ty, vx, vy, classes=3, config=cfg,
                          generator=torch.Generator().manual_seed(1))
        assert res.test_accuracy == 1.0 and res.train_accuracy == 1.0
        assert res.train_loss[-1] < res.train_loss[0]
    # deterministic given the generator
    r1 = train_probe("mlp", tx, ty, vx, vy, classes=3, config=cfg,
                     generator=torch.Generator().manual_seed(7))
    r2 = train_probe("mlp", tx, ty, vx, vy, classes=3, config=cfg,
                     generator=torch.Generator().manual_seed(7))
    assert r1 == r2
    with pytest.raises(UnknownNameError):
        train_probe("svm", tx, ty, vx, vy, classes=3, config=cfg, generator=g)
    with pytest.raises(InvalidParameterError, match="classes"):
        train_probe("linear", tx, ty + 5, vx, vy, classes=3, config=cfg, generator=g)
    with pytest.raises(ShapeError):
        train_probe("linear", tx, ty, vx[:, :2], vy, classes=3, config=cfg, generator=g)
    with pytest.raises(InvalidParameterError, match="dropout"):
        ProbeConfig(dropout=1.0)


def test_standardize_and_accuracy_against_sklearn() -> None:
    from sklearn.metrics import accuracy_score
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 4, generator=g) * 3 + 1, torch.randn(20, 4, generator=g)
    za, zb = standardize(a.double(), b.double(), eps=0.0)
    sc = StandardScaler().fit(a.double().numpy())
    assert np.allclose(za.numpy(), sc.transform(a.double().numpy()))
    assert np.allclose(zb.numpy(), sc.transform(b.double().numpy()))
    w = torch.randn(4, 3, generator=g)
    labels = torch.randint(0, 3, (20,), generator=g)
    pred = (b @ w).argmax(1)
    assert accuracy(lambda x: x @ w, b, labels, batch_size=7) == pytest.approx(
        accuracy_score(labels.numpy(), pred.numpy()))


def test_few_label_probe_draws_balanced_labels_and_learns() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(600) % 3
    idx = balanced_draw(y, 30, 3, gen)
    assert idx.unique().numel() == 30 and torch.bincount(y[idx]).tolist() == [10, 10, 10]
    with pytest.raises(InvalidParameterError, match="evenly"):
        balanced_draw(y, 31, 3, gen)
    with pytest.raises(InvalidParameterError, match="fewer"):
        balanced_draw(y[:30], 60, 3, gen)
    # separable features: the few-label probe is near perfect; noise features: near chance
    centers = 4.0 * torch.eye(3, 5)
    x = centers[y] + 0.3 * torch.randn(600, 5, generator=gen)
    xt, yt = x[:300], y[:300]
    res = few_label_probe(x, y, xt, yt, labels=30, classes=3, draws=3, generator=gen,
                          val=(x[300:], y[300:]))
    assert res.test_accuracy > 0.97 and len(res.test_accuracies) == 3
    assert res.val_accuracy is not None and res.val_accuracy > 0.97
    assert all(c in (0.001, 0.01, 0.1, 1.0) for c in res.chosen_c)
    noise = torch.randn(600, 5, generator=gen)
    chance = few_label_probe(noise, y, noise[:300], yt, labels=30, classes=3, draws=2,
                             generator=gen)
    assert chance.test_accuracy < 0.5
    with pytest.raises(InvalidParameterError, match="folds"):
        few_label_probe(x, y, xt, yt, labels=6, classes=3, draws=1, generator=gen)


def test_paired_difference_interval_and_verdicts() -> None:
    from scipy import stats

    a, b = [80.0, 82.0, 81.0], [78.0, 79.5, 79.0]
    res = runner.paired_difference(a, b)
    d = np.array(a) - np.array(b)
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert res["mean"] == pytest.approx(d.mean()) and res["interval_95"] == pytest.approx([lo, hi])
    assert res["verdict"] == "supported"
    assert runner.paired_difference(b, a)["verdict"] == "contradicted"
    assert runner.paired_difference([1.0, 2.0], [2.0, 0.5])["verdict"] == "undecided"
    assert runner.paired_difference([1.0], [0.0])["interval_95"] is None
    with pytest.raises(InvalidParameterError):
        runner.paired_difference([1.0], [1.0, 2.0])
    assert runner.row_name("dim_l_jsd_r1") == "dim_l_jsd" and runner.row_name("random") == "random"
    rows = {"ae": {"row": "autoencoder", "replicate": 0, "label": "AE", "test_x": 0.5},
            "ae_r1": {"row": "autoencoder", "replicate": 1, "label": "AE", "test_x": 0.7}}
    table = runner.aggregate_rows(rows)["autoencoder"]
    assert table["seeds"] == [0, 1] and table["metrics"]["test_x"]["mean"] == pytest.approx(0.6)
    assert table["metrics"]["test_x"]["std"] == pytest.approx(math.sqrt(0.02))


def test_extract_features_flattens_levels() -> None:
    enc = DCGANEncoder(1, width=2, fc_dim=8, y_dim=3, generator=torch.Generator().manual_seed(0))
    enc.eval()
    imgs = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    feats = extract_features(enc, imgs, batch_size=2, transform=runner.image_transform)
    assert feats["conv"].shape == (5, 4 * 2 * 16) and feats["fc"].shape == (5, 8)
    assert torch.allclose(feats["y"], enc(runner.image_transform(imgs)).y.detach(), atol=1e-6)
    with pytest.raises(UnknownNameError):
        extract_features(enc, imgs, levels=("pixels",), transform=runner.image_transform)


def test_mine_estimate_on_gaussians_with_known_mi() -> None:
    """Correlated Gaussians, I = −(d/2) log(1 − ρ²): MINE is positive and below the truth."""
    g = torch.Generator().manual_seed(0)
    d, rho = 2, 0.9
    truth = -d / 2 * math.log(1 - rho**2)

    def pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, d, generator=g)
        return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)

    (tx, ty), (vx, vy) = pairs(4000), pairs(2000)
    cfg = MineConfig(hidden=64, embed=16, steps=400, batch_size=128, lr=3e-3, eval_batches=8)
    res = mine_estimate(tx, ty, vx, vy, config=cfg, generator=torch.Generator().manual_seed(1))
    assert 0.5 * truth < res.estimate < truth + 0.25
    ind = mine_estimate(tx, ty[torch.randperm(4000, generator=g)], vx, vy[torch.randperm(2000)],
                        config=cfg, generator=torch.Generator().manual_seed(1))
    assert abs(ind.estimate) < 0.15
    with pytest.raises(ShapeError, match="batch_size"):
        mine_estimate(tx[:10], ty[:10], vx, vy, config=cfg, generator=g)


# --------------------------------------------------------------------------- runner


def test_configs_and_specs() -> None:
    assert set(runner.PROFILES) == {"smoke", "cpu", "paper"}
    assert runner.PROFILES["paper"].dataset == "cifar10"
    assert runner.PROFILES["paper"].width == 64 and runner.PROFILES["paper"].fc_dim == 1024
    cpu = runner.PROFILES["cpu"]
    main = runner.experiment_specs(cpu, "probes")
    assert {s.label for s in main.values()} >= {"DIM(G) (JSD)", "DIM(L) (infoNCE)", "AE",
                                                "Random init", "Fully supervised"}
    trade = runner.experiment_specs(cpu, "tradeoff")
    # λ = 0 is DIM(L) and λ = 1 is DIM(G): the same trained models as in the main table
    assert trade["lambda_0"] == main[f"dim_l_{cpu.tradeoff_estimator}"]
    assert trade["lambda_1"] == main[f"dim_g_{cpu.tradeoff_estimator}"]
    with pytest.raises(UnknownNameError):
        runner.ModelSpec("dim", "kl")
    with pytest.raises(InvalidParameterError):
        runner.ModelSpec("dim", "dv", alpha=-0.5)
    with pytest.raises(InvalidParameterError):
        runner.InfomaxConfig(prior_gamma=-1.0)
    with pytest.raises(UnknownNameError):
        runner.InfomaxConfig(dataset="imagenet")
    with pytest.raises(UnknownNameError):
        runner.run("huge")
    with pytest.raises(InvalidParameterError, match="whole number"):
        runner.InfomaxConfig(epochs=3, negatives_batch_sizes=(16, 64))
    with pytest.raises(UnknownNameError):
        runner.InfomaxConfig(schedule_kind="sawtooth")
    # every DIM model uses the source's negatives but the named ablation
    assert all(s.local_negatives == "all_locations" for s in main.values())
    neg = runner.experiment_specs(cpu, "negatives")
    assert {s.local_negatives for s in neg.values()} == {"all_locations", "same_location"}
    steps = {s.epochs * (cpu.train_subset // s.batch_size) for s in neg.values()}
    assert len(steps) == 1
    assert {runner.row_name(n) for n in main} == {n for n in main if not n[-1].isdigit()}
    occ = runner.experiment_specs(cpu, "occlusion")
    assert [s.replicate for s in occ.values()] == list(range(cpu.replicates))
    assert all(s.occlude == cpu.occlusion_fraction and s.beta == 1.0 for s in occ.values())
    with pytest.raises(InvalidParameterError, match="occlusion"):
        runner.ModelSpec("autoencoder", occlude=0.5)
    # a model without occlusion keeps the fingerprint it had before the field existed
    ctx = runner._Context("cpu", cpu, torch.device("cpu"), 0, False, Path("unused"), False)
    spec = main["dim_l_infonce"]
    legacy = {k: v for k, v in runner.as_dict(spec).items() if k != "occlude"}
    assert ctx.train_fingerprint(spec) == runner.fingerprint_of(
        {"chapter": runner.CHAPTER, "seed": 0, "spec": legacy,
         "train": cpu.training_view()})


def test_pca_matches_sklearn_up_to_sign() -> None:
    from sklearn.decomposition import PCA

    y = torch.randn(200, 6, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 7)
    ours = pca_2d(y)
    ref = PCA(n_components=2).fit_transform(y.double().numpy())
    for k in range(2):
        assert np.allclose(np.abs(ours[:, k]), np.abs(ref[:, k]), atol=1e-4)


def test_paper_profile_on_cifar10_standin(tmp_path: Path) -> None:
    """The paper configuration's models take one DIM step on stand-in CIFAR-10 images."""
    write_cifar10_standin(tmp_path, n_per_batch=8)
    cfg = runner.PROFILES["paper"]
    import dataclasses

    small = dataclasses.replace(cfg, train_subset=12, val_subset=8, test_subset=6)
    data = runner.load_data(small, seed=0, root=tmp_path, verify_checksums=False)
    assert data.train_x.shape == (12, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.val_x.shape == (8, 3, 32, 32)
    with pytest.raises(InvalidParameterError, match="leaves no training images"):
        runner.load_data(dataclasses.replace(small, val_subset=40), seed=0, root=tmp_path,
                         verify_checksums=False)
    assert data.test_x.shape == (6, 3, 32, 32) and data.channels == 3
    x = runner.image_transform(data.train_x[:4])
    for est, gamma, occ in (("dv", 0.0, 0.0), ("jsd", 0.0, 0.5), ("infonce", cfg.prior_gamma, 0.0)):
        spec = runner.ModelSpec("dim", est, alpha=0.5, beta=1.0, gamma=gamma, batch_size=4,
                                occlude=occ)
        mods = runner.build_dim_modules(cfg, 3, spec, torch.Generator().manual_seed(0))
        assert mods["encoder"].local_channels == 128 and mods["encoder"].conv_dim == 4096
        before = mods["encoder"].head.weight.detach().clone()
        opts = {"main": torch.optim.Adam([p for k, m in mods.items() if k != "prior"
                                          for p in m.parameters()], lr=cfg.lr)}
        if gamma > 0:
            opts["prior"] = torch.optim.Adam(mods["prior"].parameters(), lr=cfg.lr)
        terms = runner.dim_step(mods, opts, x, spec)
        assert all(math.isfinite(float(v)) for v in terms.values())
        assert ("prior_disc_loss" in terms) == (gamma > 0)
        assert not torch.equal(before, mods["encoder"].head.weight)


@pytest.fixture
def fashion_data(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (SHARED_DATA / "FashionMNIST").is_dir() and "IBCORE_DATA" not in os.environ:
        pytest.skip("Fashion-MNIST is not available offline here")
    if "IBCORE_DATA" not in os.environ:
        monkeypatch.setenv("IBCORE_DATA", str(SHARED_DATA))


def test_smoke_run_writes_results_and_resumes(tmp_path: Path, fashion_data: None) -> None:
    root = tmp_path / "results"
    out = runner.run("smoke", device="cpu", results_root=root, progress=False)
    assert set(out) == set(runner.EXPERIMENTS)
    probes = json.loads(out["probes"].read_text())
    rows = probes["metrics"]["models"]
    assert set(rows) == set(runner.experiment_specs(runner.PROFILES["smoke"], "probes"))
    for name in ("dim_l_infonce", "random", "supervised", "autoencoder"):
        for level in runner.LEVELS:
            for kind in ("linear", "mlp"):
                assert 0.0 <= rows[name][f"test_accuracy_{kind}_{level}"] <= 1.0
        assert math.isfinite(rows[name]["test_mine_I_xy_nats"])
    assert "test_accuracy_supervised" in rows["supervised"]
    assert "test_reconstruction_mse" in rows["autoencoder"]
    cfg = runner.PROFILES["smoke"]
    bars = probes["metrics"]["bars"]
    for setting in ("full_label", *(f"few_label_{n}" for n in cfg.few_label_counts)):
        assert {"best_dim_l_estimator", "margin_over_autoencoder_points", "bars_met",
                "paired_dim_l_minus_autoencoder_points"} <= set(bars[setting])
        assert bars[setting]["paired_dim_l_minus_autoencoder_points"]["n"] == cfg.replicates
    for n in cfg.few_label_counts:
        assert 0.0 <= rows["dim_l_jsd"][f"test_accuracy_few_label_{n}_linear_y"] <= 1.0
        assert 0.0 <= rows["dim_l_jsd"][f"val_accuracy_few_label_{n}_linear_y"] <= 1.0
    assert rows["dim_l_jsd_r1"]["replicate"] == 1 and "supervised_r1" not in rows
    assert probes["metrics"]["seeds"] == list(range(cfg.replicates))
    table = probes["metrics"]["table"]["dim_l_jsd"]["metrics"]["test_accuracy_linear_y"]
    assert table["n"] == cfg.replicates
    assert probes["metrics"]["min_local_negatives_per_positive"] == (cfg.batch_size - 1) * 64
    hist = [h for h in probes["history"] if h["model"] == "dim_l_jsd"]
    assert [h["epoch"] for h in hist] == [0, 1, 2] and "test_local_infonce" in hist[-1]
    assert hist[-1]["lr_end"] < 0.01 * hist[1]["lr_end"]  # the schedule decayed
    trace = probes["metrics"]["traces"]["dim_l_jsd"]  # held-out estimates every few steps
    steps = cfg.epochs * (cfg.train_subset // cfg.batch_size)
    assert [t["step"] for t in trace] == list(range(0, steps + 1, cfg.trace_every_steps))
    assert trace[-1]["test_local_infonce"] == pytest.approx(hist[-1]["test_local_infonce"])
    occ = json.loads(out["occlusion"].read_text())["metrics"]["runs"]
    assert [r["replicate"] for r in occ] == list(range(cfg.replicates))
    assert all("occlude" in r["label"] and 0 <= r["test_accuracy_mlp_y"] <= 1 for r in occ)
    neg = json.loads(out["negatives"].read_text())["metrics"]["runs"]
    assert {r["batch_size"] for r in neg} == set(runner.PROFILES["smoke"].negatives_batch_sizes)
    assert len({r["steps"] for r in neg}) == 1  # every batch size: the same number of steps
    ablation = [r for r in neg if r["local_negatives"] == "same_location"]
    assert [r["estimator"] for r in ablation] == ["infonce"]
    assert ablation[0]["local_negatives_per_positive"] == cfg.batch_size - 1
    trade = json.loads(out["tradeoff"].read_text())
    coords, labels = runner.load_pca_artifact(out["tradeoff"], trade["artifacts"]["pca_lambda_0"])
    assert coords.shape == (runner.PROFILES["smoke"].pca_points, 2) and labels.shape[0] == 100
    total = sum(p.stat().st_size for p in out["tradeoff"].parent.glob("*.npz"))
    assert total < 200_000
    # --resume skips every finished model and reproduces the metrics exactly
    again = runner.run("smoke", device="cpu", results_root=root, progress=False, resume=True)
    assert json.loads(again["probes"].read_text())["metrics"] == probes["metrics"]
    # a tampered artefact is refused
    art = trade["artifacts"]["pca_lambda_0"]
    (out["tradeoff"].parent / art["file"]).write_bytes(b"not the recorded file")
    with pytest.raises(ResultFileError, match="checksum"):
        runner.load_pca_artifact(out["tradeoff"], art)


def test_interrupted_dim_training_resumes_exactly(
    tmp_path: Path, fashion_data: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DIM model (prior matching, step trace) killed mid-epoch resumes bit for bit."""
    import dataclasses

    monkeypatch.setattr(training, "DEFAULT_CHECKPOINT_MIN_SECONDS", 0.0)  # save mid-epoch
    cfg = dataclasses.replace(runner.PROFILES["smoke"], checkpoint_every_steps=2,
                              train_subset=128, trace_every_steps=2)
    spec = runner.experiment_specs(cfg, "probes")["dim_l_prior"]
    assert spec.gamma > 0

    def model(root: Path, resume: bool):  # noqa: ANN202
        ctx = runner._Context("smoke", cfg, torch.device("cpu"), 0, resume, root, False)
        return ctx.model(spec)

    ref = model(tmp_path / "a" / "results", False)
    ref.ensure_trained()
    real, calls = runner.dim_step, {"n": 0}

    def crash_at_step_4(*args, **kwargs):  # noqa: ANN202
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "dim_step", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated"):
        model(tmp_path / "b" / "results", False).ensure_trained()
    monkeypatch.setattr(runner, "dim_step", real)
    resumed = model(tmp_path / "b" / "results", True)
    resumed.ensure_trained()
    for key in ("encoder", "local_critic", "prior"):
        a, b = ref.modules[key].state_dict(), resumed.modules[key].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), key
    assert resumed.evals["trace"] == ref.evals["trace"]
    assert [h["epoch"] for h in resumed.evals["history"]] == [0, 1, 2]


def test_source_numbers_file() -> None:
    src = json.loads((ROOT / "book" / "infomax.source.json").read_text())
    rows = {r["model"]: r for r in src["tables"]["table1"]["rows"]}
    assert {"DIM(G)", "DIM(L) (DV)", "DIM(L) (JSD)", "DIM(L) (infoNCE)", "AE"} <= set(rows)
    for r in rows.values():
        for ds in ("cifar10", "cifar100"):
            assert all(0 < v < 100 for v in r[ds].values())
    assert {r["model"] for r in src["tables"]["table4"]["rows"]} >= {"DIM(G)", "DIM(L)"}

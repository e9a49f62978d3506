"""Entropy-estimator IB chapter: objective, models, GMM decoder, attacks, augmentation, data and
the runner."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_infrastructure import write_cifar10_standin

from ibcore import training
from ibcore.adversarial import fgsm, fgsm_accuracy, pgd, pgd_accuracy
from ibcore.data import random_shift_flip
from ibcore.decoders import fit_gaussian_mixture
from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.estimators.knn_entropy import (
    conditional_knn_entropy,
    knn_entropy,
    zero_entropy_noise_std,
)
from ibcore.models.resnet import ResFC, ResNetEncoder, resnet18_encoder
from ibcore.objectives.entropy_ib import check_beta2, entropy_ib_loss
from ibcore.runners import entropy_ib as runner
from ibcore.tasks import TaskFailedError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


def _points(n: int = 40, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % 4
    return z, y


# --------------------------------------------------------------------------- objective


def _kl_entropy_by_hand(z: torch.Tensor) -> float:
    """Kozachenko–Leonenko (k = 1, L2) from scratch: ψ(N) − ψ(1) + log V_d + d·mean log r."""
    n, d = z.shape
    dist = torch.cdist(z, z) + torch.diag(torch.full((n,), math.inf, dtype=z.dtype))
    r = dist.min(dim=1).values
    psi = lambda v: float(torch.special.digamma(torch.tensor(float(v), dtype=torch.float64)))  # noqa: E731
    log_vd = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
    return psi(n) - psi(1) + log_vd + d * float(r.log().mean())


def test_loss_assembles_eq10_with_the_right_signs() -> None:
    z, y = _points()
    for beta2 in (0.0, 0.3, 0.9):
        out = entropy_ib_loss(z, y, beta2, noise=False)
        h_z = _kl_entropy_by_hand(z)
        h_zy = sum((y == c).double().mean().item() * _kl_entropy_by_hand(z[y == c])
                   for c in range(4))
        assert float(out["h_z"]) == pytest.approx(h_z, abs=1e-9)
        assert float(out["h_z_given_y"]) == pytest.approx(h_zy, abs=1e-9)
        assert float(out["loss"]) == pytest.approx(h_zy + (beta2 - 1.0) * h_z, abs=1e-9)


def test_noise_switch() -> None:
    z, y = _points(n=4000, d=2)
    plain = entropy_ib_loss(z, y, 0.5, noise=False)
    assert plain["z"] is z  # no noise: the estimator sees the encoder output itself
    g = torch.Generator().manual_seed(3)
    noisy = entropy_ib_loss(z, y, 0.5, noise=True, generator=g)
    eps = noisy["z"] - z
    assert float(eps.std()) == pytest.approx(zero_entropy_noise_std(), rel=0.03)
    assert float(noisy["loss"]) != pytest.approx(float(plain["loss"]))


def test_gradient_flows_to_the_encoder_output() -> None:
    z, y = _points()
    z = z.clone().requires_grad_(True)
    entropy_ib_loss(z, y, 0.2, noise=True, generator=torch.Generator().manual_seed(0))[
        "loss"].backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())
    assert float(z.grad.abs().sum()) > 0


def test_small_class_policy() -> None:
    z, y = _points(n=13)
    y = y.clone()
    y[-1] = 9  # class 9 has one sample: H[Z|y=9] needs k + 1 = 2
    with pytest.raises(InvalidParameterError, match="k \\+ 1"):
        entropy_ib_loss(z, y, 0.5, noise=False)
    out = entropy_ib_loss(z, y, 0.5, noise=False, small_classes="skip")
    assert float(out["skipped_classes"]) == 1.0
    keep = y != 9
    ref = conditional_knn_entropy(z[keep], y[keep])
    assert float(out["h_z_given_y"]) == pytest.approx(float(ref), abs=1e-12)
    assert float(out["h_z"]) == pytest.approx(float(knn_entropy(z)), abs=1e-12)  # whole batch
    with pytest.raises(UnknownNameError):
        entropy_ib_loss(z, y, 0.5, small_classes="ignore")


@pytest.mark.parametrize("beta2", [-0.1, 1.0, 1.5, float("nan")])
def test_beta2_outside_unit_interval_raises(beta2: float) -> None:
    z, y = _points()
    with pytest.raises(InvalidParameterError, match="beta"):
        entropy_ib_loss(z, y, beta2)
    with pytest.raises(InvalidParameterError):
        runner.ModelSpec("ib", beta2)


def test_objective_shape_errors() -> None:
    z, y = _points()
    with pytest.raises(ShapeError):
        entropy_ib_loss(z[0], y, 0.5)
    with pytest.raises(ShapeError):
        entropy_ib_loss(z, y[:-1], 0.5)
    assert check_beta2(0.0) == 0.0


def test_tiny_training_run_lowers_the_loss() -> None:
    """A few Adam steps on eq. 10 lower the objective on a fixed batch of two classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long()
    enc = torch.nn.Linear(5, 3)
    with torch.no_grad():
        enc.weight.copy_(torch.randn(3, 5, generator=g) * 0.3)
        enc.bias.zero_()
    opt = torch.optim.Adam(enc.parameters(), lr=0.05)
    losses = []
    for step in range(40):
        out = entropy_ib_loss(enc(x), y, 0.5, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


# --------------------------------------------------------------------------- models


def test_resnet_shapes_and_bad_inputs() -> None:
    enc = ResNetEncoder(1, latent_dim=7, widths=(4, 8), blocks=(1, 1),
                        generator=torch.Generator().manual_seed(0))
    assert enc(torch.rand(3, 1, 28, 28)).shape == (3, 7)
    with pytest.raises(ShapeError):
        enc(torch.rand(3, 3, 28, 28))
    with pytest.raises(InvalidParameterError):
        ResNetEncoder(1, widths=(4, 8), blocks=(1,))
    r18 = resnet18_encoder(3, 256)
    n_conv = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in r18.modules())
    assert n_conv == 17  # stem + 8 blocks × 2: with the final linear layer, 18 weight layers
    dec = ResFC(7, 10, width=16, blocks=5)
    assert dec(torch.randn(4, 7)).shape == (4, 10)
    assert len(dec.blocks) == 5
    with pytest.raises(ShapeError):
        dec(torch.randn(4, 6))


def test_models_are_a_function_of_the_generator() -> None:
    a = ResNetEncoder(1, latent_dim=4, widths=(4,), blocks=(1,),
                      generator=torch.Generator().manual_seed(5))
    b = ResNetEncoder(1, latent_dim=4, widths=(4,), blocks=(1,),
                      generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# --------------------------------------------------------------------------- GMM decoder


def test_gmm_decoder_separates_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
    y = torch.arange(300) % 3
    z = centres[y] + 0.5 * torch.randn(300, 3, generator=g)
    gmm = fit_gaussian_mixture(z, y, 3)
    yt = torch.arange(90) % 3
    zt = centres[yt] + 0.5 * torch.randn(90, 3, generator=g)
    assert float((gmm.predict(zt) == yt).float().mean()) == 1.0
    assert torch.allclose(gmm.means.float(), centres, atol=0.15)


def test_gmm_log_likelihood_matches_scipy() -> None:
    from scipy.stats import multivariate_normal

    g = torch.Generator().manual_seed(1)
    z = torch.randn(50, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0])
    y = (torch.arange(50) % 2)
    z[y == 1] += 4.0
    ridge = 1e-3
    gmm = fit_gaussian_mixture(z, y, 2, ridge=ridge)
    zc = [z[y == c] for c in range(2)]
    cen = torch.cat([zc[c] - zc[c].mean(0) for c in range(2)])
    scale = float((cen**2).mean(0).mean())
    pts = torch.randn(5, 2, generator=g, dtype=torch.float64)
    lp = gmm.log_posterior(pts)
    ref = []
    for c in range(2):
        cov = torch.cov(zc[c].T, correction=0) + ridge * scale * torch.eye(2, dtype=torch.float64)
        ref.append(multivariate_normal(zc[c].mean(0).numpy(), cov.numpy()).logpdf(pts.numpy())
                   + math.log(0.5))
    ref_t = torch.stack([torch.from_numpy(r) for r in ref]).T
    ref_post = ref_t - torch.logsumexp(ref_t, dim=1, keepdim=True)
    assert torch.allclose(lp, ref_post, atol=1e-9)


def test_gmm_bad_inputs() -> None:
    z, y = _points()
    with pytest.raises(InvalidParameterError, match="no sample"):
        fit_gaussian_mixture(z, y, 6)
    with pytest.raises(ShapeError):
        fit_gaussian_mixture(z, y[:-1], 4)
    with pytest.raises(InvalidParameterError):
        fit_gaussian_mixture(z, y, 4, ridge=0.0)
    with pytest.raises(InvalidParameterError, match="identical"):
        fit_gaussian_mixture(torch.zeros(8, 2), torch.arange(8) % 2, 2)


# --------------------------------------------------------------------------- FGSM


def test_fgsm_on_a_linear_model_matches_closed_form() -> None:
    """For logits Wx + b, ∇ₓCE = Wᵀ(softmax − onehot): FGSM is x + ε·sign of that, clipped."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(6, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 6, generator=g))
        lin.bias.copy_(torch.randn(3, generator=g))
    x = torch.rand(5, 6, generator=g, dtype=torch.float32)
    y = torch.tensor([0, 1, 2, 1, 0])
    p = torch.softmax(x @ lin.weight.T + lin.bias, dim=1)
    grad = (p - F.one_hot(y, 3).float()) @ lin.weight
    eps = 0.1
    expected = (x + eps * grad.sign()).clamp(0.0, 1.0)
    assert torch.allclose(fgsm(lin, x, y, eps), expected)
    assert torch.allclose(fgsm(lin, x, y, eps, clip=None), x + eps * grad.sign())
    accs = fgsm_accuracy(lin, x, y, [0.0, eps], batch_size=2)
    clean = float((lin(x).argmax(1) == y).float().mean())
    adv = float((lin(expected).argmax(1) == y).float().mean())
    assert accs == pytest.approx([clean, adv])
    with pytest.raises(InvalidParameterError):
        fgsm(lin, x, y, -0.1)
    with pytest.raises(InvalidParameterError):
        fgsm_accuracy(lin, x, y, [0.0, -0.1])
    with pytest.raises(ShapeError):
        fgsm(lin, x, y[:3], 0.1)


def _linear(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(6, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 6, generator=g))
        lin.bias.copy_(torch.randn(3, generator=g))
    x = torch.rand(64, 6, generator=g, dtype=torch.float32)
    y = lin(x).argmax(1).detach()  # every clean point classified correctly
    return lin, x, y


def test_pgd_with_one_full_step_and_no_random_start_is_fgsm() -> None:
    lin, x, y = _linear()
    for eps in (0.05, 0.3):
        assert torch.allclose(pgd(lin, x, y, eps, steps=1, step_size=eps, random_start=False),
                              fgsm(lin, x, y, eps))


def test_pgd_stays_in_the_ball_and_the_pixel_range() -> None:
    lin, x, y = _linear(1)
    eps = 0.2
    adv = pgd(lin, x, y, eps, steps=7, generator=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    # the random start is drawn from the generator: same seed, same attack
    again = pgd(lin, x, y, eps, steps=7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)


def test_pgd_is_at_least_as_strong_as_fgsm_on_a_smooth_model() -> None:
    """On a 2-layer network, 20 PGD steps of size 2.5ε/20 find at least as many errors as FGSM
    (the loss is not linear, so one step is not optimal); ε = 0 is the clean accuracy."""
    g = torch.Generator().manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    for prm in net.parameters():
        with torch.no_grad():
            prm.copy_(torch.randn(prm.shape, generator=g) * 2)
    x = torch.rand(400, 6, generator=g)
    y = net(x).argmax(1).detach()
    f = fgsm_accuracy(net, x, y, [0.0, 0.05, 0.1])
    p = pgd_accuracy(net, x, y, [0.0, 0.05, 0.1], steps=20,
                     generator=torch.Generator().manual_seed(0))
    assert f[0] == p[0] == 1.0
    assert p[1] <= f[1] and p[2] <= f[2] and p[2] < 1.0


def test_pgd_bad_inputs() -> None:
    lin, x, y = _linear()
    with pytest.raises(InvalidParameterError):
        pgd(lin, x, y, -0.1)
    with pytest.raises(InvalidParameterError):
        pgd(lin, x, y, 0.1, steps=0)
    with pytest.raises(InvalidParameterError):
        pgd(lin, x, y, 0.1, clip=(1.0, 0.0))
    with pytest.raises(ShapeError):
        pgd(lin, x, y[:3], 0.1)
    with pytest.raises(InvalidParameterError):
        pgd_accuracy(lin, x, y, [0.1], step_size_factor=0.0)


# --------------------------------------------------------------------------- augmentation


def test_shift_flip_windows_are_shifted_copies_of_the_padded_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 2, 7, 5, generator=g)
    out = random_shift_flip(x, 2, flip=True, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(50):
        windows = [padded[i, :, a : a + 7, b : b + 5] for a in range(5) for b in range(5)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows), i
    # some images moved, some were mirrored; pad 0 without flips is the identity
    assert not torch.equal(out, x)
    assert torch.equal(random_shift_flip(x, 0, flip=False), x)
    mirrored = random_shift_flip(x, 0, flip=True, generator=torch.Generator().manual_seed(2))
    flipped = [torch.equal(mirrored[i], x[i].flip(-1)) for i in range(50)]
    assert all(f or torch.equal(mirrored[i], x[i]) for i, f in enumerate(flipped))
    assert 10 < sum(flipped) < 40
    with pytest.raises(ShapeError):
        random_shift_flip(x[0], 2)
    with pytest.raises(ShapeError):
        random_shift_flip(x, -1)


# --------------------------------------------------------------------------- runner


def test_configs_and_specs() -> None:
    assert set(runner.PROFILES) == {"smoke", "cpu", "paper"}
    paper, cpu = runner.PROFILES["paper"], runner.PROFILES["cpu"]
    assert paper.dataset == "cifar10" and paper.latent_dim == 256 and paper.epochs == 150
    assert paper.optimizer == "adam" and paper.lr == 5e-4 and paper.resfc_width == 1024
    assert paper.resfc_blocks == 5 and paper.widths == (64, 128, 256, 512)
    assert cpu.replicates >= 2 and cpu.train_subset >= 30000 and cpu.val_subset > 0
    assert cpu.schedule.kind == "one_cycle" and cpu.pgd_steps >= 10 and len(cpu.pgd_epsilons) >= 2
    assert len(cpu.betas) >= 3 and all(0 < b < 1 for b in cpu.betas)
    specs = runner.model_specs(cpu)
    per_rep = 2 + len(cpu.betas) + len(cpu.nonoise_betas)
    assert len(specs) == cpu.replicates * per_rep
    assert {"ce", "ce-dropout", "ce-r1", "ib-b0p2-noise-r2", "ib-b0p2-nonoise"} <= set(specs)
    assert specs["ib-b0p2-noise-r2"].row == "ib-b0p2-noise"
    abl = runner.experiment_specs(cpu, "optimizer")
    assert set(abl) == {f"{row}{'-r' + str(r) if r else ''}" for r in range(cpu.replicates)
                        for row in ("ce-adam", "ib-b0p05-noise-adam")}
    assert cpu.optimizer_of(abl["ce-adam"]) == ("adam", cpu.ablation_lr)
    assert cpu.optimizer_of(specs["ce"]) == ("sgd", cpu.lr)
    longer = runner.experiment_specs(cpu, "epochs")
    assert set(longer) == {f"{row}{'-r' + str(r) if r else ''}" for r in range(cpu.long_replicates)
                           for row in ("ce-e20", "ib-b0p05-noise-e20")}
    assert longer["ce-e20"].seed_key == "ce" and abl["ce-adam"].seed_key == "ce-adam"
    assert longer["ib-b0p05-noise-e20-r1"].label == "IB β''=0.05 (20 epochs)"
    # the paper profile trains with Adam, so its optimiser experiment uses SGD
    assert paper.ablation_optimizer != paper.optimizer
    assert abl["ib-b0p05-noise-adam-r1"].label == "IB β''=0.05 (Adam)"
    assert isinstance(runner.build_optimizer(cpu, list(torch.nn.Linear(2, 2).parameters()),
                                             abl["ce-adam"]), torch.optim.AdamW)
    assert runner.decoders_of(specs["ce"]) == ("head", "gmm")
    assert runner.decoders_of(specs["ib-b0p2-noise"]) == ("gmm", "resfc")
    for bad in ({"betas": (0.5, 1.0)}, {"pgd_epsilons": ()}, {"pgd_epsilons": (0.0, 0.1)},
                {"momentum": 1.0}, {"warmup_fraction": 1.0}):
        with pytest.raises(InvalidParameterError):
            dataclasses.replace(cpu, **bad)
    for bad in ({"optimizer": "rmsprop"}, {"ablation_optimizer": "lbfgs"},
                {"schedule_kind": "step"}):
        with pytest.raises(UnknownNameError):
            dataclasses.replace(cpu, **bad)
    with pytest.raises(UnknownNameError):
        runner.run("huge")
    with pytest.raises(UnknownNameError):
        runner.ModelSpec("vib")


def test_plane_point_of_separated_classes() -> None:
    """Well separated classes: the fitted ResFC's cross-entropy (≥ H[Y|Z] = 0) is small."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    z = torch.randn(200, 2, generator=g) * 0.3 + 5.0 * y[:, None].float()
    cfg = dataclasses.replace(runner.PROFILES["smoke"], plane_steps=200, plane_width=16)
    pt = runner.plane_point(z, y, cfg, 2, g, torch.device("cpu"))
    assert 0.0 <= pt["h_y_given_z_bound_nats"] < 0.05
    assert pt["h_z_nats"] == pytest.approx(float(knn_entropy(z.double())), abs=1e-9)


def test_paper_profile_on_cifar10_standin(tmp_path: Path) -> None:
    """The paper configuration (ResNet18, K = 256, ResFC 1024×5) on stand-in CIFAR-10."""
    write_cifar10_standin(tmp_path, n_per_batch=8)
    cfg = dataclasses.replace(runner.PROFILES["paper"], train_subset=24, val_subset=6,
                              test_subset=8)
    data = runner.load_data(cfg, seed=0, root=tmp_path, verify_checksums=False)
    assert data.train_x.shape == (24, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.val_x.shape == (6, 3, 32, 32)
    assert data.test_x.shape == (8, 3, 32, 32) and data.channels == 3
    spec = runner.ModelSpec("ib", 0.5, True)
    mods = runner._build(cfg, data, spec, torch.Generator().manual_seed(0))
    enc = mods["encoder"]
    x = data.train_x[:24].float() / 255
    y = torch.arange(24) % 4
    before = enc.head.weight.detach().clone()
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr)
    out = entropy_ib_loss(enc(x), y, 0.5, k=cfg.k)
    assert out["z"].shape == (24, 256)
    out["loss"].backward()
    opt.step()
    assert not torch.equal(before, enc.head.weight)
    dec = ResFC(cfg.latent_dim, 10, width=cfg.resfc_width, blocks=cfg.resfc_blocks)
    assert dec(out["z"].detach()).shape == (24, 10)


@pytest.fixture
def fashion_data(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (SHARED_DATA / "FashionMNIST").is_dir() and "IBCORE_DATA" not in os.environ:
        pytest.skip("Fashion-MNIST is not available offline here")
    if "IBCORE_DATA" not in os.environ:
        monkeypatch.setenv("IBCORE_DATA", str(SHARED_DATA))


def test_smoke_run_writes_results_and_resume_skips(tmp_path: Path, fashion_data: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "results"
    out = runner.run("smoke", device="cpu", results_root=root, progress=False)
    assert set(out) == {"sweep", "optimizer", "epochs"}
    rec = json.loads(out["sweep"].read_text())
    m = rec["metrics"]
    cfg = runner.PROFILES["smoke"]
    assert set(m["models"]) == set(runner.model_specs(cfg))
    for key, row in m["models"].items():
        assert 0.0 <= row["test_accuracy"] <= 1.0 and 0.0 <= row["val_accuracy"] <= 1.0
        spec = runner.model_specs(cfg)[key]
        decs = runner.decoders_of(spec)
        assert row["decoder"] in decs and row["row"] == spec.row
        assert row["val_accuracy"] == max(row[f"val_accuracy_{d}"] for d in decs)
        for d in decs:
            assert len(row[f"test_fgsm_accuracy_{d}"]) == len(cfg.fgsm_epsilons)
            assert len(row[f"test_pgd_accuracy_{d}"]) == len(cfg.pgd_epsilons)
        if row["kind"] == "ib":
            plane = m["planes"][key]
            assert plane["epoch"] == list(range(1, cfg.epochs + 1))
            assert all(math.isfinite(v) for v in plane["val_h_z_nats"])
        assert "val_accuracy_last_epoch_change_points" in row
        assert len(m["pca"][key]["coords"]) == cfg.pca_points
    assert m["seeds"] == list(range(cfg.replicates))
    assert set(m["table"]) == {s.row for s in runner.model_specs(cfg).values()}
    comp = m["comparison"]
    assert comp["best_ib_row"] in m["table"] and comp["seeds"] == m["seeds"]
    assert "interval_95" in comp["test_accuracy_best_ib_minus_ce_points"]
    assert [e["epsilon"] for e in comp["pgd"]] == list(cfg.pgd_epsilons)
    assert set(comp["pgd"][0]["pairs"]) == {"ib_gmm_minus_ce_head", "ib_gmm_minus_ce_gmm",
                                            "ib_resfc_minus_ce_head", "ib_resfc_minus_ce_gmm"}
    assert m["convergence"]["models"] >= 1
    hist = [h for h in rec["history"] if h["model"] == "ib-b0p2-noise"]
    assert {"train_loss", "train_h_z_nats", "val_h_y_given_z_bound_nats",
            "val_accuracy_gmm"} <= set(hist[0])
    assert "val_accuracy_head" in [h for h in rec["history"] if h["model"] == "ce"][0]
    abl = json.loads(out["optimizer"].read_text())["metrics"]
    assert set(abl["models"]) == set(runner.experiment_specs(cfg, "optimizer"))
    assert abl["optimizer"] == cfg.ablation_optimizer and abl["seeds"] == m["seeds"]
    assert len(abl["test_accuracy_ib_minus_ce_points"]["differences"]) == cfg.replicates
    longer = json.loads(out["epochs"].read_text())
    assert longer["metrics"]["epochs"] == cfg.long_epochs
    assert longer["metrics"]["seeds"] == list(range(cfg.long_replicates))
    assert len([h for h in longer["history"] if h["model"] == "ce-e3"]) == cfg.long_epochs
    # --resume skips finished models (no training at all) and reproduces the metrics
    monkeypatch.setattr(runner, "_train", lambda *a, **k: pytest.fail("retrained a model"))
    again = runner.run("smoke", device="cpu", results_root=root, progress=False, resume=True)
    assert json.loads(again["sweep"].read_text())["metrics"] == m


def test_interrupted_training_resumes_exactly(tmp_path: Path, fashion_data: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "DEFAULT_CHECKPOINT_MIN_SECONDS", 0.0)  # save mid-epoch
    cfg = dataclasses.replace(runner.PROFILES["smoke"], epochs=2, checkpoint_every_steps=2)
    spec = runner.ModelSpec("ib", 0.2, True)

    def ctx(root: Path, resume: bool) -> runner._Context:
        return runner._Context("smoke", cfg, torch.device("cpu"), 0, resume, root, False)

    ref_mods, ref_ev = runner._train(ctx(tmp_path / "a", False), spec, tmp_path / "a")
    real, calls = runner.entropy_ib_loss, {"n": 0}

    def crash(*args, **kwargs):  # noqa: ANN202
        calls["n"] += 1
        if calls["n"] == 7:  # in the second epoch, after a mid-epoch checkpoint
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "entropy_ib_loss", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        runner._train(ctx(tmp_path / "b", False), spec, tmp_path / "b")
    monkeypatch.setattr(runner, "entropy_ib_loss", real)
    mods, ev = runner._train(ctx(tmp_path / "b", True), spec, tmp_path / "b")
    a, b = ref_mods["encoder"].state_dict(), mods["encoder"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ev["history"] == ref_ev["history"]


def test_source_numbers_file() -> None:
    src = json.loads((ROOT / "book" / "entropy_ib.source.json").read_text())
    assert src["cite"] == "kirsch2020cifar"
    acc = src["results"]
    for key in ("ib_gmm_accuracy_percent", "ib_resfc_accuracy_percent", "ce_accuracy_percent"):
        assert 0 < acc[key]["value"] <= 100 and acc[key]["where"]
    assert src["setup"]["latent_dim"]["value"] == runner.PROFILES["paper"].latent_dim


def test_no_noise_model_that_collapses_is_recorded_as_diverged(
    tmp_path: Path, fashion_data: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without noise the kNN estimate becomes -inf once a class collapses onto duplicate points.
    # Simulate that on the second step of every no-noise model: the run finishes, the model is
    # marked diverged in epoch 1 and evaluated with its last finite weights; a model *with*
    # noise that hits the same error is a bug and must still raise.
    from ibcore.errors import NonFiniteError

    real = runner.entropy_ib_loss
    calls: dict[bool, int] = {True: 0, False: 0}

    def collapsing(z_hat, y, beta2, *, noise=True, **kw):
        calls[noise] += 1
        if not noise and calls[noise] % 2 == 0:  # each no-noise model: its second step
            raise NonFiniteError("2 point(s) have their k-th nearest neighbour at distance 0")
        return real(z_hat, y, beta2, noise=noise, **kw)

    monkeypatch.setattr(runner, "entropy_ib_loss", collapsing)
    out = runner.run("smoke", device="cpu", results_root=tmp_path / "r1", progress=False)
    rows = json.loads(out["sweep"].read_text())["metrics"]["models"]
    for key, row in rows.items():
        if row["kind"] == "ib" and not row["noise"]:
            assert row["diverged"]["epoch"] == 1 and row["diverged"]["step"] == 1, key
            assert "distance 0" in row["diverged"]["reason"]
        else:
            assert row["diverged"] is None, key

    def always(z_hat, y, beta2, *, noise=True, **kw):
        raise NonFiniteError("collapsed")

    monkeypatch.setattr(runner, "entropy_ib_loss", always)
    # a model with the noise must not collapse: its task fails (and the sweep is not assembled)
    with pytest.raises(TaskFailedError, match="NonFiniteError: collapsed"):
        runner.run("smoke", device="cpu", results_root=tmp_path / "r2", progress=False)

"""Tests of the variational-glasses chapter: Lagrangians, models, metrics, estimators, runner."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from ibcore.errors import (
    InvalidParameterError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)
from ibcore.estimators.divergences import (
    classifier_kl,
    density_ratio_kl,
    frechet_distance,
    mmd2_unbiased,
)
from ibcore.estimators.rate import FactorizedDensity
from ibcore.metrics import auroc, roc_curve, roc_curve_on_grid
from ibcore.models.autoencoders import (
    BernoulliDecoder,
    DeterministicEncoder,
    Discriminator,
    GaussianDecoder,
    GaussianEncoder,
    bernoulli_log_prob,
    quantize,
)
from ibcore.objectives import bibae
from ibcore.replicates import aggregate_rows, mean_interval
from ibcore.runners import glasses

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# fixed term values, distinct so that a swapped term changes the sum
A, B, C, D, R = 2.5, 0.75, -100.0, 3.25, 7.0


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ Lagrangians


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_each_lagrangian_has_the_sources_signs(beta: float) -> None:
    expected = {  # written out from eq. (26)-(36) of variational_glasses.md
        "ae": -C,
        "vae": A - C,
        "beta_vae": A - beta * C,
        "aae": B - beta * C,
        "infovae": A - B - beta * C,
        "gan": beta * D,
        "vae_gan": A - beta * C + beta * D,
        "shannon_ae": R - beta * C,
        "generative_compression": R - beta * (C - D),
        "novelty_ae": B - beta * C + beta * D,
        "bib_ae": (A - B) - beta * (C - D),
    }
    got = {
        "ae": bibae.ae_lagrangian(torch.tensor(C)),
        "vae": bibae.vae_lagrangian(torch.tensor(A), torch.tensor(C)),
        "beta_vae": bibae.beta_vae_lagrangian(torch.tensor(A), torch.tensor(C), beta),
        "aae": bibae.aae_lagrangian(torch.tensor(B), torch.tensor(C), beta),
        "infovae": bibae.infovae_lagrangian(A, B, C, beta),
        "gan": bibae.gan_lagrangian(D, beta),
        "vae_gan": bibae.vae_gan_lagrangian(A, C, D, beta),
        "shannon_ae": bibae.shannon_ae_lagrangian(R, C, beta),
        "generative_compression": bibae.generative_compression_lagrangian(R, C, D, beta),
        "novelty_ae": bibae.novelty_ae_lagrangian(B, C, D, beta),
        "bib_ae": bibae.bib_ae_lagrangian(A, B, C, D, beta),
    }
    assert set(got) == set(bibae.MODELS)
    for name, value in got.items():
        assert float(value) == pytest.approx(expected[name], rel=1e-6), name


def test_gradients_carry_the_coefficients() -> None:
    terms = {t: torch.tensor(v, requires_grad=True) for t, v in zip("ABCD", (A, B, C, D), strict=True)}
    loss = bibae.bib_ae_lagrangian(*terms.values(), beta=2.0)
    loss.backward()
    grads = {t: float(v.grad) for t, v in terms.items()}
    assert grads == {"A": 1.0, "B": -1.0, "C": -2.0, "D": 2.0}


def test_term_table_matches_the_coefficients() -> None:
    rows = {r["key"]: r for r in bibae.term_table()}
    assert rows["bib_ae"]["A"] == "+1" and rows["bib_ae"]["B"] == "−1"
    assert rows["bib_ae"]["C"] == "−β" and rows["bib_ae"]["D"] == "+β"
    assert rows["aae"]["A"] == "" and rows["aae"]["B"] == "+1"
    assert rows["vae"]["equation"] == "(30)"
    for key, row in rows.items():
        numeric = bibae.coefficients(key, beta=2.0)
        for term in bibae.TERMS:
            if row[term] == "":
                assert term not in numeric
            else:
                sign = 1.0 if row[term][0] == "+" else -1.0
                assert numeric[term] == sign * (2.0 if row[term].endswith("β") else 1.0)


def test_lagrangian_rejects_bad_inputs() -> None:
    with pytest.raises(UnknownNameError, match="missing C"):
        bibae.lagrangian("vae", {"A": A})
    with pytest.raises(UnknownNameError, match="not part of it: B"):
        bibae.lagrangian("vae", {"A": A, "B": B, "C": C})
    with pytest.raises(UnknownNameError, match="takes the terms R, C"):
        bibae.lagrangian("shannon_ae", {"A": A, "B": B, "C": C})
    with pytest.raises(UnknownNameError, match="unknown model"):
        bibae.lagrangian("wae", {"C": C})
    with pytest.raises(InvalidParameterError):
        bibae.beta_vae_lagrangian(A, C, beta=-1.0)
    with pytest.raises(ShapeError, match="scalar"):
        bibae.vae_lagrangian(torch.ones(3), C)
    with pytest.raises(NonFiniteError):
        bibae.vae_lagrangian(float("nan"), C)


# ------------------------------------------------------------------------------ metrics


def test_auroc_and_roc_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = rng.integers(0, 12, 400) + 1.5 * labels  # many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thr = roc_curve(torch.as_tensor(scores), torch.as_tensor(labels))
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    grid = roc_curve_on_grid(scores, labels, n_points=2001)
    area = np.trapezoid(grid["tpr"], grid["fpr"])
    assert area == pytest.approx(roc_auc_score(labels, scores), abs=2e-3)


def test_auroc_by_hand() -> None:
    # positives {3, 1}, negatives {2, 1}: pairs (3>2) (3>1) (1<2) (1=1 → ½) → 2.5 / 4
    assert auroc([3, 1, 2, 1], [1, 1, 0, 0]) == pytest.approx(0.625)
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.9], [1, 1, 0]) == 0.0
    assert auroc([5.0] * 6, [0, 1] * 3) == 0.5


def test_auroc_rejects_bad_inputs() -> None:
    with pytest.raises(InvalidParameterError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(NonFiniteError):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ShapeError):
        auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(InvalidParameterError, match="0 .negative. or 1"):
        auroc([0.1, 0.2], [0, 2])


# ------------------------------------------------------------------------------ estimators
# (the settings the chapter measures B and D with)


def test_mmd_same_distribution_is_near_zero_and_shifted_matches_closed_form() -> None:
    gen = _gen(1)
    d, n, sigma = 4, 1500, 2.0
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, d, generator=gen, dtype=torch.float64)
    same = float(mmd2_unbiased(x, y, kernel="imq", bandwidth=1.0))
    assert abs(same) < 3e-3
    shift = torch.zeros(d, dtype=torch.float64)
    shift[0] = 1.0
    # RBF kernel, N(0, I) vs N(m, I): MMD² = 2 c (1 − exp(−|m|²/(2(σ²+2)))), c = (σ²/(σ²+2))^{d/2}
    c = (sigma**2 / (sigma**2 + 2)) ** (d / 2)
    closed = 2 * c * (1 - math.exp(-1.0 / (2 * (sigma**2 + 2))))
    est = float(mmd2_unbiased(x, y + shift, kernel="rbf", bandwidth=sigma))
    assert est == pytest.approx(closed, abs=0.15 * closed)


def test_density_ratio_kl_of_two_gaussians_matches_closed_form() -> None:
    gen = _gen(2)
    n = 800  # over six seeds these settings gave 0.40-0.59
    p = torch.randn(n, 2, generator=gen)
    q = torch.randn(n, 2, generator=gen) + torch.tensor([1.0, 0.0])
    est = density_ratio_kl(p, q, hidden=8, steps=100, generator=_gen(3))
    assert est == pytest.approx(0.5, abs=0.15)  # KL(N(0,I) ‖ N(m,I)) = |m|²/2


def test_classifier_kl_matches_closed_forms_and_is_not_inflated_by_overfitting() -> None:
    gen = _gen(4)
    d, n = 32, 4000
    p = torch.randn(n, d, generator=gen)
    same = classifier_kl(p, torch.randn(n, d, generator=gen), generator=_gen(5))
    assert abs(same.kl_nats) < 0.05 and abs(same.accuracy - 0.5) < 0.03
    # KL(N(0, I) ‖ N(m, I)) = ‖m‖²/2 = 32 · 0.3² / 2 = 1.44 nats
    shifted = classifier_kl(p, torch.randn(n, d, generator=gen) + 0.3, generator=_gen(6))
    assert shifted.kl_nats == pytest.approx(1.44, abs=0.25)
    assert shifted.dv_nats == pytest.approx(1.44, abs=0.25)
    with pytest.raises(ShapeError):
        classifier_kl(p[:4], p[:4])
    with pytest.raises(InvalidParameterError):
        classifier_kl(p, p, patience=0)


def test_frechet_distance_closed_form() -> None:
    gen = _gen(7)
    x = torch.randn(40000, 3, generator=gen, dtype=torch.float64)
    y = 0.5 * torch.randn(40000, 3, generator=gen, dtype=torch.float64) + torch.tensor([1.0, 0, 0])
    # ‖m‖² + d (1 − s)² = 1 + 3 · 0.25
    assert frechet_distance(x, y) == pytest.approx(1.75, abs=0.05)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ShapeError):
        frechet_distance(x, y[:, :2])


# ------------------------------------------------------------------------------ models


def test_gaussian_code_kl_and_sampling() -> None:
    enc = GaussianEncoder(latent_dim=5, hidden=(32,), generator=_gen(0))
    x = torch.rand(7, 1, 28, 28, generator=_gen(1))
    code = enc(x)
    ref = kl_divergence(Independent(Normal(code.mu, code.std), 1),
                        Independent(Normal(torch.zeros(5), torch.ones(5)), 1))
    torch.testing.assert_close(code.kl_standard_normal(), ref)
    z1, z2 = code.rsample(_gen(5)), code.rsample(_gen(5))
    torch.testing.assert_close(z1, z2)
    assert z1.shape == (7, 5)


def test_decoder_log_probs_match_torch_distributions() -> None:
    dec = BernoulliDecoder(latent_dim=3, hidden=(16,), generator=_gen(0))
    z = torch.randn(4, 3, generator=_gen(1))
    x = (torch.rand(4, 1, 28, 28, generator=_gen(2)) > 0.5).float()
    ref = Independent(Bernoulli(logits=dec(z)), 3).log_prob(x)
    torch.testing.assert_close(dec.log_prob(x, z), ref)
    grey = torch.rand(4, 784, generator=_gen(3))  # flat images are accepted too
    logits = torch.randn(4, 784, generator=_gen(4))
    manual = (grey * torch.log(torch.sigmoid(logits))
              + (1 - grey) * torch.log(torch.sigmoid(-logits))).sum(1)
    torch.testing.assert_close(bernoulli_log_prob(grey, logits), manual)
    gdec = GaussianDecoder(latent_dim=3, hidden=(16,), log_scale=-1.0, generator=_gen(0))
    ref_g = Independent(Normal(gdec(z), math.exp(-1.0)), 3).log_prob(x)
    torch.testing.assert_close(gdec.log_prob(x, z), ref_g)


def test_models_reject_bad_inputs() -> None:
    enc = DeterministicEncoder(latent_dim=4, hidden=(8,), generator=_gen(0))
    with pytest.raises(ShapeError, match=r"\[N, 1, 28, 28\]"):
        enc(torch.rand(2, 1, 32, 32))
    with pytest.raises(ShapeError, match="divisible by 4"):
        GaussianEncoder((1, 30, 30), arch="conv")
    with pytest.raises(UnknownNameError):
        GaussianEncoder(arch="resnet")
    with pytest.raises(InvalidParameterError):
        BernoulliDecoder(latent_dim=0)
    with pytest.raises(ShapeError, match=r"\[N, 4\]"):
        BernoulliDecoder(latent_dim=4, hidden=(8,))(torch.rand(2, 5))
    with pytest.raises(InvalidParameterError, match=r"\[0, 1\]"):
        bernoulli_log_prob(torch.full((1, 4), 2.0), torch.zeros(1, 4))
    with pytest.raises(ShapeError):
        Discriminator(16)(torch.rand(3, 15))


def test_initialisation_is_a_function_of_the_generator() -> None:
    a = GaussianEncoder(hidden=(32,), generator=_gen(7))
    b = GaussianEncoder(hidden=(32,), generator=_gen(7))
    c = GaussianEncoder(hidden=(32,), generator=_gen(8))
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


def test_conv_architecture_shapes() -> None:
    for shape in [(1, 28, 28), (3, 32, 32)]:
        enc = GaussianEncoder(shape, 6, (64,), arch="conv", channels=(8, 16), generator=_gen(0))
        dec = BernoulliDecoder(shape, 6, (64,), arch="conv", channels=(8, 16), generator=_gen(0))
        code = enc(torch.rand(2, *shape))
        assert code.mu.shape == (2, 6)
        assert dec(code.rsample()).shape == (2, *shape)


def test_quantize_and_code_sampling() -> None:
    z = torch.tensor([[0.4, -1.6, 2.5]])
    assert torch.equal(quantize(z, noisy=False), torch.round(z))
    noisy = quantize(z.expand(1000, 3), noisy=True, generator=_gen(0))
    assert bool(((noisy - z).abs() <= 0.5).all())
    density = FactorizedDensity(2, components=1, init_scale=4.0)  # Logistic(0, 2) per channel
    codes = glasses.sample_codes(density, 20000, _gen(1))
    assert torch.equal(codes, codes.round())
    freq0 = float((codes[:, 0] == 0).double().mean())
    p0 = float(density.likelihood(torch.zeros(1, 2))[0, 0].detach())
    assert freq0 == pytest.approx(p0, abs=0.015)
    rate = glasses.code_length_nats(density, torch.zeros(3, 2))
    torch.testing.assert_close(rate, torch.full((3,), -2 * math.log(p0)))


# ------------------------------------------------------------------------------ runner


def _tiny(profile: str = "smoke") -> glasses.GlassesConfig:
    return glasses.PROFILES[profile]


def test_zoo_and_config_validation() -> None:
    names = [e.name for e in glasses.zoo(glasses.PROFILES["cpu"], "mnist")]
    assert names[:2] == ["ae", "beta_vae_0.25"] and "vae" in names and "bib_ae" in names
    assert sum(n.startswith("beta_vae") or n == "vae" for n in names) >= 5
    fm = [e.name for e in glasses.zoo(glasses.PROFILES["cpu"], "fashion_mnist")]
    assert set(fm) < set(names) and "gan" in fm
    # at least two replicates of every row at the cpu profile, each with its own seed
    cpu = glasses.PROFILES["cpu"]
    assert cpu.replicates >= 2 and "vae-r1" in names and "gan-r1" in fm
    assert glasses.row_name("beta_vae_0.25-r1") == "beta_vae_0.25"
    assert glasses.row_name("vae") == "vae"
    entry = glasses.ZooEntry("shannon_ae", 2.0, replicate=1)
    assert (entry.name, entry.row) == ("shannon_ae_2-r1", "shannon_ae_2")
    assert cpu.adv_epochs > cpu.epochs
    with pytest.raises(InvalidParameterError):
        glasses.ZooEntry("ae", replicate=-1)
    with pytest.raises(InvalidParameterError):
        dataclasses.replace(_tiny(), n_train=64, n_val=64)
    with pytest.raises(UnknownNameError):
        dataclasses.replace(_tiny(), schedule_kind="step")
    with pytest.raises(UnknownNameError, match="not in the zoo"):
        glasses.zoo(dataclasses.replace(_tiny(), fashion_models=("vqvae",)), "fashion_mnist")
    with pytest.raises(InvalidParameterError):
        dataclasses.replace(_tiny(), betas=(-1.0,))
    with pytest.raises(UnknownNameError):
        glasses.run("huge")


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_every_model_takes_a_training_step(profile: str) -> None:
    """The training code path of every kind, including the paper profile's conv networks."""
    cfg = _tiny(profile)
    x = torch.rand(4, 1, 28, 28, generator=_gen(0))
    one_per_kind = {e.kind: e for e in glasses.zoo(cfg, "mnist")}
    assert set(one_per_kind) == set(glasses.KINDS)
    # the paper's (large, convolutional) networks: three kinds cover every module type
    kinds = glasses.KINDS if profile == "smoke" else ("bib_ae", "shannon_ae", "gan")
    for entry in (one_per_kind[k] for k in kinds):
        model = glasses.build_model(entry, cfg, (1, 28, 28), _gen(1))
        torch.manual_seed(0)
        opts = glasses.build_optimizers(model, cfg)
        if len(opts) > 1:
            out = glasses._adversarial_step_fn(model, cfg, opts)((x,), 0)
            for disc in ("x_disc", "z_disc"):
                assert (f"{disc}_loss" in out) == (disc in opts)
        else:
            out = glasses.training_terms(model, x, cfg)
            out["loss"].backward()
        assert math.isfinite(float(out["loss"].detach())), entry.name


def test_training_terms_assemble_the_lagrangian() -> None:
    cfg = _tiny()
    x = torch.rand(8, 1, 28, 28, generator=_gen(0))
    fake_logits = torch.randn(8, generator=_gen(1))
    for kind, beta in [("bib_ae", 1.0), ("beta_vae", 2.0), ("aae", 1.0), ("shannon_ae", 0.5)]:
        entry = glasses.ZooEntry(kind, beta)
        model = glasses.build_model(entry, cfg, (1, 28, 28), _gen(2))
        torch.manual_seed(0)
        logits = fake_logits if kind in glasses.D_KINDS else None
        t = {k: float(v.detach()) for k, v in glasses.training_terms(model, x, cfg, logits).items()}
        by_hand = {
            "bib_ae": t.get("A", 0) - t.get("B", 0) - beta * (t.get("C", 0) - t.get("D", 0)),
            "beta_vae": t.get("A", 0) - beta * t.get("C", 0),
            "aae": t.get("B", 0) - beta * t.get("C", 0),
            "shannon_ae": t.get("R", 0) - beta * t.get("C", 0),
        }[kind]
        assert t["loss"] == pytest.approx(by_hand, rel=1e-5), kind
        assert t["C"] < 0  # a log-likelihood of 784 Bernoulli pixels
    # D is λ_D · mean softplus(−T(fake)), B is λ_B · MMD²
    model = glasses.build_model(glasses.ZooEntry("bib_ae"), cfg, (1, 28, 28), _gen(2))
    terms = glasses.training_terms(model, x, cfg, fake_logits)
    want_d = cfg.lambda_d * float(torch.nn.functional.softplus(-fake_logits).mean())
    assert float(terms["D"]) == pytest.approx(want_d, rel=1e-6)


def _synthetic_metrics(values: dict[str, list[dict[str, float]]]) -> dict:
    """Metrics of a fake run: ``values[row][r]`` are replicate ``r``'s numbers of that row."""
    models = {}
    for row, reps in values.items():
        for r, nums in enumerate(reps):
            models[row + (f"-r{r}" if r else "")] = {"row": row, "replicate": r, **nums}
    return {"models": models, "table": aggregate_rows(models),
            "beta_sweep": [n for n in ("beta_vae_0.5", "vae", "beta_vae_2") if n in values],
            "compression_sweep": [], "settle_fraction": 0.25, "settle_tolerance": 0.1}


def test_reproduction_checks_judge_paired_differences() -> None:
    good = _synthetic_metrics({
        "ae": [{"test_C_nats": -80.0}, {"test_C_nats": -81.0}],
        "vae": [{"test_A_nats": 25.0, "test_C_nats": -90.0, "test_B_mmd2": 0.010},
                {"test_A_nats": 26.0, "test_C_nats": -91.0, "test_B_mmd2": 0.011}],
        "beta_vae_0.5": [{"test_A_nats": 15.0, "test_C_nats": -100.0},
                         {"test_A_nats": 16.0, "test_C_nats": -101.0}],
        "beta_vae_2": [{"test_A_nats": 35.0, "test_C_nats": -80.0},
                       {"test_A_nats": 36.0, "test_C_nats": -81.0}],
        "aae": [{"test_B_mmd2": 0.005}, {"test_B_mmd2": 0.006}],
    })
    checks = {c["check"]: c for c in glasses.reproduction_checks(good)}
    assert checks["plain AE's C above the VAE's C"]["holds"] is True
    assert checks["plain AE's C above the VAE's C"]["comparisons"][0]["mean"] == pytest.approx(10)
    assert checks["AAE's B below the VAE's B, by MMD²"]["holds"] is True
    assert checks["β-VAE's A rises with β"]["holds"] is True
    assert len(checks["β-VAE's A rises with β"]["comparisons"]) == 2
    assert "GAN's D below the VAE's D, by density-ratio KL" not in checks  # no GAN trained
    assert all(c["explanations"] == [] for c in checks.values() if c["holds"] is True)
    # the AAE's MMD² above the VAE's in both replicates: contradicted
    bad = json.loads(json.dumps(good["models"]))
    bad["aae"]["test_B_mmd2"], bad["aae-r1"]["test_B_mmd2"] = 0.020, 0.021
    bad["beta_vae_2"]["test_A_nats"] = 20.0  # one replicate up, one down: undecided
    m = {**good, "models": bad, "table": aggregate_rows(bad)}
    checks = {c["check"]: c for c in glasses.reproduction_checks(m)}
    assert checks["AAE's B below the VAE's B, by MMD²"]["holds"] is False
    sweep = checks["β-VAE's A rises with β"]
    assert sweep["holds"] is None and sweep["verdict"] == "undecided"
    # the explanation is computed from the recorded numbers: the interval and the differences
    (text,) = [e for e in sweep["explanations"] if "contains 0" in e]
    assert "beta_vae_2 − vae = 2.5" in text and "differences -5, 10; they differ in sign" in text


def test_explanations_name_unsettled_training_and_a_chance_discriminator() -> None:
    m = _synthetic_metrics({
        "vae": [{"test_D_kl_nats": 2.0, "test_D_fd": 10.0, "test_B_kl_nats": 1.0},
                {"test_D_kl_nats": 2.5, "test_D_fd": 11.0, "test_B_kl_nats": 1.2}],
        "gan": [{"test_D_kl_nats": 3.0, "test_D_fd": 5.0},
                {"test_D_kl_nats": 2.0, "test_D_fd": 6.0}],
        "infovae": [{"test_B_kl_nats": 1.1}, {"test_B_kl_nats": 1.0}],
    })
    history = [{"row": "gan", "replicate": r, "kind": "gan", "epoch": e, "sample_fd": fd}
               for r in (0, 1) for e, fd in enumerate([9.0, 8.0, 4.0, 2.0], start=1)]
    settle = glasses.sample_score_settling(history, glasses.PROFILES["smoke"])
    # window = round(0.25 · 4) = 1 epoch: |2 − 4| / 2 = 100 %
    assert settle["gan"][0]["relative_change"] == pytest.approx(1.0)
    assert settle["gan"][0]["settled"] is False and settle["gan"][0]["window_epochs"] == 1
    m["sample_score_settling"] = settle
    m["latent_disc_last_loss"] = {"infovae": 1.40}
    checks = {c["check"]: c for c in glasses.reproduction_checks(m)}
    gan = checks["GAN's D below the VAE's D, by density-ratio KL"]
    assert gan["holds"] is None
    assert any("not settled" in e and "100%" in e for e in gan["explanations"])
    assert any("Fréchet distance" in e for e in gan["explanations"])  # it says the opposite
    assert checks["gan's sample score settled by the end of training"]["holds"] is False
    info = checks["InfoVAE's B above the VAE's B, by density-ratio KL"]
    assert any("2 ln 2" in e and "1.400" in e for e in info["explanations"])


def test_novelty_choice_is_made_on_validation() -> None:
    models = {"vae": {"row": "vae"}, "vae-r1": {"row": "vae"}, "ae": {"row": "ae"}}
    novelty = {"vae": {"auroc_C_val": 0.95, "auroc_C": 0.70, "auroc_A_val": 0.60, "auroc_A": 0.99},
               "vae-r1": {"auroc_C_val": 0.93, "auroc_C": 0.72, "auroc_A_val": 0.62,
                          "auroc_A": 0.98},
               "ae": {"auroc_C_val": 0.90, "auroc_C": 0.97}}
    choice = glasses._novelty_choice(novelty, models)
    assert (choice["row"], choice["score"]) == ("vae", "C")  # not the test-best A
    assert choice["test"]["mean"] == pytest.approx(0.71)
    m = {"dataset": "mnist", "novelty_choice": choice}
    (check,) = [c for c in glasses.reproduction_checks(m) if c["key"] == "auroc"]
    assert check["holds"] is False  # interval [0.583, 0.837] lies below 0.9


def test_known_value_check_and_mean_interval() -> None:
    from scipy import stats

    vals = [0.9, 1.1, 1.05, 0.95, 1.0]
    res = mean_interval(vals)
    lo, hi = stats.t.interval(0.95, 4, loc=np.mean(vals), scale=stats.sem(vals))
    assert res["interval_95"] == pytest.approx([lo, hi])
    assert mean_interval([1.0])["interval_95"] is None
    with pytest.raises(InvalidParameterError):
        mean_interval([])
    ok = glasses._known_value_check("x", {"kl_nats": 1.0, "kl_nats_ci95": [0.95, 1.05]}, 1.0)
    off = glasses._known_value_check("x", {"kl_nats": 1.5, "kl_nats_ci95": [1.4, 1.6]}, 1.0)
    wide = glasses._known_value_check("x", {"kl_nats": 1.0, "kl_nats_ci95": [0.0, 2.0]}, 1.0)
    assert (ok["holds"], off["holds"], wide["holds"]) == (True, False, False)


def _random_data(n: int = 96) -> glasses._Data:
    gen = _gen(11)
    imgs = torch.rand(n, 1, 28, 28, generator=gen)
    mean, comps = glasses._pca(imgs, 4)
    return glasses._Data(imgs, imgs[:32], imgs, imgs[:32], imgs, mean, comps)


def test_deterministic_encoders_a_is_the_noise_identity() -> None:
    cfg = dataclasses.replace(_tiny(), n_eval=64, n_divergence=32, estimator_repeats=2,
                              dr_steps=5)
    model = glasses.build_model(glasses.ZooEntry("ae"), cfg, (1, 28, 28), _gen(3))
    out = glasses._measure(model, _random_data(), cfg, torch.device("cpu"), 0)
    s2 = cfg.det_noise_std ** 2
    const = 0.5 * cfg.latent_dim * (s2 - 1 - math.log(s2))
    assert out["A_noise_constant_nats"] == pytest.approx(const)
    assert out["test_A_nats"] == pytest.approx(out["test_A_code_energy_nats"] + const, rel=1e-5)
    for key in ("test_B_kl_nats", "test_B_mmd2", "test_D_kl_nats", "test_D_fd"):
        lo, hi = out[f"{key}_ci95"]
        assert lo <= out[key] <= hi and len(out[f"{key}_values"]) == 2


@pytest.fixture
def data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    if "IBCORE_DATA" not in os.environ:
        if not (SHARED_DATA / "MNIST").is_dir():
            pytest.skip("MNIST / Fashion-MNIST are not available offline here")
        monkeypatch.setenv("IBCORE_DATA", str(SHARED_DATA))


def test_smoke_run_writes_results_and_resumes(tmp_path: Path, data_env: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    small = dataclasses.replace(glasses.PROFILES["smoke"], fashion_models=("vae", "gan"),
                                n_train=192, n_val=64, n_eval=128, n_divergence=64,
                                n_trajectory=32, n_novelty=64, n_sample_score=32, dr_steps=5)
    monkeypatch.setitem(glasses.PROFILES, "smoke", small)
    root = tmp_path / "results"
    out = glasses.run("smoke", results_root=root, progress=False,
                      experiments=("fashion_mnist",))
    record = json.loads(out["fashion_mnist"].read_text())
    metrics = record["metrics"]
    assert set(metrics["models"]) == {"vae", "gan", "vae-r1", "gan-r1"}
    assert metrics["table"]["vae"]["seeds"] == [0, 1]
    assert metrics["n_train"] == 128 and metrics["n_val"] == 64
    vae = metrics["models"]["vae"]
    for key in ("test_A_nats", "test_B_mmd2", "test_B_kl_nats", "test_C_nats",
                "test_D_kl_nats", "test_D_fd"):
        assert math.isfinite(vae[key]), key
        if key != "test_A_nats" and key != "test_C_nats":
            assert len(vae[f"{key}_values"]) == small.estimator_repeats
    assert metrics["models"]["gan"]["test_A_nats"] is None  # no encoder
    assert 0.0 <= metrics["novelty"]["vae"]["auroc_C"] <= 1.0
    assert "auroc_D" in metrics["novelty"]["gan"] and "auroc_D_val" in metrics["novelty"]["gan"]
    assert metrics["test_C_max_nats"] > vae["test_C_nats"]
    est = metrics["estimator_checks"]
    assert set(est["D"]["cases"]) == {"data vs data", "data vs ½ data + ½ noise", "data vs noise"}
    assert est["D"]["cases"]["data vs ½ data + ½ noise"]["truth_nats"] == pytest.approx(math.log(2))
    assert set(metrics["sample_score_settling"]["gan"]) == {"0", "1"}
    kinds = {c["check"] for c in metrics["checks"]}
    assert "gan's sample score settled by the end of training" in kinds
    rows = {r["model"] for r in record["history"]}
    assert rows == {"vae", "gan", "vae-r1", "gan-r1"}
    # every epoch row has the sample score; the adversarial models train longer, on a
    # per-step schedule that decays from its peak
    gan_rows = [r for r in record["history"] if r["model"] == "gan" and r["epoch"] >= 1]
    assert len(gan_rows) == small.adv_epochs and all("sample_fd" in r for r in gan_rows)
    assert gan_rows[-1]["lr_end_main"] < 0.1 * small.adv_lr
    vae_rows = [r for r in record["history"] if r["model"] == "vae" and r["epoch"] >= 1]
    assert len(vae_rows) == small.epochs and "traj_A_nats" in vae_rows[0]
    images = glasses.load_images_artifact(out["fashion_mnist"], metrics,
                                          record["artifacts"]["images"])
    assert images["vae/recon"].shape == (8, 28, 28) and images["originals"].dtype == np.uint8
    # --resume skips every finished model and reproduces the metrics exactly
    again = glasses.run("smoke", results_root=root, progress=False, resume=True,
                        experiments=("fashion_mnist",))
    assert json.loads(again["fashion_mnist"].read_text())["metrics"] == metrics
    # a lost measurement cache is rebuilt from the finished checkpoint, identically
    done = root.parent / "runs" / "glasses" / "fashion_mnist" / "smoke-seed0" / "vae.done"
    done.unlink()
    third = glasses.run("smoke", results_root=root, progress=False, resume=True,
                        experiments=("fashion_mnist",))
    m3 = json.loads(third["fashion_mnist"].read_text())["metrics"]
    for key in ("test_A_nats", "test_C_nats", "test_B_kl_nats", "test_D_kl_nats", "test_D_fd"):
        assert m3["models"]["vae"][key] == vae[key]


def test_estimators_pass_their_known_cases_on_mnist(data_env: None) -> None:
    cfg = dataclasses.replace(glasses.PROFILES["cpu"], n_train=6000, n_val=1000,
                              n_divergence=2000, estimator_repeats=3)
    data = glasses._load_data("mnist", cfg, 0)
    res = glasses.estimator_checks(data, cfg, 0)
    d = res["D"]["cases"]
    assert abs(d["data vs data"]["kl_nats"]) < 0.1
    assert d["data vs ½ data + ½ noise"]["kl_nats"] == pytest.approx(math.log(2), abs=0.15)
    assert d["data vs noise"]["kl_nats"] > 3.0
    assert res["D"]["ranking"]["holds"] is True
    b = res["B"]["cases"]
    assert abs(b["N(0, I) vs N(0, I)"]["kl_nats"]) < 0.1
    assert b["N(0, I) vs N(m, I), ‖m‖²/2 = 1"]["kl_nats"] == pytest.approx(1.0, abs=0.25)

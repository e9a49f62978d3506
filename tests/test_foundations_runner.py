"""Tests of the Foundations runner (``ibcore.runners.foundations``).

References are independent of the code under test: canonical correlations from an SVD of the
whitened cross-covariance, KL divergences and log densities from ``torch.distributions``,
expectations over the encoder noise by Monte Carlo, and the Gaussian IB curve from the closed
form of Chechik et al. (2005) written out here with the eigenvalues ``λ_i = 1 − ρ_i²`` that the
problem is built to have.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from ibcore.errors import InvalidParameterError, UnknownNameError
from ibcore.results import load_result
from ibcore.runners import foundations as fdn

# ---------------------------------------------------------------------------------------------
# independent references
# ---------------------------------------------------------------------------------------------


def chechik_curve(lambdas: np.ndarray, beta: float) -> tuple[float, float]:
    """Gaussian IB optimum at β: I_x = ½Σ log((β−1)(1−λ)/λ), I_y = I_x − ½Σ log(β(1−λ))."""
    active = lambdas[beta * (1.0 - lambdas) > 1.0]
    ix = 0.5 * float(np.sum(np.log((beta - 1.0) * (1.0 - active) / active)))
    return ix, ix - 0.5 * float(np.sum(np.log(beta * (1.0 - active))))


def curve_relevance(lambdas: np.ndarray, info_x: float) -> float:
    """I_y on the closed-form curve at I_x = info_x (dense β grid + interpolation)."""
    betas = np.geomspace(1.0 / (1.0 - lambdas.min()), 1e7, 200_000)
    pts = np.array([chechik_curve(lambdas, b) for b in betas[::10]])
    return float(np.interp(info_x, pts[:, 0], pts[:, 1]))


def whitened_canonical_correlations(cov_x, cov_xy, cov_y) -> np.ndarray:
    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w**-0.5) @ v.T

    m = inv_sqrt(np.asarray(cov_x)) @ np.asarray(cov_xy) @ inv_sqrt(np.asarray(cov_y))
    return np.sort(np.linalg.svd(m, compute_uv=False))


# ---------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------


def test_problem_has_the_requested_canonical_correlations() -> None:
    rho = (0.9, 0.6, 0.3)
    problem = fdn.make_gaussian_problem(rho, 2, torch.Generator().manual_seed(3))
    got = whitened_canonical_correlations(problem.cov_x, problem.cov_xy, problem.cov_y)
    np.testing.assert_allclose(got, sorted(rho), atol=1e-10)
    assert problem.mutual_information == pytest.approx(-0.5 * sum(math.log1p(-r * r) for r in rho))
    # the sampler draws from that covariance (Monte Carlo, 4 standard errors)
    x, y = problem.sample(200_000, torch.Generator().manual_seed(4))
    emp = torch.cov(torch.cat([x, y], 1).T)
    full = torch.cat([torch.cat([problem.cov_x, problem.cov_xy], 1),
                      torch.cat([problem.cov_xy.T, problem.cov_y], 1)], 0)
    se = torch.sqrt((full**2 + torch.outer(full.diagonal(), full.diagonal())) / 200_000)
    assert bool(((emp - full).abs() < 4 * se + 1e-12).all())


def test_vib_terms_match_torch_distributions_and_monte_carlo() -> None:
    gen = torch.Generator().manual_seed(0)
    model = fdn.LinearGaussianVIB(4, 3, 4, init_scale=0.7, generator=gen)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    a = model.encoder.detach()
    def cholesky_factor(raw: torch.Tensor) -> torch.Tensor:
        raw = raw.detach()
        return torch.tril(raw, -1) + torch.diag(torch.diagonal(raw).exp())

    prec_r = cholesky_factor(model.marginal_precision_raw)
    prec_q = cholesky_factor(model.decoder_precision_raw)
    r = MultivariateNormal(model.marginal_mean.detach(), precision_matrix=prec_r.T @ prec_r)
    eye = torch.eye(4, dtype=torch.float64)
    want_rate = torch.stack([kl_divergence(MultivariateNormal(a @ xi, eye), r) for xi in x])
    torch.testing.assert_close(model.rate(x).detach(), want_rate)

    # E_ξ[-log q(y | A x + ξ)] by Monte Carlo with 40k draws of ξ per sample
    w, b = model.decoder_weight.detach(), model.decoder_bias.detach()
    xi = torch.randn(40_000, 4, generator=gen, dtype=torch.float64)
    for i in range(x.shape[0]):
        z = a @ x[i] + xi
        q = MultivariateNormal(z @ w.T + b, precision_matrix=prec_q.T @ prec_q)
        nll = -q.log_prob(y[i])
        got = float(model.distortion(x[i : i + 1], y[i : i + 1]).detach())
        assert got == pytest.approx(float(nll.mean()), abs=5 * float(nll.std()) / 40_000**0.5)


def test_population_terms_match_sample_averages() -> None:
    problem = fdn.make_gaussian_problem((0.8, 0.4), 1, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(6)
    model = fdn.LinearGaussianVIB(3, 2, 3, init_scale=0.8, generator=gen)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x, y = problem.sample(400_000, torch.Generator().manual_seed(7))
    with torch.no_grad():
        rate, distortion = model.population_terms(problem.cov_x, problem.cov_xy, problem.cov_y)
        r_s, d_s = model.rate(x), model.distortion(x, y)
    assert float(rate) == pytest.approx(float(r_s.mean()), abs=5 * float(r_s.std()) / 400_000**0.5)
    assert float(distortion) == pytest.approx(float(d_s.mean()),
                                              abs=5 * float(d_s.std()) / 400_000**0.5)


def test_optimal_critic_is_the_log_density_ratio() -> None:
    d, mi = 3, 2.5
    rho = fdn.rho_for_mi(mi, d)
    assert -0.5 * d * math.log(1 - rho**2) == pytest.approx(mi)
    x, y = fdn.correlated_gaussians(6, d, rho, torch.Generator().manual_seed(1), torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    joint = MultivariateNormal(
        torch.zeros(2 * d, dtype=torch.float64),
        torch.cat([torch.cat([eye, rho * eye], 1), torch.cat([rho * eye, eye], 1)], 0),
    )
    marginal = MultivariateNormal(torch.zeros(d, dtype=torch.float64), eye)
    want = torch.empty(6, 6, dtype=torch.float64)
    for i in range(6):
        for j in range(6):
            want[i, j] = (joint.log_prob(torch.cat([x[i], y[j]])) - marginal.log_prob(x[i])
                          - marginal.log_prob(y[j]))
    torch.testing.assert_close(fdn.gaussian_log_ratio_scores(x, y, rho), want)
    torch.testing.assert_close(fdn.optimal_critic_scores("nwj", x, y, rho), want + 1)
    with pytest.raises(UnknownNameError):
        fdn.mi_readout("mine", want)


def test_invalid_profile_raises_unknown_name_error(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="profile"):
        fdn.run("laptop", results_root=tmp_path / "results", progress=False)
    with pytest.raises(UnknownNameError, match="experiment"):
        fdn.run("smoke", results_root=tmp_path / "results", experiments=("bench",),
                progress=False)
    assert not (tmp_path / "results").exists()


def test_profiles_protocol() -> None:
    assert fdn.CHAPTER == "foundations"
    assert fdn.EXPERIMENTS == ("gaussian_vib", "estimator_bench")
    assert set(fdn.PROFILES) == {"smoke", "cpu", "paper"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        fdn.PROFILES["cpu"].vib_epochs = 1  # type: ignore[misc]
    with pytest.raises(InvalidParameterError):
        fdn.FoundationsConfig(canonical_correlations=(0.5, 1.0))


# ---------------------------------------------------------------------------------------------
# the smoke run, end to end
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("foundations") / "results"
    written = fdn.run("smoke", device="cpu", seed=0, results_root=root, progress=False)
    return root, written


def test_smoke_run_writes_both_result_files(smoke_run) -> None:
    root, written = smoke_run
    assert set(written) == set(fdn.EXPERIMENTS)
    for name in fdn.EXPERIMENTS:
        assert written[name] == root / "foundations" / name / "smoke-seed0.json"
        record = load_result(written[name])
        assert record.profile == "smoke" and record.seed == 0
        assert record.config["vib_betas"] == list(fdn.PROFILES["smoke"].vib_betas)
    vib = load_result(written["gaussian_vib"])
    assert {"I_xy", "critical_betas", "cov_x", "cov_xy", "cov_y", "analytic_curve", "final",
            "max_gap_I_zy", "max_lagrangian_gap"} <= set(vib.metrics)
    for row in (vib.history[0], vib.history[-1]):
        assert {"epoch", "beta", "I_zx", "I_zy", "rate_bound", "relevance_bound", "train_loss",
                "train_rate", "train_distortion"} <= set(row)
    bench = load_result(written["estimator_bench"])
    assert {"bounds", "knn_by_dim", "knn_by_size", "log_batch_size", "true_mi"} <= set(
        bench.metrics)
    kinds = {(r["bound"], r["critic"]) for r in bench.metrics["bounds"]}
    assert kinds == {(b, c) for b in (*fdn.BOUNDS, "jsd_objective")
                     for c in ("trained", "optimal")}
    # checkpoints sit beside the results root, never in the repository's runs/
    assert (root.parent / "runs" / "foundations" / "gaussian_vib" / "smoke-seed0").is_dir()
    json.dumps(vib.metrics, allow_nan=False)


def test_smoke_trajectories_end_on_the_analytic_curve(smoke_run) -> None:
    """For every trained β above the first critical value 1/(1−λ_1) = 1/ρ_1², the final
    (I(Z;X), I(Z;Y)) lies within 0.03 nats (vertically) of the closed-form IB curve, the encoder
    kept information (I(Z;X) > 0.2 nats), and its point improved on the start of training."""
    _, written = smoke_run
    record = load_result(written["gaussian_vib"])
    rho = np.array(record.config["canonical_correlations"])
    lambdas = 1.0 - rho**2
    first_critical = 1.0 / (1.0 - lambdas.min())
    np.testing.assert_allclose(sorted(record.metrics["critical_betas"]), np.sort(1 / rho**2),
                               rtol=1e-8)
    betas = [b for b in record.config["vib_betas"] if b > first_critical]
    assert betas, "the smoke profile must train at least one β above the first critical value"
    for beta in betas:
        rows = [r for r in record.history if r["beta"] == beta]
        start, end = rows[0], rows[-1]
        assert start["epoch"] == 0 and end["epoch"] == record.config["vib_epochs"]
        assert end["I_zx"] > 0.2
        on_curve = curve_relevance(lambdas, end["I_zx"])
        assert end["I_zy"] <= on_curve + 1e-6  # no representation beats the IB curve
        assert on_curve - end["I_zy"] < 0.03, (beta, end, on_curve)
        assert (end["I_zx"] - beta * end["I_zy"]) < (start["I_zx"] - beta * start["I_zy"])
        # the population VIB bounds sandwich the exact values (their gaps are KL divergences)
        for row in rows:
            assert row["rate_bound"] >= row["I_zx"] - 1e-9
            assert row["relevance_bound"] <= row["I_zy"] + 1e-9
        final = next(f for f in record.metrics["final"] if f["beta"] == beta)
        assert final["I_zy_on_curve"] == pytest.approx(on_curve, abs=1e-3)


def test_smoke_estimator_bench_respects_known_limits(smoke_run) -> None:
    _, written = smoke_run
    m = load_result(written["estimator_bench"]).metrics
    log_n = math.log(fdn.PROFILES["smoke"].bound_batch_size)
    assert m["log_batch_size"] == pytest.approx(log_n)
    for row in m["bounds"]:
        if row["bound"] == "infonce":
            assert row["mean"] <= log_n + 1e-9  # InfoNCE can never exceed log N
        if row["bound"] == "jsd_objective":  # log σ(T) + log(1 − σ(T')) ≤ 0 for any critic
            assert row["mean"] <= 0.0
            if row["critic"] == "optimal":  # sup = 2·JSD − log 4 ≥ −log 4
                assert row["mean"] >= -math.log(4) - 0.05
    for row in m["knn_by_dim"]:
        assert row["true_entropy"] == pytest.approx(0.5 * row["dim"] * math.log(2 * math.pi * math.e))
    low = next(r for r in m["knn_by_dim"] if r["dim"] == 1)
    assert abs(low["bias"]) < 0.3  # in one dimension the kNN estimator is accurate

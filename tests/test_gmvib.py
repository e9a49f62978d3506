"""GMVIB chapter: Multi-MNIST generator, models, objectives, label-set metrics and the runner."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from pathlib import Path

import pytest
import torch
from torch.distributions import Dirichlet, Normal, kl_divergence

from ibcore.data import multimnist as mm
from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.metrics import exact_set_accuracy, per_label_accuracy, top_m_prediction
from ibcore.models.gmvib import BottleneckClassifier, mix_components
from ibcore.objectives.gmvib import (
    basic_objective,
    bottleneck_objective,
    gmvib_objective,
    multilabel_nll,
    vib_objective,
)
from ibcore.runners import gmvib as runner
from ibcore.training import Trainer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- generator


def _fake_items(n_per_class: int, base: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Constant 28×28 items whose pixel value encodes the class: ``base + class``."""
    labels = torch.arange(10).repeat_interleave(n_per_class)
    images = (base + labels).to(torch.uint8)[:, None, None, None].expand(-1, 1, 28, 28)
    return images.contiguous(), labels


def test_compose_is_deterministic_distinct_and_places_the_right_items() -> None:
    images, labels = _fake_items(5, 1)
    a = mm.compose_multi(images, labels, 200, 2, torch.Generator().manual_seed(3))
    b = mm.compose_multi(images, labels, 200, 2, torch.Generator().manual_seed(3))
    c = mm.compose_multi(images, labels, 200, 2, torch.Generator().manual_seed(4))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    x, sets, src = a
    assert x.shape == (200, 1, 64, 64) and x.dtype == torch.uint8
    assert all(len(set(r)) == 2 for r in sets.tolist())  # distinct labels
    assert torch.equal(labels[src], sets)  # each item is of its label's class
    # two items never overlap: exactly 2 · 28² lit pixels, one value per item
    assert torch.equal((x > 0).sum((1, 2, 3)), torch.full((200,), 2 * 28 * 28))
    for i in range(20):
        vals = sorted(set(x[i].unique().tolist()) - {0})
        assert vals == sorted(1 + s for s in sets[i].tolist())
        # left-to-right order: the left half holds the first label
        left = x[i, 0, :, :32]
        assert set(left.unique().tolist()) - {0} == {1 + int(sets[i, 0])}
    # label pairs are uniform over the 45: 2000 draws, each pair within ±4 sd of 2000/45
    big = mm.compose_multi(images, labels, 2000, 2, torch.Generator().manual_seed(0))[1]
    pairs = [tuple(sorted(r)) for r in big.tolist()]
    counts = [pairs.count(p) for p in set(pairs)]
    assert len(counts) == math.comb(10, 2) and 18 <= min(counts) and max(counts) <= 71
    # multi-hot targets have two ones
    assert torch.equal(mm.multi_hot(sets).sum(1), torch.full((200,), 2.0))


def test_load_multi_uses_split_sources_only_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []

    def fake_load(name: str, split: str, root=None):  # noqa: ANN001, ANN202
        calls.append((name, split))
        return _fake_items(3, 1 if split == "train" else 101)

    monkeypatch.setattr(mm, "load_tensors", fake_load)
    tr, tr_s = mm.load_multi("triple_fashion", "train", 50, seed=1, cache_dir=tmp_path)
    te, te_s = mm.load_multi("triple_fashion", "test", 50, seed=1, cache_dir=tmp_path)
    assert calls == [("fashion_mnist", "train"), ("fashion_mnist", "test")]
    # no test-split pixel in a train image and vice versa (values 1..10 vs 101..110)
    assert int(tr.max()) <= 10 and set(te.unique().tolist()) - {0} <= set(range(101, 111))
    assert tr_s.shape == (50, 3) and all(len(set(r)) == 3 for r in tr_s.tolist())
    # the second call reads the cache (no new load) and returns the same tensors
    again, again_s = mm.load_multi("triple_fashion", "train", 50, seed=1, cache_dir=tmp_path)
    assert len(calls) == 2 and torch.equal(again, tr) and torch.equal(again_s, tr_s)
    other, _ = mm.load_multi("triple_fashion", "train", 50, seed=2, cache_dir=tmp_path)
    assert not torch.equal(other, tr)


def test_validation_split_holds_out_training_items(monkeypatch: pytest.MonkeyPatch) -> None:
    # 600 training items whose 'image' is their index: the pool says which items a split used
    labels = torch.arange(10).repeat(60)
    values = torch.arange(600)
    monkeypatch.setattr(mm, "load_tensors", lambda name, split, root=None: (
        values.to(torch.int64), labels))

    def fake_compose(items, labs, n, m, gen, **kw):  # noqa: ANN001, ANN202, ARG001
        # record which training items each split may draw from
        pools.append(set(items.tolist()))
        return torch.zeros(n, 1, 64, 64, dtype=torch.uint8), torch.zeros(n, m), None

    pools: list[set[int]] = []
    monkeypatch.setattr(mm, "compose_multi", fake_compose)
    mm.load_multi("double_mnist", "train", 5, seed=0, cache_dir=None)
    mm.load_multi("double_mnist", "val", 5, seed=0, cache_dir=None)
    mm.load_multi("single_fashion", "val", 5, seed=3, cache_dir=None)
    train, val, val_other = pools
    assert len(val) == 100 and len(train) == 500 and not train & val  # a sixth, disjoint
    assert val == val_other  # the same items for every seed and dataset of a source
    assert torch.equal(mm.validation_items(600), mm.validation_items(600))
    assert len(mm.validation_items(60_000)) == mm.VAL_ITEMS


def test_generator_bad_inputs() -> None:
    images, labels = _fake_items(2, 1)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ShapeError, match="28"):
        mm.compose_multi(images[:, :, :20], labels, 5, 2, g)
    with pytest.raises(InvalidParameterError):
        mm.compose_multi(images, labels, 5, 11, g)
    with pytest.raises(InvalidParameterError, match="class 9"):
        mm.compose_multi(images[labels < 9], labels[labels < 9], 5, 2, g)
    with pytest.raises(UnknownNameError):
        mm.load_multi("quadruple_mnist", "train", 5, seed=0, cache_dir=None)
    with pytest.raises(UnknownNameError, match="split"):
        mm.load_multi("double_mnist", "validation", 5, seed=0, cache_dir=None)
    assert mm.label_entropy_nats(3) == pytest.approx(math.log(120))


# --------------------------------------------------------------------------- objectives


def _gauss_params(b: int, k: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(b, k, d, generator=g, dtype=torch.float64)
    logvar = 0.5 * torch.randn(b, k, d, generator=g, dtype=torch.float64)
    return mu, logvar


def test_multilabel_nll_matches_hand_computation() -> None:
    logits = torch.tensor([[[2.0, -1.0, 0.5]], [[0.0, 1.0, -2.0]]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731

    def nll(row: list[float]) -> float:
        return -sum(math.log(sig(v)) if t else math.log(1 - sig(v))
                    for v, t in zip(row, [1, 0, 1], strict=True))

    want = 0.5 * (nll([2.0, -1.0, 0.5]) + nll([0.0, 1.0, -2.0]))
    assert float(multilabel_nll(logits, y)[0]) == pytest.approx(want, rel=1e-12)
    assert float(basic_objective(logits, y)["loss"]) == pytest.approx(want, rel=1e-12)


def test_gmvib_rate_against_torch_distributions() -> None:
    mu, logvar = _gauss_params(4, 3, 5)
    alpha = torch.tensor([[0.5, 2.0, 1.5], [1.0, 1.0, 1.0], [3.0, 0.2, 0.7],
                          [5.0, 4.0, 0.1]], dtype=torch.float64)
    logits = torch.zeros(2, 4, 10, dtype=torch.float64)
    y = torch.zeros(4, 10, dtype=torch.float64)
    y[:, :2] = 1
    beta, prior = 0.3, 0.8
    t = gmvib_objective(logits, y, mu, logvar, alpha, beta, prior)
    gauss = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum((1, 2))
    dirich = kl_divergence(Dirichlet(alpha), Dirichlet(torch.full((3,), prior, dtype=alpha.dtype)))
    assert float(t["rate_gauss"]) == pytest.approx(float(gauss.mean()), rel=1e-10)
    assert float(t["rate_dirichlet"]) == pytest.approx(float(dirich.mean()), rel=1e-8)
    ce = 10 * math.log(2.0)  # every logit 0: each class costs log 2
    assert float(t["ce"]) == pytest.approx(ce, rel=1e-12)
    # signs: loss = ce + β (Σ KL_k + KL_Dir)
    assert float(t["loss"]) == pytest.approx(ce + beta * float((gauss + dirich).mean()), rel=1e-9)


def test_k1_fixed_weight_gmvib_equals_vib() -> None:
    mu, logvar = _gauss_params(6, 1, 4)
    logits = torch.randn(3, 6, 10, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    y = torch.zeros(6, 10, dtype=torch.float64)
    y[:, [1, 7]] = 1
    alpha = torch.full((6, 1), 2.5, dtype=torch.float64)
    g = gmvib_objective(logits, y, mu, logvar, alpha, 1e-2)
    v = vib_objective(logits, y, mu[:, 0], logvar[:, 0], 1e-2)
    for key in ("loss", "ce", "rate"):
        assert float(g[key]) == pytest.approx(float(v[key]), rel=1e-12)
    # the models: GMVIB with K = 1 has e ≡ 1 and, with VIB's weights, the same latents
    gen = torch.Generator().manual_seed(0)
    vib = BottleneckClassifier("vib", 16, latent_dim=4, hidden=(8,), generator=gen)
    gm = BottleneckClassifier("gmvib", 16, latent_dim=4, components=1, hidden=(8,))
    with torch.no_grad():
        gm.trunk.load_state_dict(vib.trunk.state_dict())
        gm.decoder.load_state_dict(vib.decoder.state_dict())
        gm.head.weight[:8] = vib.head.weight
        gm.head.bias[:8] = vib.head.bias
    x = torch.rand(5, 16, generator=gen)
    torch.manual_seed(5)
    ov = vib(x, samples=3)
    torch.manual_seed(5)
    og = gm(x, samples=3)
    assert og.e is not None and torch.allclose(og.e, torch.ones_like(og.e))
    assert torch.allclose(og.z, ov.z, atol=1e-6)
    tgt = torch.zeros(5, 10)
    tgt[:, :2] = 1
    lv = bottleneck_objective("vib", ov, tgt, 1e-3)["loss"]
    lg = bottleneck_objective("gmvib", og, tgt, 1e-3)["loss"]
    assert float(lg.detach()) == pytest.approx(float(lv.detach()), rel=1e-5)


def test_mixture_is_weighted_sum_and_gradients_reach_alpha() -> None:
    z_k = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    e = torch.tensor([[[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]])
    z = mix_components(z_k, e)
    assert torch.allclose(z[0, 0], 0.2 * z_k[0, 0, 0] + 0.3 * z_k[0, 0, 1] + 0.5 * z_k[0, 0, 2])
    assert torch.equal(z[0, 1], z_k[0, 1, 0])
    model = BottleneckClassifier("gmvib", 16, latent_dim=4, components=3, hidden=(8,),
                                 generator=torch.Generator().manual_seed(0))
    out = model(torch.rand(4, 16), samples=2)
    assert out.logits.shape == (2, 4, 10) and out.e is not None and out.alpha is not None
    assert torch.allclose(out.e.sum(-1), torch.ones(2, 4))
    alpha = out.alpha
    alpha.retain_grad()
    out.z.pow(2).sum().backward()  # implicit reparameterisation: d z / d α exists
    assert alpha.grad is not None and float(alpha.grad.abs().sum()) > 0


def test_bad_inputs_raise_typed_errors() -> None:
    mu, logvar = _gauss_params(2, 1, 3)
    logits, y = torch.zeros(2, 10, dtype=torch.float64), torch.zeros(2, 10, dtype=torch.float64)
    y[:, 0] = 1
    with pytest.raises(InvalidParameterError, match="beta"):
        vib_objective(logits, y, mu, logvar, -1e-3)
    with pytest.raises(InvalidParameterError, match="beta"):
        gmvib_objective(logits, y, mu, logvar, torch.ones(2, 1, dtype=torch.float64), -1.0)
    with pytest.raises(InvalidParameterError, match="K"):
        BottleneckClassifier("gmvib", 4096, components=0)
    model = BottleneckClassifier("vib", 4096, latent_dim=4, hidden=(8,))
    with pytest.raises(ShapeError, match="64×64"):
        model(torch.rand(2, 1, 28, 28))
    with pytest.raises(UnknownNameError):
        BottleneckClassifier("vae", 4096)
    with pytest.raises(InvalidParameterError, match="multi-hot"):
        multilabel_nll(logits, y * 0.5)
    with pytest.raises(ShapeError):
        multilabel_nll(logits[:, :5], y)
    with pytest.raises(InvalidParameterError):
        dataclasses.replace(runner.PROFILES["smoke"], beta=-0.1)
    with pytest.raises(UnknownNameError):
        dataclasses.replace(runner.PROFILES["smoke"], datasets=("mnist",))


# --------------------------------------------------------------------------- metrics


def test_label_set_accuracies_on_hand_made_predictions() -> None:
    y = torch.zeros(4, 5)
    y[0, [0, 1]] = 1
    y[1, [2, 3]] = 1
    y[2, [0, 4]] = 1
    y[3, [1, 2, 3]] = 1
    s = torch.tensor([[0.9, 0.8, 0.1, 0.0, 0.0],   # exact
                      [0.9, 0.1, 0.8, 0.0, 0.0],   # one of two right
                      [0.1, 0.2, 0.3, 0.4, 0.5],   # one of two right (4 yes, 0 no)
                      [0.0, 0.7, 0.6, 0.5, 0.9]])  # top-3 = {4, 1, 2}: two of three
    assert exact_set_accuracy(s, y) == pytest.approx(1 / 4)
    assert per_label_accuracy(s, y) == pytest.approx((2 + 1 + 1 + 2) / 9)
    assert torch.equal(top_m_prediction(s[:1], 2), y[:1])
    # ties: stable sort keeps the lower class index
    assert torch.equal(top_m_prediction(torch.zeros(1, 3), 1), torch.tensor([[1.0, 0, 0]]))
    with pytest.raises(InvalidParameterError):
        exact_set_accuracy(s, torch.zeros(4, 5))
    with pytest.raises(ShapeError):
        exact_set_accuracy(s, y[:, :3])


# --------------------------------------------------------------------------- runner


@pytest.fixture
def mnist_data(monkeypatch: pytest.MonkeyPatch) -> None:
    if "IBCORE_DATA" not in os.environ:
        if not (SHARED_DATA / "MNIST").is_dir():
            pytest.skip("MNIST is not available offline here")
        monkeypatch.setenv("IBCORE_DATA", str(SHARED_DATA))


def test_profiles_follow_the_source() -> None:
    assert set(runner.PROFILES) == {"smoke", "cpu", "paper"}
    for name in ("cpu", "paper"):
        cfg = runner.PROFILES[name]
        assert (cfg.latent_dim, cfg.components, cfg.train_samples, cfg.beta) == (256, 10, 12, 1e-3)
        assert cfg.beta_grid == (1e-4, 1e-3, 1e-2) and cfg.replicates >= 3
        assert set(cfg.datasets) == set(mm.MULTI_DATASETS)
        assert "gmvib" in cfg.beta_kinds and cfg.item_datasets == ("single_fashion",)
        # the trunk: four pooled convolutions (position-invariant) and one 256-unit layer
        assert cfg.conv_channels == (32, 64, 128, 128) and cfg.pool == "max"
        assert cfg.hidden == (256,)
    paper = runner.PROFILES["paper"]
    assert paper.epochs == 50 and paper.lr == 1e-4 and paper.schedule_kind == "constant"
    assert paper.train_size + paper.val_size == 4 * paper.test_size  # 80/20
    cpu = runner.PROFILES["cpu"]
    assert cpu.schedule_kind == "one_cycle" and cpu.schedule.final_lr_fraction < 0.01


def test_smoke_run_writes_results_and_resume_skips(
    tmp_path: Path, mnist_data: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "results"
    t0 = time.perf_counter()
    out = runner.run("smoke", device="cpu", results_root=root, progress=False)
    assert time.perf_counter() - t0 < 60
    assert set(out) == set(runner.EXPERIMENTS)
    cache = list((tmp_path / "runs" / "cache" / "multimnist").glob("*.pt"))
    assert len(cache) == 15  # 4 datasets + 1 one-item set, × 3 splits, outside both roots
    t1 = json.loads(out["table1"].read_text())
    cfg = runner.PROFILES["smoke"]
    m = t1["metrics"]
    assert len(m["models"]) == len(cfg.datasets) * 3 * cfg.replicates
    for row in m["models"]:
        assert 0 <= row["test_exact_set_accuracy"] <= row["test_per_label_accuracy"] <= 1
        assert 0 <= row["val_exact_set_accuracy"] <= 1
        assert ("test_I_zx_upper_nats" in row) == (row["kind"] != "basic")
    # replicate-paired differences, in points, per dataset
    d = m["comparison"]["double_fashion"]["test_gmvib_minus_vib_points"]
    rows = {(r["kind"], r["replicate"]): r for r in m["models"] if r["dataset"] == "double_fashion"}
    assert d["differences"] == pytest.approx([
        100 * (rows[("gmvib", i)]["test_exact_set_accuracy"]
               - rows[("vib", i)]["test_exact_set_accuracy"]) for i in range(cfg.replicates)])
    assert d["verdict"] in ("supported", "contradicted", "undecided") and "interval_95" in d
    conv = m["convergence"]
    assert set(conv["last_epoch_change"]) == {r["key"] for r in m["models"]}
    assert conv["met"] == (conv["mean_abs_last_epoch_change"] < conv["threshold"])
    assert m["bars"]["converged"] == conv["met"]
    s = m["summary"]["triple_mnist"]["gmvib"]["test_exact_set_accuracy"]
    assert s["n"] == cfg.replicates and s["std"] >= 0
    assert m["chance_exact_set_accuracy"]["triple_mnist"] == pytest.approx(1 / 120)
    assert m["H_y_nats"]["double_fashion"] == pytest.approx(math.log(45))
    hist = [h for h in t1["history"] if h["model"] == "double_mnist-gmvib-b0.001-r0"]
    assert [h["epoch"] for h in hist] == list(range(cfg.epochs + 1))
    # per-epoch numbers are measured on validation only; the schedule decays
    assert {"val_I_zx_upper_nats", "val_I_zy_lower_nats", "val_rate_nats"} <= set(hist[-1])
    assert not any(k.startswith("test_") for h in hist for k in h)
    assert hist[-1]["val_I_zy_lower_nats"] == pytest.approx(
        math.log(45) - hist[-1]["val_ce_nats"])
    assert hist[-1]["lr_end"] < 0.01 * cfg.lr
    items = json.loads(out["items"].read_text())["metrics"]
    assert items["per_item_accuracy"]["single_fashion"]["n"] == cfg.replicates
    beta = json.loads(out["beta"].read_text())["metrics"]
    assert set(beta["best_beta"]) == set(cfg.datasets)
    assert all(b in cfg.beta_grid for v in beta["best_beta"].values() for b in v.values())
    for key, r in beta["rate_direction"].items():
        assert r["falls"] == (r["last_epoch"] < r["first_epoch"]) and "-gmvib-" in key
    assert {(r["kind"], r["beta"]) for r in beta["settings"]} == {
        (k, b) for k in cfg.beta_kinds for b in cfg.beta_grid}
    gm = next(r for r in beta["settings"] if r["kind"] == "gmvib" and r["beta"] == cfg.beta)
    e = torch.tensor(gm["weights"]["e_mean"])
    assert e.shape == (cfg.weights_shown, cfg.components)
    assert torch.allclose(e.sum(1), torch.ones(cfg.weights_shown), atol=1e-5)
    assert len(gm["projection"]["coords"]) == cfg.projection_points
    # the shared model (β of Table 1, replicate 0) is the same in both files
    row1 = next(r for r in m["models"] if r["key"] == gm["key"])
    assert row1["test_exact_set_accuracy"] == gm["test_exact_set_accuracy"]

    # --resume skips every finished model and reproduces the metrics exactly
    def no_training(self, resume=False):  # noqa: ANN001, ANN202
        raise AssertionError("a finished model was trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    again = runner.run("smoke", device="cpu", results_root=root, progress=False, resume=True)
    assert json.loads(again["table1"].read_text())["metrics"] == m


def test_paper_profile_code_path_at_tiny_scale(
    tmp_path: Path, mnist_data: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    paper = runner.PROFILES["paper"]
    tiny = dataclasses.replace(paper, datasets=("triple_fashion",), train_size=200,
                               val_size=50, test_size=50, epochs=2, replicates=1,
                               hidden=(32,), latent_dim=8, projection_points=20,
                               conv_channels=(4, 8, 8, 8), checkpoint_every_steps=1)
    assert (tiny.components, tiny.train_samples, tiny.lr) == (10, 12, paper.lr)
    assert tiny.conv_strides == paper.conv_strides and tiny.pool == paper.pool
    monkeypatch.setitem(runner.PROFILES, "paper", tiny)
    out = runner.run("paper", device="cpu", results_root=tmp_path / "results", progress=False)
    rec = json.loads(out["beta"].read_text())
    assert rec["provenance"]["profile"] == "paper"
    assert "triple_fashion_gmvib_1e-2_visibly_worse" in rec["metrics"]["bars"]
    folder = tmp_path / "runs" / "gmvib" / "table1" / "paper-seed0"
    assert list(folder.glob("*.pt")) == []  # finished models keep only their eval files
    assert len(list(folder.glob("*.eval.json"))) == 3
    assert json.loads(out["items"].read_text())["metrics"]["models"][0]["epochs"] == 2


def test_source_numbers_file() -> None:
    src = json.loads((ROOT / "book" / "gmvib.source.json").read_text())
    text = (ROOT.parent / "shared" / "papers" / "gmvib.md").read_text() if (
        ROOT.parent / "shared" / "papers" / "gmvib.md").exists() else None
    t1 = src["tables"]["table1"]["rows"]
    assert [r["model"] for r in t1] == ["Basic", "VIB", "GMVIB"]
    t2 = src["tables"]["table2"]["rows"]
    assert [r["beta"] for r in t2] == [1e-4, 1e-3, 1e-2]
    for r in t1:
        assert set(r["mean"]) == set(mm.MULTI_DATASETS)
    if text is not None:  # every number in the file is printed in the source
        printed = set(re.findall(r"0\.\d{4}", text))
        for r in t1:
            assert {f"{v:.4f}" for v in r["mean"].values()} <= printed
        for r in t2:
            assert {f"{v:.4f}" for v in r["accuracy"].values()} <= printed


def test_conv_trunk_shapes_and_bad_image_size() -> None:
    gen = torch.Generator().manual_seed(0)
    model = BottleneckClassifier("gmvib", 64 * 64, latent_dim=4, components=3, hidden=(8,),
                                 conv_channels=(2, 3), generator=gen)
    out = model(torch.rand(5, 1, 64, 64), samples=2)
    assert out.logits.shape == (2, 5, 10) and out.e.shape == (2, 5, 3)
    # the convolutions see the image: flattening the input first gives the same code
    model.eval()
    flat = model.encode(torch.ones(2, 64 * 64))["mu"]
    assert torch.equal(flat, model.encode(torch.ones(2, 1, 64, 64))["mu"])
    with pytest.raises(InvalidParameterError, match="divisible"):
        BottleneckClassifier("vib", 60 * 60, conv_channels=(2, 3, 4, 5))
    with pytest.raises(InvalidParameterError, match="square"):
        BottleneckClassifier("vib", 4000, conv_channels=(2,))
    with pytest.raises(InvalidParameterError, match="one stride per"):
        BottleneckClassifier("vib", 64 * 64, conv_channels=(2, 3), conv_strides=(2,))
    with pytest.raises(UnknownNameError, match="pool"):
        BottleneckClassifier("vib", 64 * 64, conv_channels=(2,), pool="mean")


def test_beta_warm_up_holds_then_rises() -> None:
    betas = [runner.beta_at(t, 20, 1e-3, 0.25) for t in range(20)]
    assert betas[:5] == [0.0] * 5  # W = 5 steps at β = 0
    assert betas[5:10] == pytest.approx([1e-3 * k / 5 for k in range(1, 6)])  # linear rise
    assert betas[9:] == [1e-3] * 11
    assert [runner.beta_at(t, 20, 1e-3, 0.0) for t in range(20)] == [1e-3] * 20


def test_pooled_trunk_is_position_invariant() -> None:
    """With global max-pooling, an item moved by a multiple of the total stride (8) gives the
    same code, as long as it stays further from the border than the receptive field's radius
    (15 pixels; a 128-pixel canvas leaves room for that)."""
    gen = torch.Generator().manual_seed(0)
    model = BottleneckClassifier("basic", 128 * 128, latent_dim=4, hidden=(8,),
                                 conv_channels=(3, 5, 6, 6), conv_strides=(2, 2, 2, 1),
                                 pool="max", generator=gen).eval()
    item = torch.rand(28, 28, generator=gen)
    a, b = torch.zeros(1, 1, 128, 128), torch.zeros(1, 1, 128, 128)
    a[0, 0, 24:52, 24:52] = item
    b[0, 0, 72:100, 48:76] = item  # moved by (48, 24) pixels
    assert torch.allclose(model.encode(a)["z"], model.encode(b)["z"], atol=1e-5)
    flat = BottleneckClassifier("basic", 128 * 128, latent_dim=4, hidden=(8,),
                                conv_channels=(3, 5), generator=gen).eval()
    assert not torch.allclose(flat.encode(a)["z"], flat.encode(b)["z"], atol=1e-3)

"""Tests of the NC-VAE chapter: GDN, the model's objective, image data, the runner, model store."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import norm

from ibcore.data.images import CropSource, image_folder, list_images, load_image, random_crops
from ibcore.errors import (
    CheckpointError,
    DataNotFoundError,
    InvalidParameterError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)
from ibcore.models.gdn import GDN, IGDN
from ibcore.models.ncvae import NCVAE, NCVAEArch, load_model_file, save_model_file, state_digest
from ibcore.runners import ncvae as runner

DATA = "/work/shared/data"


# --------------------------------------------------------------------------- GDN
def test_gdn_at_init_is_the_closed_form_and_invertible():
    gdn, igdn = GDN(5), IGDN(5)
    x = torch.linspace(-4, 4, 5 * 3 * 7).reshape(1, 5, 3, 7)
    u = gdn(x)
    # at init β = 1, γ = 0.1·I: each channel is normalised by itself only
    assert torch.allclose(u, x / torch.sqrt(1 + 0.1 * x**2), atol=1e-6)
    # the exact inverse of that map recovers x
    assert torch.allclose(u / torch.sqrt(1 - 0.1 * u**2), x, atol=1e-4)
    # IGDN is the first-order inverse: IGDN(GDN(x)) = x·sqrt(1 + 2a)/(1 + a), a = 0.1 x²
    a = 0.1 * x**2
    assert torch.allclose(igdn(u), x * torch.sqrt(1 + 2 * a) / (1 + a), atol=1e-5)
    small = 0.05 * x
    assert torch.allclose(igdn(gdn(small)), small, atol=1e-5)


def test_gdn_parameters_stay_valid_and_mix_channels():
    gdn = GDN(3)
    with torch.no_grad():
        gdn.gamma_param.fill_(-0.5)  # a raw value below the bound
        gdn.beta_param.fill_(-1.0)
    assert (gdn.gamma >= 0).all() and (gdn.beta >= gdn.beta_min * 0.999).all()
    gdn = GDN(2)
    with torch.no_grad():
        gdn.gamma_param.copy_(torch.sqrt(torch.tensor([[0.0, 1.0], [0.0, 0.0]]) + 2.0**-36))
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    y = gdn(x).detach().flatten()
    assert y[0] == pytest.approx(3 / math.sqrt(1 + 16), rel=1e-5)  # channel 0 divided by x_1²
    assert y[1] == pytest.approx(4.0, rel=1e-5)
    with pytest.raises(ShapeError):
        gdn(torch.zeros(1, 3, 2, 2))


# --------------------------------------------------------------------------- model objective
def _tiny(latent: int = 6) -> NCVAE:
    torch.manual_seed(0)
    return NCVAE(NCVAEArch(channels=8, latent=latent, hyper=4))


def test_rounded_rate_and_distortion_match_independent_computation():
    model = _tiny().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 72, generator=gen)
    with torch.no_grad():
        out = model(x, quantize="round")
        xp = torch.nn.functional.pad(x, (0, 24, 0, 24), mode="replicate")
        y, h = model.analyse(xp)
        mean, scale = model.prior(torch.round(h))
    yn, mn, sn = (t.double().numpy() for t in (torch.round(y), mean, scale))
    p = norm.cdf((yn + 0.5 - mn) / sn) - norm.cdf((yn - 0.5 - mn) / sn)
    assert float(out["bits_main"]) == pytest.approx(float(-np.log2(np.maximum(p, 1e-9)).sum()),
                                                    rel=1e-4)
    assert float(out["pixels"]) == 2 * 40 * 72
    assert out["x_hat"].shape == x.shape


def test_loss_is_distortion_plus_rate_weight_times_bpp():
    model = _tiny()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model.loss(x, 0.0, generator=torch.Generator().manual_seed(5))
        b = model.loss(x, 250.0, generator=torch.Generator().manual_seed(5))
    assert float(a["loss"]) == pytest.approx(float(a["distortion"]), rel=1e-6)
    assert float(b["loss"] - a["loss"]) == pytest.approx(250.0 * float(b["bpp"]), rel=1e-4)
    assert float(b["bpp"]) == pytest.approx(float(b["bpp_main"] + b["bpp_side"]), rel=1e-6)
    assert float(b["bpp"]) > 0
    # D is the 8-bit-scale MSE of the reconstruction drawn with the same noise
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(5))
    mse = float(torch.mean((out["x_hat"] - x) ** 2))
    assert float(b["distortion"]) == pytest.approx(255**2 * mse, rel=1e-5)
    # input noise changes the encoder's input, not the target: D grows with very strong noise
    with torch.no_grad():
        noisy = model.loss(x, 0.0, noise_std=5.0, generator=torch.Generator().manual_seed(5))
    assert float(noisy["distortion"]) != pytest.approx(float(a["distortion"]))


def test_model_bad_inputs():
    model = _tiny()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(InvalidParameterError):
        model.loss(x, -1.0)
    with pytest.raises(InvalidParameterError):
        model.loss(x, 1.0, noise_std=-0.1)
    with pytest.raises(ShapeError):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(InvalidParameterError):
        model((x * 255).to(torch.uint8))
    with pytest.raises(NonFiniteError):
        model(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(InvalidParameterError):
        model(x, quantize="floor")
    with pytest.raises(InvalidParameterError):
        NCVAEArch(scale_min=0.0)


def test_decoder_size_counts_only_decoder_parts():
    model = _tiny()
    expected = sum(p.numel() for m in (model.g_s, model.rdo, model.side_density)
                   for p in m.parameters())
    assert model.decoder_parameters() == expected < model.encoder_parameters()


# --------------------------------------------------------------------------- image data
def _coordinate_image(h: int, w: int, tag: int) -> torch.Tensor:
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    return torch.stack([rows % 256, cols % 256, torch.full((h, w), tag)]).to(torch.uint8)


def test_random_crops_are_windows_of_the_images_and_reproducible():
    images = [_coordinate_image(40, 60, 0), _coordinate_image(30, 200, 1)]
    crops = random_crops(images, 16, 64, torch.Generator().manual_seed(0))
    again = random_crops(images, 16, 64, torch.Generator().manual_seed(0))
    assert crops.shape == (64, 3, 16, 16) and torch.equal(crops, again)
    flips = 0
    for c in crops:
        tag = int(c[2, 0, 0])
        img = images[tag]
        top, left = int(c[0, 0, 0]), int(min(c[1, 0, 0], c[1, 0, -1]))
        window = img[:, top : top + 16, left : left + 16]
        flipped = not torch.equal(c, window)
        flips += flipped
        assert torch.equal(c, window.flip(-1) if flipped else window)
    assert 0 < flips < 64
    # the wide image holds 15x185 of the 40x45 + 15x185 positions: chosen proportionally
    share = float((crops[:, 2, 0, 0] == 1).float().mean())
    assert 0.4 < share < 0.95
    with pytest.raises(ShapeError):
        random_crops(images, 41, 1, torch.Generator())


def test_multi_scale_crops_are_windows_of_the_downscaled_levels_with_equal_shares(tmp_path):
    rng = np.random.default_rng(3)
    for name, (h, w) in {"a.png": (256, 320), "b.png": (200, 260), "val.png": (130, 140)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    src = CropSource(tmp_path, scales=(1.0, 0.5, 0.25), min_size=64, exclude=("val.png",))
    assert [p.name for p in src.paths] == ["a.png", "b.png"]
    # b at 0.25 is 50 x 65, below the 64-pixel minimum: dropped
    assert src.levels == [(0, 1.0), (0, 0.5), (0, 0.25), (1, 1.0), (1, 0.5)]
    assert src.sizes[1] == (128, 160) and src.sizes[2] == (64, 80)
    half = np.asarray(Image.open(tmp_path / "a.png").resize((160, 128), Image.Resampling.LANCZOS))
    assert torch.equal(src.images[1], torch.from_numpy(half.copy()).permute(2, 0, 1))
    assert src.patches_per_epoch(64) == 4 * 5 + 3 * 4  # full resolution only
    # a level is drawn with weight 1/s² · positions: scale 1 and scale ½ of a get similar shares
    plan = __import__("ibcore.data.images", fromlist=["_crop_plan"])._crop_plan(
        src.sizes, 32, 20000, torch.Generator().manual_seed(0), False, src.weights)
    counts = np.bincount([i for i, *_ in plan], minlength=len(src.sizes)) / 20000
    expected = np.array([(h - 31) * (w - 31) * wt for (h, w), wt in zip(src.sizes, src.weights,
                                                                           strict=True)])
    assert np.allclose(counts, expected / expected.sum(), atol=0.015)
    assert 1 < counts[0] / counts[1] < 1.5  # equal but for the crop-size border effect
    with pytest.raises(InvalidParameterError, match="in_memory"):
        CropSource(tmp_path, in_memory=False, scales=(1.0, 0.5))
    with pytest.raises(InvalidParameterError, match="start with 1.0"):
        CropSource(tmp_path, scales=(0.5,))


def test_missing_or_empty_folders_raise_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no"):
        list_images(tmp_path / "empty")
    (tmp_path / "empty" / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataNotFoundError, match="not a readable image"):
        load_image(tmp_path / "empty" / "junk.png")
    with pytest.raises(InvalidParameterError):
        image_folder("imagenet", tmp_path)


def _write_standin(folder, sizes):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        sub = folder / ("mobile" if i % 2 else "professional")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(sub / f"im{i}.png")


def test_clic_folder_of_the_paper_profile_on_a_standin(tmp_path):
    folder = image_folder("clic", tmp_path)
    assert folder == tmp_path / "clic" / "train"
    _write_standin(folder, [(520, 530), (600, 512), (512, 1100)])
    lazy = CropSource(folder, in_memory=False, recursive=True, workers=2)
    eager = CropSource(folder, in_memory=True, recursive=True)
    a = lazy.sample(512, 3, torch.Generator().manual_seed(4))
    b = eager.sample(512, 3, torch.Generator().manual_seed(4))
    assert a.shape == (3, 3, 512, 512) and torch.equal(a, b)
    assert lazy.patches_per_epoch(512) == 1 + 1 + 2
    cfg = runner.PROFILES["paper"]
    ctx = runner._Context("paper", cfg, torch.device("cpu"), 0, False, tmp_path / "results", False,
                          tmp_path)
    assert runner._steps_per_epoch(ctx) == math.ceil(4 / cfg.batch_size)
    assert ctx.source.sample(cfg.crop, 1, torch.Generator().manual_seed(0)).shape[-1] == 512


def test_lazy_and_eager_sources_agree_on_downscaled_jpegs(tmp_path):
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(900, 1301), (1000, 700)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    lazy = CropSource(tmp_path, in_memory=False, short_side=257)
    eager = CropSource(tmp_path, in_memory=True, short_side=257)
    assert lazy.sizes == eager.sizes == [(257, 372), (367, 257)]
    a = lazy.sample(257, 4, torch.Generator().manual_seed(2))
    assert torch.equal(a, eager.sample(257, 4, torch.Generator().manual_seed(2)))


def test_cached_source_decodes_each_image_once_and_gives_the_same_crops(tmp_path, monkeypatch):
    import ibcore.data.images as images

    folder = tmp_path / "imgs"
    _write_standin(folder, [(300, 310), (280, 400), (260, 260)])
    eager = CropSource(folder, in_memory=True, recursive=True)
    cached = CropSource(folder, in_memory=False, recursive=True, workers=2,
                        cache_dir=tmp_path / "cache")
    plain = CropSource(folder, in_memory=False, recursive=True, workers=2)
    decoded = []
    real_load = images.load_image
    monkeypatch.setattr(images, "load_image",
                        lambda p, **kw: decoded.append(p) or real_load(p, **kw))
    crops = [cached.sample(128, 5, torch.Generator().manual_seed(seed)) for seed in range(4)]
    assert len(decoded) == len(set(decoded)) == 3  # each image decoded once, on first use
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 3
    for seed, a in enumerate(crops):
        assert torch.equal(a, eager.sample(128, 5, torch.Generator().manual_seed(seed)))
        assert torch.equal(a, plain.sample(128, 5, torch.Generator().manual_seed(seed)))
    # a second source on the same cache decodes nothing
    decoded.clear()
    again = CropSource(folder, in_memory=False, recursive=True, cache_dir=tmp_path / "cache")
    assert torch.equal(again.sample(128, 5, torch.Generator().manual_seed(0)), crops[0])
    assert decoded == []
    # a damaged cache file is named, not read as an image
    np.save(files[0], np.zeros((3, 5, 5), dtype=np.uint8))
    idx = next(i for i in range(3) if again.cache_path(i) == files[0])
    with pytest.raises(DataNotFoundError, match="delete it"):
        again._decoded(idx)


def test_prefetched_batches_equal_direct_draws():
    calls = []

    def draw(step):
        calls.append(step)
        return torch.full((2,), float(step))

    pre = runner._Prefetcher(draw, enabled=True)
    try:
        got = [pre.get(s) for s in (0, 1, 2, 5, 6)]
    finally:
        pre.close()
    assert [float(g[0]) for g in got] == [0, 1, 2, 5, 6]
    # each step drawn once; 3 and 7 were prefetched (3 wasted by the jump to 5)
    assert len(calls) == len(set(calls)) and {0, 1, 2, 5, 6} <= set(calls) <= set(range(8))
    off = runner._Prefetcher(draw, enabled=False)
    calls.clear()
    assert float(off.get(4)[0]) == 4 and calls == [4]


def test_paper_profile_model_takes_one_step_on_a_tiny_batch():
    cfg = runner.PROFILES["paper"]
    assert (cfg.crop, cfg.batch_size, cfg.epochs, cfg.lr, cfg.lr_decay, cfg.lr_decay_every) == (
        512, 75, 64, 1e-4, 0.9, 2)
    torch.manual_seed(0)
    model = NCVAE(cfg.arch)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    terms = model.loss(x, cfg.rate_weights[0], noise_std=cfg.sweep_noise_std,
                       generator=torch.Generator().manual_seed(1))
    terms["loss"].backward()
    opt.step()
    assert math.isfinite(float(terms["loss"].detach()))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


# --------------------------------------------------------------------------- measurements
def test_psnr_at_interpolates_in_log_rate_without_extrapolating():
    bpps, psnrs = [0.1, 0.4], [30.0, 34.0]
    got = runner.psnr_at(bpps, psnrs, [0.05, 0.1, 0.2, 0.4, 0.5])
    assert got[0] is None and got[-1] is None
    assert got[1] == pytest.approx(30.0) and got[3] == pytest.approx(34.0)
    assert got[2] == pytest.approx(32.0)  # 0.2 is halfway between 0.1 and 0.4 in log rate


def test_gradient_energy_ratio_hand_computed():
    gen = torch.Generator().manual_seed(0)
    img = (torch.randint(0, 100, (3, 20, 30), generator=gen) * 2).to(torch.uint8)
    assert runner.gradient_energy_ratio(img // 2, img) == pytest.approx(0.25)
    assert runner.gradient_energy_ratio(torch.zeros_like(img), img) == 0.0


def _fake_metrics(gap: float, top_bpp: float = 0.64, small_bytes: int = 1500) -> dict:
    """Two test sets; our curve is JPEG's shifted up by ``gap`` dB, 4 dB per doubling of the rate
    from 0.08 bpp (0.16, 0.32 and ``top_bpp``), with one small file per set."""
    def point(bpp, psnr, gap_rel=0.004, nbytes=20_000):
        return {"images": {im: {"bpp": bpp, "psnr_db": psnr, "rate_rel_gap": gap_rel,
                                "bytes": nbytes, "header_bytes": 31, "encode_s": 0.3,
                                "decode_s": 0.4} for im in ("a", "b")}}
    rates = [0.08, 0.16, 0.32, top_bpp]
    psnr = [30.0 + 4 * math.log2(r / 0.08) for r in rates]
    models = {}
    for k, (r, q) in enumerate(zip(rates, psnr, strict=True)):
        small = k == 0
        sets = {label: point(r, q + gap, 0.03 if small else 0.004, small_bytes if small else 20_000)
                for label in ("kodak", "other")}
        models[f"m{k}"] = {"sets": sets}
    jpeg = [point(r, q) for r, q in zip(rates, psnr, strict=True)]
    sets = {"kodak": ["a", "b"], "other": ["a", "b"]}
    return {"test_sets": sets, "speed_set": "kodak", "models": models,
            "baselines": {label: {"jpeg": jpeg} for label in sets},
            "bd": {"kodak": {"jpeg2000": {"bd_rate_percent": -12.5}},
                   "other": {"jpeg2000": {"bd_rate_percent": 3.0}}}}


@pytest.mark.parametrize("gap,ok", [(3.0, True), (1.5, False)])
def test_check_bars_hand_computed(gap, ok):
    bars = runner.check_bars(_fake_metrics(gap))
    for label in ("kodak", "other"):
        jg = bars[label]["jpeg_gain"]
        assert jg["value"] == pytest.approx(gap) and jg["pass"] is ok
        assert all(v["range_covered"] for v in jg["per_image"].values())
        # 4 dB per doubling: 0.2 → 0.4 bpp gains exactly 4 dB
        assert bars[label]["high_rate_gain"]["value"] == pytest.approx(4.0)
        assert bars[label]["high_rate_gain"]["pass"]
    assert bars["kodak"]["bd_rate_vs_jpeg2000"]["pass"] is True
    assert bars["other"]["bd_rate_vs_jpeg2000"]["pass"] is False
    ra = bars["rate_agreement"]
    # the 3 % gap of the small files is reported beside, not checked
    assert ra["value"] == pytest.approx(0.004) and ra["pass"] and ra["files_checked"] == 12
    assert ra["small_files"]["count"] == 4
    assert ra["small_files"]["max_header_share"] == pytest.approx(31 / 1500)
    assert bars["codec_seconds"]["value"] == pytest.approx(0.7) and bars["codec_seconds"]["pass"]


def test_check_bars_compares_with_jpeg_only_where_jpeg_reaches():
    m = _fake_metrics(3.0)
    for p in m["baselines"]["kodak"]["jpeg"]:  # JPEG's lowest quality lands at 0.16 bpp
        for v in p["images"].values():
            v["bpp"] = max(v["bpp"], 0.16)
    m["baselines"]["kodak"]["jpeg"] = m["baselines"]["kodak"]["jpeg"][1:]
    jg = runner.check_bars(m)["kodak"]["jpeg_gain"]
    assert jg["pass"] and jg["value"] == pytest.approx(3.0)
    assert all(0 < v["points_compared"] < 16 for v in jg["per_image"].values())


def test_check_bars_fails_a_curve_that_stops_short_of_the_high_rate_end():
    bars = runner.check_bars(_fake_metrics(3.0, top_bpp=0.3))
    hr = bars["kodak"]["high_rate_gain"]
    assert hr["value"] is None and hr["pass"] is False
    assert hr["curve_max_bpp"] == pytest.approx(0.32)


def test_config_validation():
    with pytest.raises(InvalidParameterError):
        dataclasses.replace(runner.PROFILES["cpu"], rate_weights=(100.0,))
    with pytest.raises(InvalidParameterError):
        dataclasses.replace(runner.PROFILES["cpu"], sweep_noise_std=-0.1)
    with pytest.raises(UnknownNameError):
        dataclasses.replace(runner.PROFILES["cpu"], baseline_codecs=("bpg",))
    with pytest.raises(InvalidParameterError, match="train_scales"):
        dataclasses.replace(runner.PROFILES["cpu"], train_scales=(0.5, 1.0))
    with pytest.raises(InvalidParameterError, match="speed_set"):
        dataclasses.replace(runner.PROFILES["cpu"], speed_set="clic")
    with pytest.raises(UnknownNameError):
        dataclasses.replace(runner.PROFILES["cpu"], schedule="exponential")
    with pytest.raises(UnknownNameError):
        runner.run("huge")
    names = runner.shipped_names(runner.PROFILES["cpu"])
    assert list(names) == [f"q{i}" for i in range(1, len(names) + 1)]
    lams = [lam for lam, _ in names.values()]
    assert lams == sorted(lams, reverse=True) and len(lams) >= 5


# --------------------------------------------------------------------------- smoke run
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    try:
        list_images(image_folder("wallpapers-train", DATA))
    except DataNotFoundError:
        pytest.skip("training photographs not available")
    root = tmp_path_factory.mktemp("ncvae") / "results"
    written = runner.run("smoke", results_root=root, progress=False, data_root=DATA)
    return root, {k: json.loads(v.read_text()) for k, v in written.items()}, written


def test_smoke_run_writes_results_with_expected_metrics(smoke):
    root, results, written = smoke
    assert set(results) == set(runner.EXPERIMENTS)
    sweep = results["rd_sweep"]
    m = sweep["metrics"]
    cfg = runner.PROFILES["smoke"]
    assert len(m["models"]) == len(cfg.rate_weights)
    assert set(m["test_sets"]) == {"kodak", "wallpapers"}
    for entry in m["models"].values():
        for label, images in m["test_sets"].items():
            for im in images:
                v = entry["sets"][label]["images"][im]
                assert v["roundtrip_exact"] is True
                assert v["bpp"] == pytest.approx(8 * v["bytes"] / v["pixels"])
                assert v["header_bytes"] < v["bytes"]
                assert {"psnr_db", "estimated_bpp", "rate_rel_gap"} <= set(v)
                assert (v["encode_s"] is None) is (label != cfg.speed_set)
    for label in m["test_sets"]:
        assert {"jpeg_gain", "high_rate_gain", "bd_rate_vs_jpeg2000"} <= set(m["bars"][label])
        assert set(m["table_psnr_db"][label]) >= {"ncvae", "jpeg"}
        assert len(m["table_psnr_db"][label]["jpeg"]) == len(runner.SOURCE_BPPS)
    assert {"rate_agreement", "codec_seconds"} <= set(m["bars"])
    assert {"decoder_params", "decode_ms", "decoder_bytes_float32"} <= set(m["complexity"])
    # learning curves on the held-out validation images; the trunk at the high-rate end
    last = sweep["history"][-1]
    assert {"val_bpp_estimated", "val_psnr_db", "model", "epoch", "lr_start", "lr_end"} <= set(last)
    assert m["trunk"]["rate_weight"] == min(cfg.rate_weights)
    assert not set(cfg.validation_images) & set(m["training_images"]["files"])
    for name, art in sweep["artifacts"].items():  # crops beside the result, with checksums
        path = written["rd_sweep"].parent / art["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == art["sha256"], name
    assert sum((written["rd_sweep"].parent / a["file"]).stat().st_size
               for a in sweep["artifacts"].values()) < 1_000_000
    abl = results["noise_ablation"]["metrics"]
    assert {v["noise_std"] for v in abl["models"].values()} == set(cfg.ablation_noise_stds)
    assert all("test_gradient_energy_ratio" in v for v in abl["models"].values())


def test_ablation_models_share_one_initialisation_and_sweep_models_start_from_the_trunk(tmp_path):
    cfg = runner.PROFILES["smoke"]
    ctx = runner._Context("smoke", cfg, torch.device("cpu"), 0, False, tmp_path / "results",
                          False, __import__("pathlib").Path(DATA))
    abl = runner.model_specs(cfg, "noise_ablation")
    seeds = {runner._init_seed(ctx, s) for s in abl}
    assert len(abl) == len(cfg.ablation_noise_stds) and len(seeds) == 1
    assert all(runner._init_of(ctx, s) == (None, None) for s in abl)  # no warm start
    tasks = runner.plan(ctx, runner.EXPERIMENTS)
    keys = [t.key for t in tasks]
    assert keys[0] == "trunk" and keys[-1] == "baselines"
    sweep = [t for t in tasks if t.spec is not None and t.spec.role == "sweep"]
    assert len(sweep) == len(cfg.rate_weights) and all(t.after == ("trunk",) for t in sweep)
    assert all(t.after == () for t in tasks if t.spec is not None and t.spec.role == "ablation")


def test_finished_models_are_reused_and_exported(smoke, tmp_path):
    root, results, _ = smoke
    recorded = {v["rate_weight"]: v["model_id"] for v in results["rd_sweep"]["metrics"]["models"].values()}
    # load-or-train finds the finished model of the run (no retraining): same weights
    model = runner.load_model("q1", profile="smoke", results_root=root, models_dir=tmp_path)
    lam = runner.shipped_names(runner.PROFILES["smoke"])["q1"][0]
    assert state_digest(model)[:8] == recorded[lam]
    manifest = runner.export_models("smoke", results_root=root, dest=tmp_path / "ship")
    entries = json.loads(manifest.read_text())["models"]
    assert set(entries) == set(runner.shipped_names(runner.PROFILES["smoke"]))
    shipped = runner.load_model("q1", models_dir=tmp_path / "ship")
    assert state_digest(shipped) == state_digest(model)
    # the manifest's checksum protects the shipped file
    path = tmp_path / "ship" / entries["q1"]["file"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        runner.load_model("q1", models_dir=tmp_path / "ship")
    with pytest.raises(UnknownNameError):
        runner.load_model("q99", models_dir=tmp_path / "ship")
    with pytest.raises(DataNotFoundError):  # neither shipped nor trained, and no --train
        runner.load_model("q2", profile="cpu", results_root=tmp_path / "none", models_dir=tmp_path)


def test_interrupted_training_resumes_exactly(tmp_path, monkeypatch):
    try:
        list_images(image_folder("wallpapers-train", DATA))
    except DataNotFoundError:
        pytest.skip("training photographs not available")
    cfg = dataclasses.replace(runner.PROFILES["smoke"], steps_per_epoch=2, epochs=2,
                              warm_start=False, trunk_epochs=0)

    def train(root, resume):
        ctx = runner._Context("smoke", cfg, torch.device("cpu"), 0, resume, root, False,
                              __import__("pathlib").Path(DATA))
        spec = next(m for m in runner.model_specs(cfg, "rd_sweep") if m.rate_weight == 300.0)
        return runner._train(ctx, spec)

    whole = train(tmp_path / "a" / "results", False)
    calls = {"n": 0}
    original = NCVAE.loss

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # inside the second epoch, after the first epoch's checkpoint
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NCVAE, "loss", failing)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b" / "results", False)
    counted = {"n": 0}

    def counting(self, *args, **kwargs):
        counted["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NCVAE, "loss", counting)
    resumed = train(tmp_path / "b" / "results", True)
    assert counted["n"] == 2  # only the second epoch was run again
    assert state_digest(resumed.model) == state_digest(whole.model)
    assert resumed.history == whole.history
    again = train(tmp_path / "b" / "results", True)  # finished: loaded, not retrained
    assert counted["n"] == 2 and state_digest(again.model) == state_digest(whole.model)


def test_tiny_fresh_model_file_round_trip(tmp_path):
    model = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for step in range(3):
        opt.zero_grad()
        model.loss(x, 100.0, generator=torch.Generator().manual_seed(step))["loss"].backward()
        opt.step()
    sha = save_model_file(model, tmp_path / "m.pt", {"note": "tiny"})
    loaded, meta = load_model_file(tmp_path / "m.pt", sha256=sha)
    assert meta == {"note": "tiny"} and state_digest(loaded) == state_digest(model)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model_file(tmp_path / "m.pt", sha256="0" * 64)


# --------------------------------------------------------------------------- image input
def _png16_rgb(path, arr: np.ndarray) -> None:
    """Write a 16-bit-per-channel RGB PNG (Pillow cannot write one) from ``uint16 [H, W, 3]``."""
    import struct
    import zlib

    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    grey = np.array([[0, 257, 1000], [32768, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img = load_image(tmp_path / "g16.png")
    expected = np.round(grey / 65535 * 255).astype(np.uint8)  # 1000 → 4, not 255
    assert img.dtype == torch.uint8 and img.shape == (3, 2, 3)
    assert all(np.array_equal(img[c].numpy(), expected) for c in range(3))
    rgb = np.zeros((2, 3, 3), np.uint16)
    rgb[0, 0] = [0, 257 * 100, 40000]
    rgb[1] = 65535
    _png16_rgb(tmp_path / "rgb16.png", rgb)
    img = load_image(tmp_path / "rgb16.png")
    assert img[:, 0, 0].tolist() == [0, 100, 156] and bool((img[:, 1] == 255).all())
    Image.fromarray(np.full((2, 2), -5, np.int32), mode="I").save(tmp_path / "neg.tif")
    with pytest.raises(InvalidParameterError, match="outside 0..65535"):
        load_image(tmp_path / "neg.tif")


def test_transparent_images_are_refused_and_opaque_alpha_is_dropped(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "opaque.png")
    img = load_image(tmp_path / "opaque.png")
    assert img.shape == (3, 4, 5) and img[0].unique().tolist() == [200]
    rgba[1, 2, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "hole.png")
    with pytest.raises(InvalidParameterError, match="transparent pixels \\(1 of 20\\)"):
        load_image(tmp_path / "hole.png")
    Image.fromarray(rgba[..., [0, 3]], mode="LA").save(tmp_path / "la.png")
    with pytest.raises(InvalidParameterError, match="transparent"):
        load_image(tmp_path / "la.png")
    pal = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.save(tmp_path / "pal.png", transparency=0)
    with pytest.raises(InvalidParameterError, match="transparent"):
        load_image(tmp_path / "pal.png")

"""Reproducible bitstreams: the coder's probabilities are bit-exact across thread counts and
devices, and a decoder that does not reproduce them refuses to return an image."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ibcore.codec import bitstream as bs
from ibcore.codec import entropy as en
from ibcore.codec import zoo
from ibcore.data.images import load_image
from ibcore.errors import DataNotFoundError, UnknownNameError
from ibcore.models.ncvae import NCVAE, NCVAEArch

DATA = Path("/work/shared/data")
ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models" / "ncvae"
BIG = DATA / "images" / "wallpapers" / "test" / "lomiri-wallpapers-16.04-life.png"  # 2048x1364


@pytest.fixture(scope="module")
def tiny() -> tuple[NCVAE, torch.Tensor, bytes]:
    torch.manual_seed(0)
    model = NCVAE(NCVAEArch(channels=8, latent=8, hyper=4))
    with torch.no_grad():  # non-trivial latents, side information and prior scales
        model.g_a[-1].weight.mul_(40.0)
        model.h_a[-1].weight.mul_(300.0)
        model.rdo.scale.weight.mul_(30.0)
        model.rdo.mean.weight.mul_(30.0)
    gen = torch.Generator().manual_seed(5)
    image = (torch.rand(3, 96, 130, generator=gen) * 255).to(torch.uint8)
    return model.eval(), image, bs.encode(model, image)


# --------------------------------------------------------------------------- the exact prior
def test_fixed_point_prior_matches_float_and_exact_integer_convolution(tiny):
    model, _, _ = tiny
    ep = en.exact_prior(model.rdo)
    gen = torch.Generator().manual_seed(2)
    h = torch.randint(-40, 41, (4, 3, 5), generator=gen)
    mean_q, scale_q = ep.pre_activations(h.numpy())
    # independent integer evaluation of the transposed convolution, term by term
    w, b = ep.weight.tolist(), ep.bias.tolist()
    hl = h.tolist()
    m2 = len(b)
    ref = [[[b[o] for _ in range(10)] for _ in range(6)] for o in range(m2)]
    for c in range(4):
        for i in range(3):
            for j in range(5):
                for a in range(3):
                    for bb in range(3):
                        y, x = 2 * i - 1 + a, 2 * j - 1 + bb
                        if 0 <= y < 6 and 0 <= x < 10:
                            for o in range(m2):
                                ref[o][y][x] += w[c][o][a][bb] * hl[c][i][j]
    assert np.array_equal(np.concatenate([mean_q, scale_q]), np.array(ref, dtype=np.int64))
    # and it is the float model's convolution up to the fixed-point grid
    with torch.no_grad():
        mu = F.conv_transpose2d(h[None].double(), model.rdo.mean.weight.double(),
                                model.rdo.mean.bias.double(), stride=2, padding=1,
                                output_padding=1)[0]
    assert np.abs(mean_q / 2.0**en.FRACTION_BITS - mu.numpy()).max() < 1e-4


def test_scale_table_thresholds_pick_the_nearest_level_in_log_scale():
    levels, thresholds = en.scale_table(0.11)
    assert levels.size == en.SCALE_LEVELS and thresholds.size == en.SCALE_LEVELS - 1
    assert levels[0] == pytest.approx(0.11, rel=1e-15) and levels[-1] == pytest.approx(256.0)
    ratios = levels[1:] / levels[:-1]
    assert np.allclose(ratios, ratios[0], rtol=1e-12) and np.all(np.diff(thresholds) > 0)
    unit = 2.0**en.FRACTION_BITS
    for j in (0, 1, 40, 126):  # just at and just below each threshold
        mid = math.sqrt(levels[j] * levels[j + 1])
        def sigma(t: int) -> float:
            return 0.11 + math.log1p(math.exp(t / unit))
        assert sigma(int(thresholds[j])) >= mid * (1 - 1e-9)
        assert sigma(int(thresholds[j]) - 2) < mid
    s = np.array([-30.0, -2.0, 0.0, 1.3, 7.0, 400.0])
    sq = np.round(s * unit).astype(np.int64)
    index = np.searchsorted(thresholds, sq, side="right")
    sig = 0.11 + np.log1p(np.exp(np.minimum(s, 700)))
    sig[-1] = 0.11 + 400.0
    nearest = np.argmin(np.abs(np.log(sig[:, None]) - np.log(levels[None, :])), axis=1)
    assert np.array_equal(index, nearest)


def test_side_tables_are_the_models_density(tiny):
    model, _, _ = tiny
    table = en.side_tables(model.side_density, -12, 9)
    ref = model.side_density.pmf_table(-12, 9).double().detach().numpy()
    assert table.shape == ref.shape and np.allclose(table.sum(1), 1.0, atol=1e-15)
    assert np.abs(table - ref).max() < 1e-6


def test_coder_inputs_do_not_depend_on_torch_threads(tiny):
    model, image, data = tiny
    h = bs.encode_detailed(model, image).h_hat.to(torch.int64).numpy()
    rng = bs.unpack(data)[0].h_range
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bs.coder_inputs(model, h, rng)
        torch.set_num_threads(2)
        two = bs.coder_inputs(model, h, rng)
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))


# --------------------------------------------------------------------------- self-verification
def test_one_ulp_on_one_scale_makes_the_decoder_raise(tiny, monkeypatch):
    model, image, data = tiny
    assert torch.equal(bs.decode(model, data), bs.encode_detailed(model, image).reconstruction)
    original = en.ExactPrior.coder_arrays

    def perturbed(self, h_hat):
        means, scales = original(self, h_hat)
        scales = scales.copy()
        scales[scales.size // 2] = np.nextafter(scales[scales.size // 2], np.inf)
        return means, scales

    monkeypatch.setattr(en.ExactPrior, "coder_arrays", perturbed)
    with pytest.raises(bs.DecoderMismatchError, match="prior check"):
        bs.decode(model, data)


def test_wrong_symbols_raise_even_when_the_prior_check_is_bypassed(tiny, monkeypatch):
    model, _, data = tiny
    header, _ = bs.unpack(data)
    original = en.ExactPrior.coder_arrays

    def wider(self, h_hat):  # a decoder whose coder would see other probabilities
        means, scales = original(self, h_hat)
        return means + 0.3, scales * 1.5

    monkeypatch.setattr(en.ExactPrior, "coder_arrays", wider)
    monkeypatch.setattr(bs, "prior_checksum", lambda *a: header.prior_check)
    with pytest.raises(bs.BitstreamError):
        bs.decode(model, data)


def test_latent_check_is_verified(tiny):
    model, _, data = tiny
    header, words = bs.unpack(data)
    wrong = bs.Header(header.model_id, header.height, header.width, header.y_range,
                      header.h_range, header.version, header.prior_check,
                      header.latent_check ^ 1)
    with pytest.raises(bs.DecoderMismatchError, match="latent check"):
        bs.decode(model, bs.pack(wrong, words))


def test_version_1_files_are_refused_with_a_message_that_says_so(tiny):
    model, _, data = tiny
    with pytest.raises(bs.UnsupportedVersionError, match="version 1.*older ibcore"):
        bs.decode(model, data[:4] + b"\x01" + data[5:])
    assert data[4] == bs.FORMAT_VERSION == 2


# --------------------------------------------------------------------------- across threads
_WORKER = r"""
import json, sys, torch, numpy as np
from ibcore.codec.__main__ import main
torch.set_num_threads(int(sys.argv[1]))
for job in json.loads(sys.argv[2]):
    if job[0] == "latents":  # entropy-decode only: the latents, verified by the file's checks
        from ibcore.codec import bitstream as bs, zoo
        data = open(job[1], "rb").read()
        model = zoo.find_model_by_id(bs.unpack(data)[0].model_id.hex())
        _, y_hat, h_hat = bs.decode_latents(model, data)
        np.save(job[2], np.concatenate([y_hat.numpy().ravel(), h_hat.numpy().ravel()]))
    else:
        assert main(job) == 0, job
print(json.dumps({"threads": torch.get_num_threads(),
                  "runners": sorted(m for m in sys.modules if m.startswith("ibcore.runners"))}))
"""


def _run(threads: int, jobs: list[list[str]]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", _WORKER, str(threads), json.dumps(jobs)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _images(tmp_path: Path) -> list[Path]:
    if not BIG.is_file() or not (MODELS / "manifest.json").is_file():
        pytest.skip("the test photographs or the shipped models are not available")
    big = load_image(BIG)
    assert big.shape[1] * big.shape[2] >= 2_000_000
    paths = [BIG]
    for k, (h, w) in enumerate([(37, 53), (300, 200)]):  # sizes not multiples of 32
        crop = big[:, 400 : 400 + h, 700 : 700 + w].permute(1, 2, 0).numpy()
        paths.append(tmp_path / f"crop{k}.png")
        Image.fromarray(crop).save(paths[-1])
    return paths


def test_files_decode_bit_identically_at_another_thread_count(tmp_path):
    """Encode at 1 thread, decode at 1 and 2: identical images; encode at 2 threads,
    entropy-decode at 2 and 1: identical latents (the synthesis, which does not touch the
    probabilities, is run once per direction to keep the test short)."""
    paths = _images(tmp_path)
    models = ["q3", "q1", "q6"]  # one model per image keeps the test short
    def file(p: Path, t: int) -> str:
        return str(tmp_path / f"{p.stem}.t{t}.ibc")
    def enc(t: int) -> list[list[str]]:
        return [["encode", str(p), file(p, t), "--model", m]
                for p, m in zip(paths, models, strict=True)]
    def dec(t: int) -> list[list[str]]:
        return [["decode", file(p, 1), str(tmp_path / f"{p.stem}.d{t}.png")] for p in paths]
    def lat(t: int) -> list[list[str]]:
        return [["latents", file(p, 2), str(tmp_path / f"{p.stem}.l{t}.npy")] for p in paths]
    first = _run(1, enc(1) + dec(1))
    second = _run(2, enc(2) + dec(2) + lat(2))
    third = _run(1, lat(1))
    assert (first["threads"], second["threads"], third["threads"]) == (1, 2, 1)
    assert first["runners"] == [] and second["runners"] == []  # the CLI loads no runner
    for p in paths:
        a = np.asarray(Image.open(tmp_path / f"{p.stem}.d1.png"))
        b = np.asarray(Image.open(tmp_path / f"{p.stem}.d2.png"))
        assert a.shape[:2] == load_image(p).shape[1:]
        assert np.array_equal(a, b), p.name
        la, lb = np.load(tmp_path / f"{p.stem}.l1.npy"), np.load(tmp_path / f"{p.stem}.l2.npy")
        assert la.size > 0 and np.array_equal(la, lb), p.name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_encoded_file_decodes_on_the_cpu():
    """The probabilities are exact on any device; the synthesis stays in floating point, so a
    GPU's and a CPU's reconstructions of the same latents may differ by one level in a pixel."""
    gpu = zoo.load_shipped("q3", models_dir=MODELS, device="cuda")
    cpu = zoo.load_shipped("q3", models_dir=MODELS, device="cpu")
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 200, 300, generator=gen) * 255).to(torch.uint8)
    res = bs.encode_detailed(gpu, image)
    _, y_cpu, h_cpu = bs.decode_latents(cpu, res.data)  # raises if the probabilities differ
    assert torch.equal(y_cpu, res.y_hat) and torch.equal(h_cpu, res.h_hat)
    _, y_gpu, _ = bs.decode_latents(gpu, res.data)
    assert torch.equal(y_gpu.cpu(), y_cpu)
    on_cpu = bs.decode(cpu, res.data)
    assert on_cpu.shape == (3, 200, 300)
    assert (on_cpu.int() - res.reconstruction.int()).abs().max() <= 1


# --------------------------------------------------------------------------- registry
def test_zoo_loads_by_name_and_id_and_refuses_unknown_names(tmp_path):
    if not (MODELS / "manifest.json").is_file():
        pytest.skip("no shipped models")
    manifest = zoo.read_manifest(MODELS)
    model = zoo.load_shipped("q1", models_dir=MODELS)
    assert bs.model_id(model).hex() == manifest["q1"]["model_id"]
    same = zoo.find_model_by_id(manifest["q1"]["model_id"], MODELS)
    assert bs.model_id(same) == bs.model_id(model)
    with pytest.raises(UnknownNameError):
        zoo.load_shipped("q99", models_dir=MODELS)
    with pytest.raises(DataNotFoundError, match="no shipped models"):
        zoo.load_shipped("q1", models_dir=tmp_path)

"""Tests of the codec package: BD metrics, baselines, the .ibc bitstream and its CLI."""

from __future__ import annotations

import json
import math
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import norm

from ibcore.codec import baselines as bl
from ibcore.codec import bitstream as bs
from ibcore.codec import entropy as bs_entropy
from ibcore.codec.__main__ import main as cli_main
from ibcore.codec.bdmetrics import bd_psnr, bd_rate
from ibcore.data.images import load_kodak
from ibcore.errors import (
    CheckpointError,
    IBCoreError,
    InvalidParameterError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)
from ibcore.models.ncvae import NCVAE, NCVAEArch, save_model_file

DATA = "/work/shared/data"


def _kodak_crop() -> np.ndarray:
    try:
        img = load_kodak(DATA)["kodim07.png"]
    except IBCoreError:
        pytest.skip("Kodak test images not available")
    return img[:, 64:320, 128:512].permute(1, 2, 0).contiguous().numpy()


# --------------------------------------------------------------------------- BD metrics
RATES = [0.1, 0.2, 0.4, 0.8]


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_bd_linear_curves_hand_computed(method):
    # PSNR = a + 10 log10(R): a parallel shift by 1 dB is BD-PSNR 1 dB and BD-rate 10^(-0.1) - 1
    anchor = [30 + 10 * math.log10(r) for r in RATES]
    test = [31 + 10 * math.log10(r) for r in RATES]
    assert bd_psnr(RATES, anchor, RATES, test, method=method) == pytest.approx(1.0, abs=1e-9)
    expected = 100 * (10 ** (-0.1) - 1)  # -20.567 %
    assert bd_rate(RATES, anchor, RATES, test, method=method) == pytest.approx(expected, abs=1e-7)
    # swapping the curves flips the sign of BD-PSNR
    assert bd_psnr(RATES, test, RATES, anchor, method=method) == pytest.approx(-1.0, abs=1e-9)


def test_bd_rate_of_halved_rates_is_minus_50_percent():
    psnrs = [27.0, 30.5, 32.0, 33.2]  # any increasing curve: the fit of log R shifts by log 0.5
    half = [r / 2 for r in RATES]
    assert bd_rate(RATES, psnrs, half, psnrs) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate(RATES, psnrs, half, psnrs, method="pchip") == pytest.approx(-50.0, abs=1e-9)


def test_bd_bad_inputs():
    with pytest.raises(InvalidParameterError, match="overlap"):
        bd_psnr([0.1, 0.2], [30, 31], [1.0, 2.0], [40, 41])
    with pytest.raises(ShapeError):
        bd_rate([0.1], [30], [0.1, 0.2], [30, 31])
    with pytest.raises(InvalidParameterError):
        bd_rate([0.0, 0.2], [30, 31], [0.1, 0.2], [30, 31])
    with pytest.raises(NonFiniteError):
        bd_psnr([0.1, 0.2], [30, float("nan")], [0.1, 0.2], [30, 31])
    with pytest.raises(UnknownNameError):
        bd_psnr(RATES, RATES, RATES, RATES, method="akima")


# --------------------------------------------------------------------------- baselines
def test_psnr_hand_computed():
    a = np.full((4, 4, 3), 100, np.uint8)
    assert bl.psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2), abs=1e-12)
    assert bl.psnr(a, a) == math.inf


def test_available_codecs_agree_with_pillow():
    from PIL import features

    support = bl.available_codecs()
    assert set(support) == {"jpeg", "webp", "jpeg2000", "avif"}
    assert support["jpeg"] == features.check("jpg")
    assert support["jpeg2000"] == features.check("jpg_2000")


@pytest.mark.parametrize("codec,target", [("jpeg", 0.6), ("webp", 0.4), ("jpeg2000", 0.3),
                                          ("avif", 0.3)])
def test_quality_search_hits_target_within_5_percent(codec, target):
    if not bl.available_codecs()[codec]:
        pytest.skip(f"{codec} not supported by this Pillow")
    img = _kodak_crop()
    point, data = bl.encode_at_bpp(img, codec, target)
    assert point.reached
    real = 8 * len(data) / (img.shape[0] * img.shape[1])
    assert real == pytest.approx(point.bpp)
    assert abs(real - target) <= 0.05 * target
    assert point.psnr == pytest.approx(bl.psnr(img, bl.decode_image(data)))


def test_quality_search_reports_unreachable_targets():
    img = _kodak_crop()
    point, _ = bl.encode_at_bpp(img, "jpeg", 0.001)
    assert not point.reached and point.quality == 1


def test_baseline_bad_inputs():
    img = _kodak_crop()
    with pytest.raises(UnknownNameError):
        bl.encode_image(img, "bpg", 10)
    with pytest.raises(ShapeError):
        bl.encode_image(img[..., 0], "jpeg", 10)
    with pytest.raises(InvalidParameterError):
        bl.encode_image(img, "jpeg", 10.5)
    with pytest.raises(InvalidParameterError):
        bl.encode_image(img, "jpeg", 0)
    with pytest.raises(InvalidParameterError):
        bl.encode_at_bpp(img, "jpeg", -1.0)


# --------------------------------------------------------------------------- bitstream
def _controlled_model(means: list[float], raw_scales: list[float]) -> NCVAE:
    """A tiny model whose prior is the same N(μ_c, σ_c²) at every position of channel c."""
    torch.manual_seed(0)
    model = NCVAE(NCVAEArch(channels=8, latent=len(means), hyper=4))
    with torch.no_grad():
        for conv, values in ((model.rdo.mean, means), (model.rdo.scale, raw_scales)):
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor(values))
    return model.eval()


def test_latent_round_trip_is_lossless_and_rate_matches_information_content():
    means, raw = [0.0, 2.5, -7.2], [0.5, 3.0, 8.0]
    model = _controlled_model(means, raw)
    scales = [0.11 + math.log1p(math.exp(r)) for r in raw]  # σ_min + softplus
    # the coder uses the nearest (in log scale) level of the fixed scale table
    levels = bs_entropy.scale_table(0.11)[0]
    coded = [float(levels[np.argmin(np.abs(np.log(levels) - math.log(s)))]) for s in scales]
    assert all(abs(math.log(c / s)) < 0.04 for c, s in zip(coded, scales, strict=True))
    height, width = 256, 320
    gen = torch.Generator().manual_seed(1)
    y = torch.stack([torch.round(m + s * torch.randn(height // 16, width // 16, generator=gen))
                     for m, s in zip(means, scales, strict=True)])
    h = torch.zeros(4, height // 32, width // 32)
    data = bs.encode_latents(model, y, h, height, width)
    header, y_dec, h_dec = bs.decode_latents(model, data)
    assert (header.height, header.width) == (height, width)
    assert torch.equal(y_dec, y) and torch.equal(h_dec, h)
    # information content with scipy (independent of ibcore's rate code), side symbols all 0
    yn = y.numpy()
    bits = 0.0
    for c, (m, s) in enumerate(zip(means, coded, strict=True)):
        p = norm.cdf((yn[c] + 0.5 - m) / s) - norm.cdf((yn[c] - 0.5 - m) / s)
        bits += float(-np.log2(p).sum())
    # side symbols (all 0) under the model's own, unclipped density
    bits += float(model.side_density.bits(h[None]).detach())
    assert header.h_range[0] <= 0 <= header.h_range[1]
    payload_bits = 8 * (len(data) - _header_length(data))
    assert abs(payload_bits - bits) <= 0.01 * bits + 64  # ANS flushes at most two 32-bit words


def _header_length(data: bytes) -> int:
    header, words = bs.unpack(data)
    return len(data) - 4 * words.size


def test_header_round_trip_with_negative_ranges_and_large_sizes():
    header = bs.Header(b"\x01\x02\x03\x04", 9999, 123, (-300, 41), (-2, 5))
    words = np.array([1, 2, 0xFFFFFFFF], dtype=np.uint32)
    back, w = bs.unpack(bs.pack(header, words))
    assert back == header and np.array_equal(w, words)


@pytest.fixture(scope="module")
def real_file() -> tuple[NCVAE, torch.Tensor, bytes]:
    torch.manual_seed(0)
    model = NCVAE(NCVAEArch(channels=8, latent=8, hyper=4))
    with torch.no_grad():  # a random model with non-trivial latents and side information
        model.g_a[-1].weight.mul_(40.0)
        model.h_a[-1].weight.mul_(300.0)
    gen = torch.Generator().manual_seed(3)
    image = (torch.rand(3, 70, 100, generator=gen) * 255).to(torch.uint8)
    return model.eval(), image, bs.encode(model, image)


def test_decode_reproduces_the_models_quantized_reconstruction(real_file):
    model, image, data = real_file
    res = bs.encode_detailed(model, image)
    assert res.data == data
    assert res.header.y_range[1] - res.header.y_range[0] > 4  # the test exercises real symbols
    assert torch.equal(bs.decode(model, data), res.reconstruction)
    with torch.no_grad():  # the model's own rounded forward pass, independently of the codec
        out = model(image[None].float() / 255.0, quantize="round")
    expected = torch.round(out["x_hat"][0].clamp(0, 1) * 255).to(torch.uint8)
    assert torch.equal(res.reconstruction, expected)
    assert res.estimated_bits == pytest.approx(float(out["bits"]), rel=1e-5)


def _recrc(data: bytes) -> bytes:
    """Recompute the CRC of a (mutated) file so that decoding gets past the checksum."""
    header, words = bs.unpack(data, verify_checksum=False)
    return bs.pack(header, words)


def test_typed_errors_for_bad_files(real_file):
    model, _, data = real_file
    with pytest.raises(bs.ForeignFileError):
        bs.decode(model, b"\x89PNG\r\n\x1a\n" + data)
    with pytest.raises(bs.ForeignFileError):
        bs.decode(model, b"")
    with pytest.raises(bs.TruncatedBitstreamError):
        bs.decode(model, data[:-3])
    with pytest.raises(bs.TruncatedBitstreamError):
        bs.decode(model, data[:2])
    with pytest.raises(bs.UnsupportedVersionError):
        bs.decode(model, data[:4] + b"\x07" + data[5:])
    with pytest.raises(bs.CorruptedBitstreamError, match="checksum"):
        bs.decode(model, data[:-1] + bytes([data[-1] ^ 0x10]))
    with pytest.raises(bs.CorruptedBitstreamError, match="after the payload"):
        bs.decode(model, data + b"\0\0\0\0")
    other = NCVAE(NCVAEArch(channels=8, latent=8, hyper=4))
    with pytest.raises(bs.ModelMismatchError):
        bs.decode(other, data)
    header, words = bs.unpack(data)
    for bad in (bs.Header(header.model_id, 10**6, 10, header.y_range, header.h_range),
                bs.Header(header.model_id, 70, 100, (3, 3), header.h_range),
                bs.Header(header.model_id, 70, 100, header.y_range, (5, -5))):
        with pytest.raises(bs.CorruptedBitstreamError):
            bs.decode(model, bs.pack(bad, words))
    assert issubclass(bs.BitstreamError, IBCoreError) and issubclass(bs.BitstreamError, ValueError)


def _decode_bounded(model: NCVAE, blob: bytes) -> None:
    t0 = time.perf_counter()
    try:
        out = bs.decode(model, blob)
    except bs.BitstreamError:
        pass
    else:  # a CRC-consistent mutation may decode: then it is a whole image of the declared size
        header, _ = bs.unpack(blob)
        assert out.dtype == torch.uint8 and tuple(out.shape) == (3, header.height, header.width)
    assert time.perf_counter() - t0 < 5.0


def test_decoder_fuzz_random_truncated_and_mutated_inputs(real_file):
    model, _, data = real_file
    rng = np.random.default_rng(0)
    for n in rng.integers(0, 300, size=150):
        _decode_bounded(model, rng.integers(0, 256, size=int(n), dtype=np.uint8).tobytes())
        # random bytes behind a valid magic and version: the header parser must cope
        tail = rng.integers(0, 256, size=int(n), dtype=np.uint8).tobytes()
        _decode_bounded(model, bs.MAGIC + bytes([bs.FORMAT_VERSION]) + tail)
    for cut in range(len(data)):  # every truncation
        with pytest.raises(bs.BitstreamError):
            bs.decode(model, data[:cut])
    for pos in rng.integers(0, len(data), size=100):  # bit flips are caught by the checksum
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(bs.BitstreamError):
            bs.decode(model, bytes(flipped))
    head = _header_length(data)
    for _ in range(60):  # payload garbage with a valid checksum reaches the ANS decoder
        payload = rng.integers(0, 256, size=len(data) - head, dtype=np.uint8).tobytes()
        _decode_bounded(model, _recrc(data[:head] + payload))


# --------------------------------------------------------------------------- CLI
def test_cli_encode_decode_info_and_errors(real_file, tmp_path, capsys):
    model, image, _ = real_file
    model_file = tmp_path / "tiny.pt"
    sha = save_model_file(model, model_file, {"name": "tiny"})
    png = tmp_path / "in.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(png)
    ibc, out_png = tmp_path / "x.ibc", tmp_path / "out.png"
    assert cli_main(["encode", str(png), str(ibc), "--model", str(model_file)]) == 0
    assert ibc.read_bytes() == bs.encode(model, image)
    assert cli_main(["decode", str(ibc), str(out_png), "--model", str(model_file)]) == 0
    decoded = torch.from_numpy(np.array(Image.open(out_png))).permute(2, 0, 1)
    assert torch.equal(decoded, bs.decode(model, ibc.read_bytes()))
    # without --model: the model id in the file selects the shipped model from the manifest
    manifest = {"format": 1, "models": {"tiny": {"file": "tiny.pt", "sha256": sha,
                                                 "model_id": bs.model_id(model).hex()}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    out2 = tmp_path / "out2.png"
    assert cli_main(["decode", str(ibc), str(out2), "--models-dir", str(tmp_path)]) == 0
    assert out2.read_bytes() == out_png.read_bytes() or np.array_equal(
        np.asarray(Image.open(out2)), np.asarray(Image.open(out_png)))
    assert cli_main(["info", str(ibc)]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.ibc"
    bad.write_bytes(ibc.read_bytes()[:-5])
    assert cli_main(["decode", str(bad), str(out_png), "--model", str(model_file)]) == 2
    assert "truncated" in capsys.readouterr().err
    bad.write_bytes(b"not an ibc file at all")
    assert cli_main(["decode", str(bad), str(out_png), "--model", str(model_file)]) == 2
    assert "not an .ibc file" in capsys.readouterr().err
    assert cli_main(["decode", str(tmp_path / "missing.ibc"), str(out_png)]) == 2
    # a corrupted model file is refused by its manifest checksum
    raw = bytearray(model_file.read_bytes())
    raw[-10] ^= 0xFF
    model_file.write_bytes(bytes(raw))
    assert cli_main(["decode", str(ibc), str(out2), "--models-dir", str(tmp_path)]) == 2
    assert "SHA-256" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        from ibcore.models.ncvae import load_model_file

        load_model_file(model_file)


def test_crc_covers_header_and_payload(real_file):
    _, _, data = real_file
    header, words = bs.unpack(data)
    head = _header_length(data) - 4
    crc = int.from_bytes(data[head : head + 4], "little")
    assert crc == zlib.crc32(words.astype("<u4").tobytes(), zlib.crc32(data[:head]))

"""Device tests: what differs between a CPU and a GPU, checked on every device present.

Tests parametrised over :data:`DEVICES` run on the CPU always and on CUDA when a GPU is visible
(marked ``gpu``: ``pytest -m gpu`` runs only those; without a GPU they are skipped with the
reason). Device bugs that a CPU can catch are caught here on the CPU:

* a pretend GPU: :class:`torch._subclasses.fake_tensor.FakeTensorMode` makes tensors that carry
  ``device="cuda:0"`` but no data; every operation checks that its inputs share a device, so a
  forward pass that mixes CPU and CUDA tensors raises :class:`FakeTensorDeviceMismatchError`
  on a machine without a GPU. It runs forward passes only (the autograd engine needs a real
  GPU context) and cannot evaluate data-dependent checks (``bool(t.any())``), which the tests
  below replace by no-ops where a forward pass contains one;
* the ``meta`` device (shapes without data) for "the output lies on the input's device";
* recording stand-ins for torch's CUDA RNG functions, to check what evaluation code seeds and
  restores on a GPU.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import (
    FakeTensor,
    FakeTensorDeviceMismatchError,
    FakeTensorMode,
)

from ibcore import device as ibdevice
from ibcore.adversarial import fgsm, fgsm_accuracy
from ibcore.decoders import fit_gaussian_mixture
from ibcore.errors import InvalidParameterError, UnknownNameError
from ibcore.profiles import SPEED_DEFAULTS, as_dict, identity_dict

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA GPU is visible (run `pytest -m gpu` on a machine with one)"
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)]),
]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ a pretend GPU


def to_fake_cuda(module: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """Replace every parameter and buffer of ``module`` (in place) by a fake ``cuda:0`` copy."""
    with mode:
        for mod in module.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None:
                    mod._parameters[name] = nn.Parameter(mode.from_tensor(p.detach()).to("cuda"),
                                                         requires_grad=p.requires_grad)
            for name, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[name] = mode.from_tensor(b).to("cuda")
    return module


class ValidFakeTensorMode(FakeTensorMode):
    """Fake tensors whose data-dependent validity checks answer "valid".

    A fake tensor has no values, so ``bool(t.any())`` cannot be answered; input checks in
    ``ibcore`` are of the forms ``bool(bad.any())`` (raise if true), ``bool(ok.all())`` and
    ``bool(isfinite(scalar))`` (raise if false). Here a 0-dim boolean made by ``any`` reports
    ``False`` and every other 0-dim boolean ``True``, so the checks pass and the forward pass
    around them runs on the pretend device.
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = super().__torch_dispatch__(func, types, args, kwargs)
        packet = getattr(func, "overloadpacket", None)
        if isinstance(out, FakeTensor) and out.dim() == 0 and out.dtype == torch.bool:
            out.item_memo = packet is not torch.ops.aten.any
        return out


@pytest.fixture
def fake_cuda() -> Iterator[FakeTensorMode]:
    """A pretend-GPU mode (real CPU tensors are allowed as inputs, so that mixing is detected);
    distributions skip their argument validation (it reads values)."""
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield ValidFakeTensorMode(allow_non_fake_inputs=True)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)


def test_fake_cuda_mode_catches_device_mixing(fake_cuda: FakeTensorMode) -> None:
    """The pretend GPU itself: device mixing raises, consistent devices pass."""
    lin = to_fake_cuda(nn.Linear(3, 2), fake_cuda)
    with fake_cuda:
        x = torch.rand(4, 3, device="cuda")
        assert lin(x).device.type == "cuda"
        with pytest.raises(FakeTensorDeviceMismatchError):
            lin(torch.rand(4, 3))  # CPU input, CUDA weights
        with pytest.raises(FakeTensorDeviceMismatchError):
            _ = x + torch.rand(4, 3)


def test_fake_cuda_entropy_ib_attack_path(fake_cuda: FakeTensorMode) -> None:
    """Encoder on the GPU + mixture decoder fitted on CPU latents + labels on the GPU: the
    forward pass FGSM differentiates (the old decoder returned CPU logits here)."""
    from ibcore.models.resnet import ResNetEncoder
    from ibcore.runners.entropy_ib import _IBClassifier, encode

    enc = ResNetEncoder(1, latent_dim=4, widths=(4, 8), blocks=(1, 1), generator=_gen(0)).eval()
    images = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8, generator=_gen(1))
    z = encode(enc, images, device=torch.device("cpu"))  # real CPU latents
    gmm = fit_gaussian_mixture(z, torch.arange(30) % 3, 3)
    to_fake_cuda(enc, fake_cuda)
    with fake_cuda:
        x = torch.rand(6, 1, 28, 28, device="cuda")
        y = torch.randint(0, 3, (6,), device="cuda")
        logits = _IBClassifier(enc, gmm)(x)  # the decoder as fitted, on the CPU
        assert logits.device.type == "cuda"
        assert F.cross_entropy(logits, y).device.type == "cuda"
        assert _IBClassifier(enc, gmm.to("cuda"))(x).device.type == "cuda"


def test_fake_cuda_gmvib_training_forward(fake_cuda: FakeTensorMode,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from ibcore.models.gmvib import KINDS, BottleneckClassifier
    from ibcore.objectives.gmvib import gmvib_rate
    from ibcore.runners import gmvib

    # torch's Dirichlet sampler has no fake-tensor kernel; stand in its mean (same shape and
    # device as a draw) so that everything around the draw runs on the pretend GPU
    def mean_draw(self: Any, sample_shape: Any = ()) -> Tensor:
        mean = self.concentration / self.concentration.sum(-1, keepdim=True)
        return mean.expand(*sample_shape, *mean.shape)

    monkeypatch.setattr(torch.distributions.Dirichlet, "rsample", mean_draw)

    for kind in KINDS:
        model = BottleneckClassifier(kind, 64 * 64, 10, latent_dim=8, components=3,
                                     hidden=(16,), conv_channels=(4, 8), generator=_gen(0))
        to_fake_cuda(model, fake_cuda)
        with fake_cuda:
            x = gmvib._inputs(torch.randint(0, 256, (5, 1, 64, 64), dtype=torch.uint8,
                                            device="cuda"))
            out = model(x, samples=2)
            assert out.logits.device.type == "cuda" and out.z.device.type == "cuda"
            if kind == "gmvib":
                rate = gmvib_rate(out.mu, out.logvar, out.alpha, 1.0)
                assert rate.device.type == "cuda"


def test_fake_cuda_infomax_training_forward(fake_cuda: FakeTensorMode) -> None:
    from ibcore.objectives.infomax import ESTIMATORS, dim_mi_terms, local_mi
    from ibcore.runners import infomax

    cfg = infomax.PROFILES["smoke"]
    spec = infomax.ModelSpec("dim", "infonce", alpha=0.5, beta=1.0, gamma=0.1)
    modules = infomax.build_dim_modules(cfg, 1, spec, _gen(0))
    for m in modules.values():
        to_fake_cuda(m, fake_cuda)
    with fake_cuda:
        x = torch.rand(4, 1, 32, 32, device="cuda")
        out = modules["encoder"](x)
        # InfoNCE: the global DV and JSD bounds select the off-diagonal entries with a boolean
        # mask, an output shape a fake tensor cannot know; local_mi has all three below
        mi = dim_mi_terms(out.local, out.y, modules["global_critic"], modules["local_critic"],
                          "infonce", alpha=0.5, beta=1.0)
        assert mi["loss"].device.type == "cuda"
        scores = modules["local_critic"](out.local, out.y)
        for est in ESTIMATORS:
            assert local_mi(scores, est).device.type == "cuda"
        prior = modules["prior"](torch.rand(4, cfg.y_dim, device="cuda"))
        assert prior.device.type == "cuda"


def test_fake_cuda_glasses_training_forward(fake_cuda: FakeTensorMode) -> None:
    from ibcore.runners import glasses

    cfg = glasses.PROFILES["smoke"]
    for entry in {e.kind: e for e in glasses.zoo(cfg, "mnist")}.values():
        model = glasses.build_model(entry, cfg, (1, 28, 28), _gen(1))
        for m in model.modules().values():
            to_fake_cuda(m, fake_cuda)
        with fake_cuda:
            x = torch.rand(4, 1, 28, 28, device="cuda")
            logits = None
            if model.x_disc is not None:
                fake = model.decoder.mean(torch.randn(4, model.latent_dim, device="cuda"))
                logits = model.x_disc(fake)
            terms = glasses.training_terms(model, x, cfg, logits)
            assert terms["loss"].device.type == "cuda", entry.name


def test_fake_cuda_ncvae_training_forward(fake_cuda: FakeTensorMode) -> None:
    from ibcore.models.ncvae import NCVAE, NCVAEArch

    model = NCVAE(NCVAEArch(channels=8, latent=8, hyper=4))
    to_fake_cuda(model, fake_cuda)
    with fake_cuda:
        x = torch.rand(2, 3, 64, 64, device="cuda")
        terms = model.loss(x, 100.0, noise_std=0.01)
        assert terms["loss"].device.type == "cuda" and terms["bpp"].device.type == "cuda"


def test_fake_cuda_foundations_training_forward(fake_cuda: FakeTensorMode) -> None:
    from ibcore.runners import foundations as fdn

    model = fdn.LinearGaussianVIB(3, 2, 3, init_scale=0.5, generator=_gen(0))
    to_fake_cuda(model, fake_cuda)
    with fake_cuda:
        x, y = torch.randn(8, 3, device="cuda"), torch.randn(8, 2, device="cuda")
        terms = fdn.vib_terms(model, x, y, 2.0)
        assert terms["loss"].device.type == "cuda"


# ------------------------------------------------------------------------------ decoder / FGSM


def test_decoder_computes_on_the_device_of_its_input() -> None:
    """A decoder fitted on the CPU, fed ``meta`` latents, answers on ``meta`` (CPU-side check)."""
    gmm = fit_gaussian_mixture(torch.randn(40, 3, generator=_gen(0)), torch.arange(40) % 4, 4)
    z = torch.empty(5, 3, device="meta")
    assert gmm.log_posterior(z).device.type == "meta"
    assert gmm.to("meta").device.type == "meta" and gmm.to("cpu") is gmm


@pytest.mark.parametrize("device", DEVICES)
def test_decoder_output_device_and_values(device: str) -> None:
    gmm = fit_gaussian_mixture(torch.randn(60, 3, generator=_gen(0)), torch.arange(60) % 3, 3)
    z = torch.randn(7, 3, generator=_gen(1))
    expected = gmm.log_posterior(z)
    for decoder in (gmm, gmm.to(device)):
        out = decoder.log_posterior(z.to(device))
        assert out.device.type == device and out.dtype == z.dtype
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-5)


def test_fgsm_names_a_model_that_answers_on_another_device() -> None:
    y = torch.zeros(3, dtype=torch.long, device="meta")
    x = torch.rand(3, 4)

    def wrong_device(inputs: Tensor) -> Tensor:
        return torch.zeros(inputs.shape[0], 2) + inputs.sum() * 0  # CPU logits

    with pytest.raises(InvalidParameterError, match="labels are on meta"):
        fgsm(wrong_device, x, y, 0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_fgsm_through_the_mixture_decoder(device: str) -> None:
    """FGSM against encoder + mixture decoder, with the decoder fitted on CPU latents."""
    from ibcore.data import to_unit_float
    from ibcore.models.resnet import ResNetEncoder
    from ibcore.runners.entropy_ib import _IBClassifier, encode

    dev = torch.device(device)
    enc = ResNetEncoder(1, latent_dim=4, widths=(4, 8), blocks=(1, 1),
                        generator=_gen(0)).to(dev).eval()
    images = torch.randint(0, 256, (60, 1, 28, 28), dtype=torch.uint8, generator=_gen(1))
    labels = torch.arange(60) % 3
    z = encode(enc, images, device=dev)
    assert z.device.type == "cpu"
    gmm = fit_gaussian_mixture(z, labels, 3)
    for decoder in (gmm, gmm.to(dev)):
        acc = fgsm_accuracy(_IBClassifier(enc, decoder), images, labels, [0.0, 0.1],
                            device=dev, transform=to_unit_float, batch_size=25)
        assert len(acc) == 2 and all(0.0 <= a <= 1.0 for a in acc)
        clean = float((gmm.predict(z) == labels).float().mean())
        assert acc[0] == pytest.approx(clean, abs=1.5 / 60)  # a GPU may flip one argmax


# ------------------------------------------------------------------------------ RNG isolation


def test_isolated_rng_restores_and_seeds_like_manual_seed_on_the_cpu() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with ibdevice.isolated_rng("cpu", 7):
        inside = torch.randn(5)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7)
    assert torch.equal(inside, torch.randn(5))
    torch.set_rng_state(before)
    with ibdevice.isolated_rng("cpu"):
        torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(RuntimeError, match="boom"), ibdevice.isolated_rng("cpu", 1):
        raise RuntimeError("boom")
    assert torch.equal(torch.get_rng_state(), before)


class _RecordingCudaRNG:
    """Stand-ins for torch's per-GPU RNG functions on a machine without a GPU."""

    def __init__(self, n_devices: int = 2) -> None:
        self.states = [torch.tensor([10 * i], dtype=torch.uint8) for i in range(n_devices)]
        self.seeded: list[tuple[int, int]] = []
        rec = self

        class _Gen:
            def __init__(self, index: int) -> None:
                self.index = index

            def manual_seed(self, seed: int) -> None:
                rec.seeded.append((self.index, seed))
                rec.states[self.index] = torch.tensor([seed % 256], dtype=torch.uint8)

        self.default_generators = tuple(_Gen(i) for i in range(n_devices))

    def get_rng_state(self, device: int = 0) -> Tensor:
        return self.states[device].clone()

    def set_rng_state(self, state: Tensor, device: int = 0) -> None:
        self.states[device] = state.clone()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get_rng_state)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(torch.cuda, "default_generators", self.default_generators)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

        def forbidden(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("global CUDA seeding")

        monkeypatch.setattr(torch.cuda, "manual_seed_all", forbidden)
        monkeypatch.setattr(torch.cuda, "manual_seed", forbidden)


def test_isolated_rng_on_a_gpu_touches_only_that_gpu_and_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda = _RecordingCudaRNG()
    cuda.install(monkeypatch)
    before = [s.clone() for s in cuda.states]
    with ibdevice.isolated_rng(torch.device("cuda:1"), 5):
        assert cuda.seeded == [(1, 5)]
        assert int(cuda.states[1]) == 5
    assert [torch.equal(a, b) for a, b in zip(cuda.states, before, strict=True)] == [True, True]
    with ibdevice.isolated_rng(torch.device("cuda"), 9):  # no index: the current device
        assert cuda.seeded[-1] == (0, 9)
    assert torch.equal(cuda.states[0], before[0])


def _forbid_global_seeding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every global seeding function raise (CUDA's included, which torch.manual_seed calls)."""
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("evaluation seeded a global RNG")

    for owner, name in [(torch, "manual_seed"), (torch, "seed"), (torch.random, "manual_seed"),
                        (torch.random, "seed"), (torch.cuda, "manual_seed"),
                        (torch.cuda, "manual_seed_all"), (torch.cuda, "seed"),
                        (torch.cuda, "seed_all"), (ibdevice, "seed_everything")]:
        monkeypatch.setattr(owner, name, forbidden)


def _gmvib_eval_inputs(device: str) -> tuple[Any, Tensor, Tensor]:
    from ibcore.models.gmvib import BottleneckClassifier

    model = BottleneckClassifier("gmvib", 64 * 64, 10, latent_dim=8, components=3, hidden=(16,),
                                 conv_channels=(4,), generator=_gen(0)).to(device)
    x = torch.randint(0, 256, (12, 1, 64, 64), dtype=torch.uint8, generator=_gen(1))
    y = torch.zeros(12, 10)
    y[torch.arange(12), torch.arange(12) % 10] = 1.0
    y[torch.arange(12), (torch.arange(12) + 3) % 10] = 1.0
    return model, x, y


@pytest.mark.parametrize("device", DEVICES)
def test_gmvib_evaluation_seeds_no_global_rng_and_leaves_training_streams(
    device: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ibcore.runners import gmvib

    model, x, y = _gmvib_eval_inputs(device)
    kw = {"samples": 3, "beta": 1e-3, "alpha_prior": 1.0, "h_y": 3.8, "seed": 11,
          "device": torch.device(device), "batch_size": 5}
    torch.manual_seed(0)
    if device == "cuda":
        torch.cuda.manual_seed(0)
    cpu_before = torch.get_rng_state()
    cuda_before = torch.cuda.get_rng_state() if device == "cuda" else None
    with monkeypatch.context() as m:
        _forbid_global_seeding(m)
        first = gmvib.evaluate_model(model, x, y, **kw)
        second = gmvib.evaluate_model(model, x, y, **kw)
    assert first == second  # a pure function of the seed
    assert torch.equal(torch.get_rng_state(), cpu_before)
    if cuda_before is not None:
        assert torch.equal(torch.cuda.get_rng_state(), cuda_before)
    assert all(math.isfinite(v) for v in first.values())
    other = gmvib.evaluate_model(model, x, y, **{**kw, "seed": 12})
    assert other["test_ce_nats"] != first["test_ce_nats"]


@pytest.mark.parametrize("device", DEVICES)
def test_gmvib_training_noise_continues_across_an_evaluation(device: str) -> None:
    """The training noise after an evaluation is what it would have been without it (the GPU
    bug: evaluation re-seeded CUDA, so every epoch repeated the same ε and Dirichlet draws)."""
    from ibcore.runners import gmvib

    model, x, y = _gmvib_eval_inputs(device)
    kw = {"samples": 2, "beta": 1e-3, "alpha_prior": 1.0, "h_y": 3.8, "seed": 3,
          "device": torch.device(device)}
    xb = gmvib._inputs(x[:4]).to(device)
    model.train()
    torch.manual_seed(5)
    reference = [model(xb, samples=2).z for _ in range(2)]
    torch.manual_seed(5)
    first = model(xb, samples=2).z
    gmvib.evaluate_model(model, x, y, **kw)
    model.train()
    second = model(xb, samples=2).z
    assert torch.equal(first, reference[0]) and torch.equal(second, reference[1])
    assert not torch.equal(first, second)


# ------------------------------------------------------------------------------ speed switches


def test_speed_switches_default_off_and_validated() -> None:
    from ibcore.runners import entropy_ib, gmvib, infomax, ncvae

    for runner in (entropy_ib, infomax, gmvib, ncvae):
        for cfg in runner.PROFILES.values():
            assert cfg.cudnn_benchmark is False
            assert getattr(cfg, "amp", None) is None
            assert identity_dict(cfg) == {k: v for k, v in as_dict(cfg).items()
                                          if k not in SPEED_DEFAULTS}
    with pytest.raises(UnknownNameError, match="bf16"):
        ibdevice.check_amp("fp16")  # float16 needs a gradient scaler: refused
    import dataclasses
    with pytest.raises(UnknownNameError):
        dataclasses.replace(entropy_ib.PROFILES["paper"], amp="half")
    on = dataclasses.replace(entropy_ib.PROFILES["paper"], amp="bf16")
    assert on.training_view()["amp"] == "bf16"
    assert "amp" not in entropy_ib.PROFILES["paper"].training_view()
    assert identity_dict(on)["amp"] == "bf16"


def test_autocast_is_a_no_op_on_the_cpu_and_cudnn_flag_is_restored() -> None:
    x = torch.randn(4, 4)
    with ibdevice.autocast("cpu", "bf16"):
        assert (x @ x).dtype == torch.float32
    with ibdevice.autocast("cpu", None):
        assert (x @ x).dtype == torch.float32
    old = torch.backends.cudnn.benchmark
    with ibdevice.cudnn_benchmark(not old):
        assert torch.backends.cudnn.benchmark is (not old)
    assert torch.backends.cudnn.benchmark is old


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_autocast_bf16_on_a_gpu() -> None:
    x = torch.randn(8, 8, device="cuda")
    with ibdevice.autocast("cuda", "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    assert (x @ x).dtype == torch.float32


# ------------------------------------------------------------------------------ codec


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_codec_bitstream_from_a_gpu_decodes_identically_on_the_cpu() -> None:
    """A file encoded with the model on the GPU decodes on the CPU to the GPU's reconstruction."""
    from ibcore.codec.bitstream import decode, encode_detailed
    from ibcore.models.ncvae import NCVAE, NCVAEArch

    with ibdevice.isolated_rng("cpu", 0):
        cpu_model = NCVAE(NCVAEArch(channels=16, latent=16, hyper=8)).eval()
    gpu_model = NCVAE(NCVAEArch(channels=16, latent=16, hyper=8), device="cuda").eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    g = _gen(2)
    base = torch.rand(3, 8, 12, generator=g)
    image = (F.interpolate(base[None], size=(96, 128), mode="bilinear")[0] * 255).to(torch.uint8)
    res = encode_detailed(gpu_model, image)
    assert torch.equal(decode(gpu_model, res.data), res.reconstruction)
    assert torch.equal(decode(cpu_model, res.data), res.reconstruction)


# ------------------------------------------------------------------------------ smoke runs


def _data_root() -> Path | None:
    if "IBCORE_DATA" in os.environ:
        return Path(os.environ["IBCORE_DATA"])
    return SHARED_DATA if SHARED_DATA.is_dir() else None


CHAPTER_DATA = {
    "foundations": (),
    "gmvib": ("MNIST", "FashionMNIST"),
    "glasses": ("MNIST", "FashionMNIST"),
    "entropy_ib": ("FashionMNIST",),
    "infomax": ("FashionMNIST",),
    "ncvae": ("images/photos", "images/kodak"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chapter", sorted(CHAPTER_DATA))
def test_chapter_smoke_run_on_device(chapter: str, device: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chapter's smoke profile end to end on ``device``; on a GPU once more with ``resume``
    (which reads the finished models and evaluations back)."""
    from ibcore.runners import get_runner

    if device == "cpu":
        pytest.skip("on the CPU the notebook tests run every chapter's smoke profile end to end")
    root = _data_root()
    needed = CHAPTER_DATA[chapter]
    if needed and (root is None or not all((root / p).is_dir() for p in needed)):
        pytest.skip(f"{chapter} needs {', '.join(needed)} under $IBCORE_DATA")
    if root is not None:
        monkeypatch.setenv("IBCORE_DATA", str(root))
    runner = get_runner(chapter)
    results = tmp_path / "results"
    written = runner.run("smoke", device=device, results_root=results, progress=False)
    assert set(written) == set(runner.EXPERIMENTS)
    # once more with resume: the finished models and evaluations are read back
    written = runner.run("smoke", device=device, results_root=results, progress=False,
                         resume=True)
    for path in written.values():
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        assert record["provenance"]["device"].startswith(device)
        assert record["metrics"]

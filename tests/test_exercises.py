"""The exercises' self-checks: references pass, and every check rejects wrong answers with its message."""

from __future__ import annotations

import math

import pytest
import torch

from ibcore.errors import InvalidParameterError, UnknownNameError
from ibcore.exercises import CHECKS, check, names, reference, task

CHECK_NAMES = names()
MISTAKES = [(name, i) for name, c in CHECKS.items() for i in range(len(c.mistakes))]


def test_every_chapter_has_checks() -> None:
    chapters = {n.split(".")[0] for n in CHECK_NAMES}
    assert chapters == {"foundations", "gmvib", "glasses", "entropy_ib", "ncvae", "infomax"}


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_reference_passes(name: str) -> None:
    result = check(name, reference(name))
    assert result.passed, result.message
    assert "correct on all" in result.message
    assert task(name)


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_every_check_has_a_known_mistake(name: str) -> None:
    assert CHECKS[name].mistakes, f"{name} has no known mistake to recognise"


@pytest.mark.parametrize(("name", "index"), MISTAKES, ids=lambda v: str(v))
def test_known_mistake_fails_with_its_message(name: str, index: int) -> None:
    mistake = CHECKS[name].mistakes[index]
    result = check(name, mistake.wrong)
    assert not result.passed
    assert result.message == mistake.message


# ---------------------------------------------------------------------------------------------
# the generic diagnoses, on checks whose reference is a plain function of tensors
# ---------------------------------------------------------------------------------------------


def test_sign_flip_is_named() -> None:
    ref = reference("gmvib.gaussian_kl")
    result = check("gmvib.gaussian_kl", lambda mu, lv: -ref(mu, lv))
    assert not result.passed and "sign is flipped" in result.message


def test_constant_offset_is_named() -> None:
    ref = reference("entropy_ib.knn_entropy")
    result = check("entropy_ib.knn_entropy", lambda z, k: ref(z, k) + 0.25)
    assert not result.passed and "off by a constant: every value is 0.25 away" in result.message


def test_missing_half_is_named() -> None:
    ref = reference("gmvib.gaussian_kl")
    result = check("gmvib.gaussian_kl", lambda mu, lv: 2 * ref(mu, lv))
    assert not result.passed and "constant factor" in result.message
    assert "factor ½ missing" in result.message


def test_bits_for_nats_is_named() -> None:
    ref = reference("foundations.infonce")
    result = check("foundations.infonce", lambda s: ref(s) / math.log(2))
    assert not result.passed and "bits where nats are wanted" in result.message


def test_wrong_shape_is_named() -> None:
    ref = reference("gmvib.gaussian_kl")
    result = check("gmvib.gaussian_kl", lambda mu, lv: ref(mu, lv).sum())
    assert not result.passed
    assert result.message.startswith("wrong shape: got (), expected (3,)")
    assert "keep (the batch)" in result.message


def test_nan_is_named_with_the_checks_hint() -> None:
    result = check("entropy_ib.knn_entropy", lambda z, k: torch.tensor(float("nan")))
    assert not result.passed and result.message.startswith("returned NaN on input z of shape")


def test_naive_dv_overflows_and_is_told_about_logsumexp() -> None:
    def naive(scores: torch.Tensor) -> torch.Tensor:
        off = scores[~torch.eye(scores.shape[0], dtype=torch.bool)]
        return scores.diagonal().mean() - torch.log(torch.exp(off).mean())

    result = check("infomax.dv", naive)
    assert not result.passed
    assert "infinite value" in result.message and "logsumexp" in result.message


def test_exception_is_reported_with_the_input() -> None:
    def broken(y_hat, mean, scale):
        raise RuntimeError("not written yet")

    result = check("ncvae.bin_bits", broken)
    assert not result.passed
    assert "raised RuntimeError: not written yet — on input 6 symbols" in result.message


def test_non_numbers_are_reported() -> None:
    result = check("ncvae.bin_bits", lambda y, m, s: "12 bits")
    assert not result.passed and "returned a str, not numbers" in result.message


def test_tuple_length_is_checked() -> None:
    ref = reference("foundations.ib_curve_point")
    result = check("foundations.ib_curve_point", lambda rho, b: ref(rho, b)[0])
    assert not result.passed and "2 values" in result.message


def test_mapping_keys_and_values_are_checked() -> None:
    ref = reference("glasses.coefficients")

    def drops_d(model, beta):
        out = dict(ref(model, beta))
        out.pop("D", None)
        return out

    result = check("glasses.coefficients", drops_d)
    assert not result.passed and result.message.startswith("missing D — on input model = 'gan'")

    def wrong_gan(model, beta):
        out = dict(ref(model, beta))
        if model == "gan":
            out["D"] = 1.0
        return out

    result = check("glasses.coefficients", wrong_gan)
    assert not result.passed
    assert result.message == "on input model = 'gan', beta = 0.5: D is 1, expected 0.5"


def test_first_wrong_input_is_reported() -> None:
    ref = reference("foundations.ib_curve_point")

    def wrong_at_large_beta(rho, beta):
        i_xz, i_zy = ref(rho, beta)
        return (i_xz, i_zy + (0.1 if beta > 10 else 0.0))

    result = check("foundations.ib_curve_point", wrong_at_large_beta)
    assert not result.passed
    assert "wrong on input rho = (0.9, 0.6, 0.3), beta = 20 (entry 1)" in result.message
    assert "right on 3 of 4 inputs" in result.message


def test_inputs_are_protected_from_in_place_edits() -> None:
    ref = reference("gmvib.gaussian_kl")

    def edits(mu, logvar):
        out = ref(mu, logvar)
        mu.zero_()
        return out

    assert check("gmvib.gaussian_kl", edits).passed


def test_bad_use_gets_a_clear_error() -> None:
    with pytest.raises(UnknownNameError, match="gmvib.dirichlet_kl"):
        check("gmvib.dirichlet", reference("gmvib.dirichlet_kl"))
    with pytest.raises(InvalidParameterError, match="no parentheses"):
        check("gmvib.dirichlet_kl", 3.0)


def test_result_renders_for_jupyter() -> None:
    ok = check("gmvib.gaussian_kl", reference("gmvib.gaussian_kl"))
    assert bool(ok) and "✓ passed" in ok._repr_markdown_()
    bad = check("gmvib.gaussian_kl", lambda mu, lv: -reference("gmvib.gaussian_kl")(mu, lv))
    assert not bool(bad) and "✗ not yet" in bad._repr_markdown_() and str(bad) == bad.message

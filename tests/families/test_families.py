"""Model families: the registry, the one score-head rule, and each family delegating to the
functions triage, the audit and the saliency evaluation used before (same tensors, same numbers)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tumour_model_helpers import head_image, tiny_tumour_model

from medassist.datamodel import Geometry, Image
from medassist.errors import MedassistError
from medassist.explain.saliency import to_source_geometry
from medassist.families import FAMILIES, ModelFamily, family_for
from medassist.families.brain_mr import BRAIN_MR, BrainMRFamily
from medassist.families.radiograph import RADIOGRAPH, RadiographFamily
from medassist.models import tumor
from medassist.models.heads import SCORE_HEADS, score_probability
from medassist.models.spec import INPUT_KINDS, PreprocessSpec
from medassist.preprocess.transforms import letterbox_for, prepare_2d


def _spec(**changes):
    _, spec = tiny_tumour_model(32, validation={"inference": {"null_logit": {"mean": -3.0, "std": 1.5}}})
    return replace(spec, **changes)


def _radiograph(rows=40, cols=56, seed=0) -> Image:
    pixels = np.random.default_rng(seed).random((1, rows, cols)).astype(np.float32)
    return Image(pixels=pixels * 1000, display=pixels, geometry=Geometry(spacing=(1.0, 1.0, 1.0), affine=np.eye(4)))


def test_every_input_kind_has_a_family_and_the_registry_chooses_by_kind():
    assert sorted(FAMILIES) == sorted(INPUT_KINDS)
    assert all(isinstance(f, ModelFamily) and FAMILIES[f.name] is f for f in FAMILIES.values())
    assert family_for(_spec(input_kind="image2d")) is RADIOGRAPH and isinstance(RADIOGRAPH, RadiographFamily)
    assert family_for(_spec(input_kind="volume")) is BRAIN_MR and isinstance(BRAIN_MR, BrainMRFamily)


def test_a_spec_without_a_kind_is_a_radiograph_model():
    class Bare:
        name = "bare"

    assert family_for(Bare()) is RADIOGRAPH
    assert family_for(_spec(input_kind="")) is RADIOGRAPH


def test_an_unknown_kind_is_a_clear_error():
    with pytest.raises(MedassistError, match=r"model tumor_test: unknown input kind 'ct3d'; known: \['image2d', 'volume'\]"):
        family_for(_spec(input_kind="ct3d"))


@pytest.mark.parametrize("head", SCORE_HEADS)
@pytest.mark.parametrize("family", [RADIOGRAPH, BRAIN_MR], ids=lambda f: f.name)
def test_probabilities_are_the_one_score_head_rule(family, head):
    gen = torch.Generator().manual_seed(3)
    logits, cells = torch.randn(5, 4, generator=gen), torch.randn(5, 1, 3, 3, generator=gen)
    got = family.probabilities(logits, cells, _spec(score_head=head))
    torch.testing.assert_close(got, score_probability(logits, cells, head), rtol=0, atol=0)


def test_radiograph_prepare_is_prepare_2d_of_the_first_slice():
    spec = _spec(input_kind="image2d")
    image = _radiograph()
    prepared = RADIOGRAPH.prepare(image, spec)
    tensor, box = prepare_2d(image.display[0], spec.preprocess)
    assert torch.equal(prepared.inputs, tensor[None]) and prepared.letterbox == box and prepared.slices == ()
    study = RADIOGRAPH.aggregate(torch.tensor([0.25]), ())
    assert study.score == 0.25 and study.slices == ()
    with pytest.raises(ValueError, match="expected \\(slices, rows, cols\\) pixels"):
        RADIOGRAPH.prepare(replace(image, display=image.display[0]), spec)


def test_radiograph_score_study_is_the_score_head_of_its_one_input():
    net, spec = tiny_tumour_model(32)
    spec = replace(spec, input_kind="image2d", score_head="mean")
    prepared = RADIOGRAPH.prepare(_radiograph(), spec)
    with torch.no_grad():
        expected = float(score_probability(*net.forward_all(prepared.inputs), "mean")[0])
    assert RADIOGRAPH.score_study(net, spec, prepared).score == pytest.approx(expected, abs=1e-6)


def test_radiograph_plane_maps_back_through_the_letterbox():
    pre = PreprocessSpec(input_size=32)
    pixels = np.random.default_rng(1).random((40, 56)).astype(np.float32)
    plane = RADIOGRAPH.prepare_plane(pixels, pre)
    tensor, box = prepare_2d(pixels, pre)
    assert torch.equal(plane.input, tensor) and plane.frame == box and plane.support is None
    m = np.random.default_rng(2).normal(size=(32, 32)).astype(np.float32)
    np.testing.assert_array_equal(plane.to_source(m), to_source_geometry(m, box))
    assert plane.to_source(m).shape == (40, 56) and plane.to_source(m).min() >= 0


def test_radiograph_saliency_inputs_reuse_the_scoring_inputs():
    spec = _spec(input_kind="image2d")
    image = _radiograph()
    inputs = RADIOGRAPH.prepare(image, spec).inputs
    found = RADIOGRAPH.saliency_inputs(image, spec, (), inputs)
    assert found.inputs is not None and torch.equal(found.inputs, inputs) and found.slices == (0,)
    assert found.frames == [letterbox_for((40, 56), 32)]
    np.testing.assert_array_equal(found.displays[0], image.display[0])
    assert torch.equal(RADIOGRAPH.saliency_inputs(image, spec, ()).inputs, inputs)  # recomputed the same


def test_brain_mr_delegates_to_the_tumour_model():
    net, spec = tiny_tumour_model(32, validation={"inference": {"null_logit": {"mean": -3.0, "std": 1.5}}})
    spec = replace(spec, input_kind="volume")
    image = head_image()
    prepared = BRAIN_MR.prepare(image, spec)
    reference = tumor.prepare_volume(spec, image)
    assert torch.equal(prepared.inputs, reference.inputs) and np.array_equal(prepared.scored, reference.scored)
    study = BRAIN_MR.score_study(net, spec, prepared)
    result = tumor.score_volume(net, spec, image)
    assert study.score == result.score and study.slices == tuple(result.slices)
    with pytest.raises(TypeError, match="scored whole"):
        BRAIN_MR.aggregate(torch.zeros(3), ())


def test_brain_mr_refuses_a_volume_without_a_brain():
    spec = _spec(input_kind="volume")
    image = head_image()
    flat = np.full_like(image.pixels, 7.0)
    with pytest.raises(MedassistError, match=tumor.NO_BRAIN):
        BRAIN_MR.prepare(Image(pixels=flat, display=flat, geometry=image.geometry), spec)


def test_brain_mr_plane_is_prepare_slice_with_the_head_crop_as_support():
    pre = PreprocessSpec(input_size=32)
    pixels = head_image().pixels[10]
    plane = BRAIN_MR.prepare_plane(pixels, pre)
    tensor, frame = tumor.prepare_slice(pixels, pre)
    assert torch.equal(plane.input, tensor) and plane.frame == frame
    r0, r1, c0, c1 = frame.crop
    assert plane.support.sum() == (r1 - r0) * (c1 - c0) and plane.support[r0:r1, c0:c1].all()
    m = np.random.default_rng(2).normal(size=(32, 32)).astype(np.float32)
    np.testing.assert_array_equal(plane.to_source(m), np.maximum(frame.to_source(m, pixels.shape), 0.0))


def test_brain_mr_saliency_inputs_are_the_stored_slices_inputs():
    spec = _spec(input_kind="volume")
    image = head_image()
    found = BRAIN_MR.saliency_inputs(image, spec, (12, 9, 12))
    assert found.slices == (9, 12) and found.inputs.shape == (2, 1, 32, 32)
    maps = np.ones((2, 32, 32), np.float32)
    stored = found.to_stored(maps)
    assert stored.shape == (2, 48, 48) and stored.dtype == np.float32 and stored.min() >= 0
    with pytest.raises(ValueError, match="outside 0..19"):
        BRAIN_MR.saliency_inputs(image, spec, (20,))
    with pytest.raises(ValueError, match="outside"):
        BRAIN_MR.saliency_inputs(image, spec, ())


@pytest.mark.parametrize("family", [RADIOGRAPH, BRAIN_MR], ids=lambda f: f.name)
def test_the_scoring_shape_and_units(family):
    assert family.batches_across_studies is not family.volumetric
    assert family.case_unit == ("slice" if family.volumetric else "case")
    assert family.jobs_per_batch(8) == (1 if family.volumetric else 8)

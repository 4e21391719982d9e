"""Volumes for slice-wise models: orientation, plane, streaming, in-brain test, study aggregation."""

from __future__ import annotations

import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from medassist.datamodel import Geometry, Image
from medassist.ingest.nifti import read_nifti_series
from medassist.preprocess import volume as vol


def _nifti_image(tmp_path, data_ijk: np.ndarray, affine: np.ndarray, name: str = "v.nii.gz") -> Image:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data_ijk.astype(np.float32), affine), str(path))
    return read_nifti_series(str(path)).load()


def _world_ras(shape, affine) -> np.ndarray:
    """RAS world coordinates (3, i, j, k) of every voxel."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    return np.einsum("ab,bijk->aijk", affine[:3, :3], ijk) + affine[:3, 3, None, None, None]


AFFINES = {
    "ras": np.diag([1.0, 1.0, 1.0, 1.0]),
    "lps": np.diag([-1.0, -1.0, 1.0, 1.0]),
    "flipped_si": np.diag([1.0, -1.0, -2.0, 1.0]),
    # voxel axes permuted: i -> S, j -> R, k -> A (a sagittal-like storage), anisotropic
    "permuted": np.array([[0.0, 0.9, 0.0, 0.0], [0.0, 0.0, 1.1, 0.0], [2.5, 0.0, 0.0, 0.0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_reorient_canonical_points_axes_superior_posterior_left(tmp_path, name):
    affine = AFFINES[name]
    shape = (6, 7, 8)
    world = _world_ras(shape, affine)  # R, A, S coordinates
    image_x = _nifti_image(tmp_path, world[0], affine, "x.nii.gz")
    image_y = _nifti_image(tmp_path, world[1], affine, "y.nii.gz")
    image_z = _nifti_image(tmp_path, world[2], affine, "z.nii.gz")
    vx, axes = vol.reorient_canonical(image_x, "pixels")
    vy, _ = vol.reorient_canonical(image_y, "pixels")
    vz, _ = vol.reorient_canonical(image_z, "pixels")
    assert axes.codes == ("S", "P", "L")
    assert np.all(np.diff(vz, axis=0) > 0)  # axis 0 runs towards superior
    assert np.all(np.diff(vy, axis=1) < 0)  # axis 1 runs towards posterior (A decreases)
    assert np.all(np.diff(vx, axis=2) < 0)  # axis 2 runs towards the patient's left (R decreases)
    for a in range(3):
        assert np.allclose(np.diff(vz, axis=0), axes.spacing[0])
    assert sorted(vx.shape) == sorted(shape)
    assert np.shares_memory(vx, image_x.pixels), "reorientation must be a view, not a copy"


def test_source_slice_index_maps_back_to_stored_order():
    # stored slices run superior -> inferior (negative slice step in LPS z)
    affine = np.diag([0.0, 0.0, 0.0, 1.0])
    affine[2, 0], affine[1, 1], affine[0, 2] = -5.0, 1.0, 1.0
    pixels = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 3, 3), np.float32)
    image = Image(pixels=pixels, display=pixels, geometry=Geometry(spacing=(5, 1, 1), affine=affine))
    volume, axes = vol.reorient_canonical(image, "pixels")
    assert list(volume[:, 0, 0]) == [3, 2, 1, 0]
    assert [axes.source_slice_index(0, i) for i in range(4)] == [3, 2, 1, 0]
    assert axes.source_slice_index(1, 0) is None  # a coronal cut is a reformat


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_stored_plane_puts_a_canonical_slice_back_on_its_stored_slice(tmp_path, name):
    rng = np.random.default_rng(0)
    image = _nifti_image(tmp_path, rng.random((6, 7, 8)), AFFINES[name])
    volume, axes = vol.reorient_canonical(image, "pixels")
    axis = axes.source_axes.index(0)  # the canonical axis that cuts stored slices
    for c in range(volume.shape[axis]):
        shown = vol.cut_slices(volume, axis, c, c + 1)[0]
        stored, plane = vol.stored_plane(np.asarray(shown), image.pixels.shape, axes, axis, c)
        assert stored == axes.source_index(axis, c)
        np.testing.assert_array_equal(plane, image.pixels[stored])
    other = (axis + 1) % 3
    with pytest.raises(ValueError, match="reformat"):
        vol.stored_plane(np.asarray(vol.cut_slices(volume, other, 0, 1)[0]), image.pixels.shape, axes, other, 0)


def _axes(spacing, shape, known=True):
    codes = vol.CANONICAL_CODES if known else ("?", "?", "?")
    return vol.Axes((0, 1, 2), (False, False, False), spacing, shape, codes)


def test_acquisition_plane():
    assert vol.acquisition_plane(_axes((5.0, 0.5, 0.5), (24, 512, 512))) == 0  # thick axial
    assert vol.acquisition_plane(_axes((0.5, 6.0, 0.5), (256, 20, 256))) == 1  # thick coronal
    assert vol.acquisition_plane(_axes((0.9, 0.9, 4.0), (256, 256, 30))) == 2  # thick sagittal
    assert vol.acquisition_plane(_axes((1.0, 1.0, 1.0), (181, 217, 181))) == 0  # isotropic: axial
    assert vol.acquisition_plane(_axes((1.0, 1.0, 1.0), (256, 256, 12))) == 2  # isotropic slab
    no_affine = vol.Axes((0, 1, 2), (False,) * 3, (1.0, 1.0, 1.0), (10, 64, 64), ("?", "?", "?"))
    assert vol.acquisition_plane(no_affine) == 0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_iter_slices_streams_float32_batches_without_copying_the_volume(axis):
    volume = np.random.default_rng(0).random((96, 128, 160), dtype=np.float32)
    view = volume[::-1, :, ::-1].transpose(0, 1, 2)  # a strided view, as reorient_canonical gives
    batch = 8
    tracemalloc.start()
    seen = 0
    for idx, chunk in vol.iter_slices(view, axis, batch):
        assert chunk.dtype == np.float32 and chunk.flags.c_contiguous and len(chunk) <= batch
        seen += len(idx)
        del chunk
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == view.shape[axis]
    one_batch = batch * view.size // view.shape[axis] * 4
    assert peak < 3 * one_batch, f"peak {peak} bytes vs one batch {one_batch}"
    assert peak < volume.nbytes / 4


def test_cut_slices_orientation():
    v = np.zeros((4, 5, 6), np.float32)
    v[3, 0, 0] = 1  # superior, anterior, patient right
    assert vol.cut_slices(v, 0, 3, 4)[0][0, 0] == 1  # axial: anterior top, right on the left
    assert vol.cut_slices(v, 1, 0, 1)[0][0, 0] == 1  # coronal: superior top, right on the left
    assert vol.cut_slices(v, 2, 0, 1)[0][0, 0] == 1  # sagittal: superior top, anterior on the left


def _head_volume(n=40, size=96) -> np.ndarray:
    """A synthetic T1-like head: a bright scalp shell, dark skull, a grey brain; caps at both ends."""
    z, y, x = np.mgrid[0:n, 0:size, 0:size]
    r = np.sqrt(((z - n / 2) / (n / 2)) ** 2 + ((y - size / 2) / (size * 0.45)) ** 2 + ((x - size / 2) / (size * 0.4)) ** 2)
    rng = np.random.default_rng(1)
    v = rng.normal(5, 2, (n, size, size))  # background noise
    v[r < 1.0] = 200  # scalp
    v[r < 0.93] = 20  # skull
    v[r < 0.88] = 110  # brain
    return np.clip(v, 0, None).astype(np.float32)


def test_brain_fraction_empty_skull_only_and_brain_slices():
    volume = _head_volume()
    ref = vol.intensity_reference(volume)
    empty = volume[0]
    middle = volume[len(volume) // 2]
    # a skull-only slice: just the thin scalp ring
    ring = np.full_like(middle, 5.0)
    yy, xx = np.mgrid[0 : ring.shape[0], 0 : ring.shape[1]]
    rr = np.hypot(yy - 48, xx - 48)
    ring[(rr > 40) & (rr < 42)] = 200
    assert vol.brain_fraction(np.zeros((64, 64))) == 0.0
    assert vol.brain_fraction(empty, ref) < 0.01
    assert vol.brain_fraction(ring, ref) < 0.06
    assert vol.brain_fraction(middle, ref) > 0.3
    assert vol.brain_fraction(middle) > 0.3  # a lone 2D slice uses its own scale
    fractions = np.array([vol.brain_fraction(s, ref) for s in volume])
    inside = vol.in_brain(fractions, min_fraction=0.04, min_relative=0.3)
    assert not inside[0] and not inside[-1] and inside[len(volume) // 2]
    assert vol.brain_fraction(ring, ref) < 0.04 or not vol.in_brain(
        np.array([vol.brain_fraction(ring, ref), fractions.max()]), min_fraction=0.04, min_relative=0.3)[0]


def test_aggregation_same_scores_same_study_score():
    for s in (0.05, 0.5, 0.93):
        one, _ = vol.aggregate_study_score(np.array([s]), 1)
        many, _ = vol.aggregate_study_score(np.full(150, s), 150, spacing_mm=1.0)
        thick, _ = vol.aggregate_study_score(np.full(24, s), 24, spacing_mm=5.0)
        assert one == pytest.approx(s) and many == pytest.approx(s) and thick == pytest.approx(s)


def _normal_scores(rng, n):
    """Scores of normal slices: logit-normal, as the shipped null model assumes."""
    return 1 / (1 + np.exp(-rng.normal(-3.0, 1.2, n)))


def test_aggregation_false_positive_rate_does_not_grow_with_slice_count():
    rng = np.random.default_rng(0)
    null = vol.NullModel.fit(_normal_scores(rng, 100_000))
    threshold = null.score_at_tail(0.05)  # 5% of single normal slices flagged
    rate = lambda n, spacing, trials: np.mean([  # noqa: E731
        vol.aggregate_study_score(_normal_scores(rng, n), n, spacing_mm=spacing, null=null)[0] >= threshold
        for _ in range(trials)])
    single = rate(1, None, 4000)
    assert single == pytest.approx(0.05, abs=0.012)
    for n, spacing in ((150, 1.0), (30, 5.0), (150, 5.0), (12, 7.0)):
        assert rate(n, spacing, 600) <= 0.05 + 0.025, (n, spacing)
    uncorrected = np.mean([vol.aggregate_study_score(_normal_scores(rng, 30), 30, spacing_mm=5.0)[0] >= threshold
                           for _ in range(600)])
    assert uncorrected > 0.15  # windows alone do not stop the growth on thick stacks
    assert np.mean([_normal_scores(rng, 150).max() >= threshold for _ in range(300)]) > 0.9  # plain max


def test_null_model_round_trip_and_single_slice_unchanged():
    null = vol.NullModel(-3.0, 1.2)
    for s in (0.01, 0.2, 0.7, 0.999):
        assert null.score_at_tail(null.tail(s)) == pytest.approx(s, rel=1e-6)
        assert vol.aggregate_study_score(np.array([s]), 1, null=null)[0] == pytest.approx(s)


def test_aggregation_keeps_a_real_lesion_and_names_its_slices():
    scores = np.full(150, 0.1)
    scores[60:75] = 0.9  # a 15 mm lesion in a 1 mm volume
    score, flagged = vol.aggregate_study_score(scores, 150, spacing_mm=1.0, threshold=0.5)
    assert score == pytest.approx(0.9)
    corrected, _ = vol.aggregate_study_score(scores, 150, spacing_mm=1.0, null=vol.NullModel(-3.0, 1.2))
    assert 0.5 < corrected < 0.9  # the correction lowers it, the lesion stays above 0.5
    assert flagged and all(60 <= i < 75 for i in flagged)
    lone = np.full(150, 0.1)
    lone[30] = 0.99  # one isolated slice: not sustained over 10 mm
    assert vol.aggregate_study_score(lone, 150, spacing_mm=1.0)[0] < 0.5
    assert vol.aggregate_study_score(np.array([0.99]), 1)[0] == pytest.approx(0.99)
    with pytest.raises(ValueError):
        vol.aggregate_study_score(np.zeros(3), 4)
    assert vol.aggregate_study_score(np.zeros(0), 0) == (0.0, ())


def test_window_length():
    assert vol.window_length(1, 1.0, 10) == 1
    assert vol.window_length(150, 1.0, 10) == 10
    assert vol.window_length(24, 5.0, 10) == 2
    assert vol.window_length(24, 7.0, 10) == 1
    assert vol.window_length(24, None, 10) == 2

"""Property-based tests (hypothesis) for slice geometry and DICOM windowing.

Geometry: slice order depends only on where the slices are, never on file order; spacings are
positive; the affine of an evenly spaced stack maps indices onto the slice positions.
Windowing (PS3.3 C.11.2.1.2): output in 0..1, non-decreasing in the input, and equal to the
standard's LINEAR / LINEAR_EXACT / SIGMOID formulas up to float32 rounding.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medassist.ingest.dicom import FrameRef
from medassist.ingest.geometry import build_geometry, position_along_normal, slice_normal
from medassist.ingest.pixels import apply_window, percentile_scale
from medassist.ingest.series import order_frames

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPS32 = float(np.finfo(np.float32).eps)

# --- geometry --------------------------------------------------------------------------------

unit = st.floats(-1.0, 1.0, allow_nan=False)
coordinate = st.floats(-500.0, 500.0, allow_nan=False)


@st.composite
def orientations(draw) -> tuple[float, ...]:
    """Six direction cosines (row direction, column direction) of a random rotation."""
    q = np.array([draw(unit) for _ in range(4)])
    assume(np.linalg.norm(q) > 0.1)
    w, x, y, z = q / np.linalg.norm(q)
    rotation = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
    return tuple(float(v) for v in np.concatenate([rotation[:, 0], rotation[:, 1]]))


@st.composite
def stacks(draw, *, even: bool = False) -> tuple[tuple[float, ...], list[FrameRef], list[float]]:
    """(orientation, frames in file order, each frame's offset along the normal): slices at
    distinct offsets, shifted in plane at random, with arbitrary instance numbers."""
    orientation = draw(orientations())
    n = draw(st.integers(1, 10))
    if even:
        start, gap = draw(coordinate), draw(st.floats(0.1, 20.0))
        offsets = [start + i * gap for i in range(n)]
    else:
        offsets = draw(st.lists(coordinate, min_size=n, max_size=n, unique=True))
        assume(n == 1 or np.min(np.diff(np.sort(offsets))) > 1e-3)
    normal = slice_normal(orientation)
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    origin = np.array([draw(coordinate) for _ in range(3)])
    frames = []
    for i, offset in enumerate(offsets):
        drift = (0.0, 0.0) if even else (draw(coordinate), draw(coordinate))
        position = origin + offset * normal + drift[0] * row + drift[1] * col
        instance = draw(st.none() | st.integers(0, 5))
        frames.append(FrameRef(f"/series/{i:02d}.dcm", 0, tuple(float(v) for v in position), instance))
    return orientation, frames, offsets


@SETTINGS
@given(stacks(), st.randoms(use_true_random=False))
def test_slice_order_follows_the_normal_whatever_the_file_order(stack, rnd):
    orientation, frames, offsets = stack
    shuffled = frames[:]
    rnd.shuffle(shuffled)

    ordered = order_frames(frames, orientation)

    assert order_frames(shuffled, orientation) == ordered
    along = [position_along_normal(f.position, orientation) for f in ordered]
    assert along == sorted(along)
    by_offset = [f for _, f in sorted(zip(offsets, frames), key=lambda pair: pair[0])]
    assert ordered == by_offset


@SETTINGS
@given(st.lists(st.tuples(st.none() | st.integers(-3, 3), st.integers(0, 2)), min_size=1, max_size=8),
       st.randoms(use_true_random=False))
def test_order_without_positions_is_by_instance_number_then_file(entries, rnd):
    frames = [FrameRef(f"/s/{i}.dcm", frame, None, instance) for i, (instance, frame) in enumerate(entries)]
    shuffled = frames[:]
    rnd.shuffle(shuffled)

    ordered = order_frames(shuffled, None)

    assert ordered == order_frames(frames, None)
    instances = [f.instance_number if f.instance_number is not None else float("inf") for f in ordered]
    assert instances == sorted(instances)


@SETTINGS
@given(stacks(), st.none() | st.floats(-10.0, 10.0), st.booleans())
def test_spacings_are_positive(stack, nominal, drop_positions):
    orientation, frames, _ = stack
    ordered = order_frames(frames, orientation)
    positions = None if drop_positions else [f.position for f in ordered]

    geometry = build_geometry(n_slices=len(ordered), pixel_spacing=(0.7, 0.9), orientation=orientation,
                              positions=positions, nominal_slice_spacing=nominal)

    assert all(np.isfinite(s) and s > 0 for s in geometry.spacing), geometry.spacing


@SETTINGS
@given(stacks(even=True), st.floats(0.1, 3.0), st.floats(0.1, 3.0), st.randoms(use_true_random=False))
def test_affine_of_an_evenly_spaced_stack_maps_indices_onto_positions(stack, row_spacing, col_spacing, rnd):
    orientation, frames, offsets = stack
    shuffled = frames[:]
    rnd.shuffle(shuffled)
    ordered = order_frames(shuffled, orientation)

    geometry = build_geometry(n_slices=len(ordered), pixel_spacing=(row_spacing, col_spacing),
                              orientation=orientation, positions=[f.position for f in ordered])

    assert geometry.affine is not None
    row_dir, col_dir = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    for index, frame in enumerate(ordered):
        for r, c in ((0, 0), (3, 0), (0, 5), (2, 7)):
            expected = np.asarray(frame.position) + r * row_spacing * col_dir + c * col_spacing * row_dir
            mapped = (geometry.affine @ np.array([index, r, c, 1.0]))[:3]
            np.testing.assert_allclose(mapped, expected, atol=1e-6 * (1 + np.abs(expected).max()))
    if len(ordered) > 1:
        gap = offsets[1] - offsets[0]
        assert np.isclose(geometry.spacing[0], gap, rtol=1e-6, atol=1e-9)
        assert np.isclose(np.linalg.norm(geometry.affine[:3, 0]), gap, rtol=1e-6, atol=1e-9)


# --- windowing -------------------------------------------------------------------------------

values32 = arrays(np.float32, st.integers(1, 64), elements=st.floats(-70000, 70000, width=32))
centers = st.floats(-40000, 40000, allow_nan=False)
functions = st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID"])


def standard_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID), in float64,
    for an output range of 0..1."""
    x = x.astype(np.float64)
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp(huge) = inf gives the right limit, 0
            return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.where(x <= center - width / 2, 0.0,
                        np.where(x > center + width / 2, 1.0, (x - center) / width + 0.5))
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    inside = ((x - (center - 0.5)) / (width - 1) + 0.5) if width > 1 else np.zeros_like(x)
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, inside))


@SETTINGS
@given(values32, centers, st.floats(1.0, 50000.0), functions)
def test_window_output_is_in_0_1_and_non_decreasing(x, center, width, function):
    out = apply_window(np.sort(x), center, width, function=function)

    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.diff(out) >= 0), "windowing never reverses the order of two values"


@SETTINGS
@given(values32, centers, st.floats(1.0, 50000.0), functions)
def test_window_matches_the_standards_formulas(x, center, width, function):
    out = apply_window(x, center, width, function=function).astype(np.float64)

    expected = standard_window(x, center, width, function)
    # float32 arithmetic: the inputs are rounded to ~EPS32 of their size before the division.
    scale = width - 1.0 if function == "LINEAR" and width > 1 else width
    tolerance = 8 * EPS32 * (1.0 + (np.abs(x) + abs(center) + width) / max(scale, 1e-3))
    if function == "LINEAR" and width <= 1:  # a step at center - 0.5: exact away from the step
        tolerance = np.where(np.abs(x - (center - 0.5)) <= 4 * EPS32 * (1 + abs(center)), 1.0, 0.0)
    assert np.all(np.abs(out - expected) <= tolerance), (out, expected)


@SETTINGS
@given(values32, centers, st.floats(0.001, 0.999), functions)
def test_window_narrower_than_one_stays_in_0_1(x, center, width, function):
    # LINEAR requires width >= 1 (PS3.3); narrower windows still come in from real files.
    out = apply_window(x, center, width, function=function)
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0


@SETTINGS
@given(arrays(np.float32, st.integers(1, 300), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_percentile_scale_is_in_0_1_and_non_decreasing(x):
    out = percentile_scale(np.sort(x))

    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.diff(out) >= 0)

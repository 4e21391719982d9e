"""DICOM headers, slice order, geometry and decoding (medassist.ingest.dicom / series / pixels)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian

from medassist.errors import MedassistError
from medassist.ingest import discover_series, read_series_file
from medassist.ingest.dicom import DicomHeader, Skipped, read_dicom_header
from medassist.ingest.geometry import slice_normal
from medassist.ingest.pixels import apply_window, decode_file


def _slice_marker(image_pixels: np.ndarray) -> list[float]:
    """Each synthetic slice is filled with one value; read it back per slice."""
    return [float(s[0, 0]) for s in image_pixels]


# --- ordering and geometry -------------------------------------------------------------------


def test_slices_ordered_by_position_not_instance_number_or_file_name(tmp_path, write_dicom):
    # z = 0, 5, 10 written under shuffled names and shuffled InstanceNumbers.
    for name, z, instance in (("c", 0.0, 2), ("a", 5.0, 3), ("b", 10.0, 1)):
        write_dicom(tmp_path / name, np.full((4, 6), 100 + z), position=(-10.0, -20.0, z), instance=instance)

    (series,), problems = discover_series([tmp_path])
    image = series.load()

    assert problems == []
    assert _slice_marker(image.pixels) == [100.0, 105.0, 110.0]
    assert [p.rsplit("/", 1)[-1] for p in series.paths] == ["c", "a", "b"]
    assert image.pixels.shape == (3, 4, 6) and image.pixels.dtype == np.float32
    assert image.geometry.spacing == pytest.approx((5.0, 0.5, 0.75))
    assert image.geometry.positions == ((-10.0, -20.0, 0.0), (-10.0, -20.0, 5.0), (-10.0, -20.0, 10.0))
    assert series.n_instances == 3
    assert series.source_path == str(tmp_path)


def test_order_follows_the_slice_normal_for_oblique_stacks(tmp_path, write_dicom):
    # Sagittal slices stacked along x; the normal cross(row, col) = (-1, 0, 0) decides the order.
    orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    normal = slice_normal(orientation)
    xs = [10.0, 0.0, 5.0]
    for i, x in enumerate(xs):
        write_dicom(tmp_path / f"s{i}", np.full((3, 3), 200 + x), position=(x, 0.0, 0.0), orientation=orientation, instance=i + 1)

    (series,), _ = discover_series([tmp_path])
    image = series.load()

    expected = sorted(xs, key=lambda x: x * normal[0])
    assert _slice_marker(image.pixels) == [200 + x for x in expected]
    assert expected != sorted(xs)  # the normal points to -x here, so this is not a plain sort


def test_affine_maps_indices_to_patient_lps(tmp_path, write_dicom):
    for i, z in enumerate((2.0, 4.0, 6.0)):
        write_dicom(tmp_path / f"{i}.dcm", np.zeros((4, 6)), position=(-10.0, -20.0, z), pixel_spacing=(0.5, 0.75))

    image = discover_series([tmp_path])[0][0].load()
    affine = image.geometry.affine

    def lps(s, r, c):
        return (affine @ np.array([s, r, c, 1.0]))[:3]

    assert lps(0, 0, 0) == pytest.approx([-10.0, -20.0, 2.0])
    assert lps(2, 0, 0) == pytest.approx([-10.0, -20.0, 6.0])
    assert lps(0, 1, 0) == pytest.approx([-10.0, -19.5, 2.0])  # rows advance along the column direction
    assert lps(0, 0, 1) == pytest.approx([-9.25, -20.0, 2.0])  # columns advance along the row direction
    assert image.geometry.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_uneven_slices_get_no_affine(tmp_path, write_dicom):
    for i, z in enumerate((0.0, 1.0, 5.0)):
        write_dicom(tmp_path / f"{i}", np.zeros((2, 2)), position=(0.0, 0.0, z))

    geometry = discover_series([tmp_path])[0][0].load().geometry

    assert geometry.affine is None
    assert geometry.positions is not None and len(geometry.positions) == 3


def test_instance_number_orders_images_without_geometry(tmp_path, write_dicom):
    for name, instance in (("x", 3), ("y", 1), ("z", 2)):
        write_dicom(
            tmp_path / name, np.full((2, 2), instance), instance=instance, position=None,
            orientation=None, modality="CR", sop_class="1.2.840.10008.5.1.4.1.1.1",
        )

    (series,), _ = discover_series([tmp_path])
    image = series.load()

    assert _slice_marker(image.pixels) == [1.0, 2.0, 3.0]
    assert image.geometry.affine is None
    assert image.geometry.positions is None


def test_differently_sized_images_in_one_series_become_separate_stacks(tmp_path, write_dicom):
    write_dicom(tmp_path / "big", np.zeros((8, 8)), position=(0.0, 0.0, 0.0))
    write_dicom(tmp_path / "small", np.zeros((4, 4)), position=(0.0, 0.0, 1.0))

    series, problems = discover_series([tmp_path])

    assert problems == []
    assert sorted(s.load().pixels.shape for s in series) == [(1, 4, 4), (1, 8, 8)]
    assert {s.series_uid for s in series} == {"1.2.3.4.5"}


def test_multiframe_frames_become_slices_in_plane_position_order(dicom_data):
    path = dicom_data / "pydicom-data/eCT_Supplemental.dcm"
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)

    series = read_series_file(path)
    image = series.load()

    # The normal is (0, 0, -1): frame 2 (z = -149) comes before frame 1 (z = -159).
    assert image.geometry.positions == ((99.5, -301.5, -149.0), (99.5, -301.5, -159.0))
    np.testing.assert_array_equal(image.pixels[0], raw[1] - 1024.0)  # per-frame rescale applied
    np.testing.assert_array_equal(image.pixels[1], raw[0] - 1024.0)
    assert image.window == (49.0, 102.0)  # from the Frame VOI LUT functional group
    assert image.geometry.spacing == pytest.approx((10.0, 0.388672, 0.388672))


# --- values and display ----------------------------------------------------------------------


def test_rescale_slope_and_intercept_give_physical_values(tmp_path, write_dicom):
    stored = np.array([[0, 1000], [2000, 3000]])
    path = write_dicom(tmp_path / "ct.dcm", stored, modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.2", slope=2.0, intercept=-1024.0)

    image = read_series_file(path).load()

    np.testing.assert_array_equal(image.pixels[0], stored * 2.0 - 1024.0)


def test_window_sets_display_and_is_reported(tmp_path, write_dicom):
    stored = np.array([[0, 1064, 2024]])  # -1024, 40 and 1000 HU after the rescale
    path = write_dicom(tmp_path / "w.dcm", stored, slope=1.0, intercept=-1024.0, window=(40.0, 400.0))

    image = read_series_file(path).load()

    assert image.window == (40.0, 400.0)
    assert image.display[0, 0, 0] == pytest.approx(0.0, abs=1e-6)
    assert image.display[0, 0, 1] == pytest.approx(0.5, abs=0.01)
    assert image.display[0, 0, 2] == pytest.approx(1.0)


def test_monochrome1_is_inverted_so_bright_means_dense(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "m1.dcm", np.array([[0, 500, 1000]]), photometric="MONOCHROME1", window=(500.0, 1000.0))

    image = read_series_file(path).load()

    assert image.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(image.pixels[0, 0], [0.0, 500.0, 1000.0])  # pixels are not inverted
    assert image.display[0, 0, 0] == pytest.approx(1.0)
    assert image.display[0, 0, 2] == pytest.approx(0.0)


def test_percentile_range_when_there_is_no_window(tmp_path, write_dicom):
    values = np.arange(1000).reshape(10, 100)
    path = write_dicom(tmp_path / "p.dcm", values)

    image = read_series_file(path).load()

    assert image.window is None
    assert image.display.min() == 0.0 and image.display.max() == 1.0
    assert image.display[0, 5, 0] == pytest.approx((500 - 4.995) / (994.005 - 4.995), abs=1e-3)


def test_voi_lut_sequence_wins_over_the_window(tmp_path, write_dicom):
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 8]
    lut.add_new("LUTData", "US", [0, 200, 220, 250])  # steep, then flat: not a linear window
    path = write_dicom(tmp_path / "voi.dcm", np.array([[0, 1, 2, 3]]), window=(1.5, 4.0), VOILUTSequence=Sequence([lut]))

    image = read_series_file(path).load()

    assert image.display[0, 0] == pytest.approx([0.0, 0.8, 0.88, 1.0])


def test_modality_lut_sequence(tmp_path, write_dicom):
    lut = Dataset()
    lut.LUTDescriptor = [3, 0, 16]
    lut.add_new("LUTData", "US", [10, 500, 1000])
    lut.ModalityLUTType = "US"
    path = write_dicom(tmp_path / "mlut.dcm", np.array([[0, 1, 2, 7]]), ModalityLUTSequence=Sequence([lut]))

    image = read_series_file(path).load()

    assert image.pixels[0, 0].tolist() == [10.0, 500.0, 1000.0, 1000.0]


@pytest.mark.parametrize(
    "function, expected",
    [("LINEAR", [0.0, 0.5, 1.0]), ("LINEAR_EXACT", [0.0, 0.5, 1.0]), ("SIGMOID", [0.0, 0.5, 1.0])],
)
def test_window_functions(function, expected):
    out = apply_window(np.array([-1000.0, 40.0, 1000.0]), 40.0, 400.0, function=function)
    assert out == pytest.approx(expected, abs=0.01)


def test_rgb_becomes_luminance(dicom_data):
    path = dicom_data / "pydicom-data/SC_rgb.dcm"
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float32)

    image = read_series_file(path).load()

    assert image.pixels.shape == (1, 100, 100)
    np.testing.assert_allclose(image.pixels[0], rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-3)


@pytest.mark.parametrize(
    "variant",
    ["emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"],
)
def test_encodings_decode_to_the_same_values(dicom_data, variant):
    reference = read_series_file(dicom_data / "pydicom-data/emri_small.dcm").load().pixels

    pixels = read_series_file(dicom_data / "pydicom-data" / variant).load().pixels

    assert pixels.shape == (10, 64, 64)
    np.testing.assert_array_equal(pixels, reference)


def test_deflated_transfer_syntax(tmp_path, write_dicom):
    values = np.arange(12).reshape(3, 4)
    path = write_dicom(tmp_path / "deflated.dcm", values, transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian

    image = read_series_file(path).load()

    np.testing.assert_array_equal(image.pixels[0], values)


# --- problems --------------------------------------------------------------------------------


def test_header_lying_about_size_is_reported_before_allocating(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "liar.dcm", np.zeros((16, 16)))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 4096
    ds.save_as(path)

    _, problems = discover_series([path])
    with pytest.raises(MedassistError) as raised:
        decode_file(str(path))

    assert [p.reason for p in problems] == [
        "pixel data truncated: expected 33554432 bytes (4096 x 4096 x 16 bits), found 512"
    ]
    assert str(raised.value).startswith(f"{path}: pixel data truncated")


def test_image_without_pixel_data_is_reported(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "nopix.dcm", np.zeros((2, 2)))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)

    result = read_dicom_header(str(path))

    assert result.reason == "missing pixel data: MR Image Storage has no Pixel Data"


def test_truncated_file_is_reported_in_discovery(dicom_data):
    path = dicom_data / "pydicom/MR_truncated.dcm"

    series, problems = discover_series([path])

    assert series == []
    assert [str(p) for p in problems] == [f"{path}: pixel data truncated: expected 8192 bytes, found 8130"]


def test_undecodable_stream_is_raised_by_load_naming_the_file(dicom_data):
    path = dicom_data / "pydicom/JPEG2000-embedded-sequence-delimiter.dcm"

    series = read_series_file(path)  # the header is fine: discovery does not decode
    with pytest.raises(MedassistError) as raised:
        series.load()

    assert str(raised.value).startswith(f"{path}: JPEG 2000 stream undecodable: ")


def test_garbage_from_a_broken_lossless_stream_is_not_passed_on(dicom_data):
    path = dicom_data / "pylibjpeg-data/JPEGLossless_1s_1f_i_16_16_bad.dcm"

    with pytest.raises(MedassistError, match="implausible CT values"):
        read_series_file(path).load()


def test_good_ct_with_padding_passes_the_plausibility_check(dicom_data):
    # Same scan as the broken file above, but a sound stream with -3024 HU padding outside the FOV.
    image = read_series_file(dicom_data / "pylibjpeg-data/CT1_JLSN.dcm").load()
    assert image.pixels.min() < -2000
    assert np.isfinite(image.pixels).all()


def test_seg_is_skipped_not_reported(dicom_data):
    result = read_dicom_header(str(dicom_data / "pydicom-data/liver.dcm"), explicit=True)
    assert isinstance(result, Skipped) and result.kind == "non-image"


def test_file_without_preamble_is_detected_by_content(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "bare", np.ones((2, 2)), preamble=False)
    assert open(path, "rb").read(132)[128:132] != b"DICM"

    result = read_dicom_header(str(path))

    assert isinstance(result, DicomHeader)
    assert read_series_file(path).load().pixels.shape == (1, 2, 2)


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower-case body part, on purpose
def test_identifiers(tmp_path, write_dicom):
    path = write_dicom(
        tmp_path / "id.dcm", np.zeros((2, 2)), AccessionNumber="ACC1", BodyPartExamined="chest ",
        PatientSex="F", PatientAge="042Y", Manufacturer="ACME", SeriesDescription="T1 AX",
    )

    series = read_series_file(path)

    assert (series.patient_id, series.accession, series.modality, series.body_part) == ("TEST-PATIENT", "ACC1", "MR", "CHEST")
    assert (series.sex, series.age, series.manufacturer, series.description) == ("F", "042Y", "ACME", "T1 AX")
    assert series.source_path == str(path) and series.paths == (str(path),)


def test_compressed_file_cut_mid_fragment_is_reported(tmp_path, dicom_data):
    path = tmp_path / "cut.dcm"
    path.write_bytes((dicom_data / "pylibjpeg-data/CT1_JLSN.dcm").read_bytes()[:-100])

    _, problems = discover_series([path])

    assert [p.reason for p in problems] == [
        "pixel data truncated: encapsulated pixel data ends before its sequence delimiter"
    ]


def test_modality_override_fills_only_a_missing_dicom_modality(tmp_path, write_dicom):
    write_dicom(tmp_path / "none/a.dcm", np.zeros((2, 2)), modality="", series_uid="1.1")
    write_dicom(tmp_path / "mr/b.dcm", np.zeros((2, 2)), modality="MR", series_uid="1.2")

    series, _ = discover_series([tmp_path], modality_override="ct")

    assert sorted((s.series_uid, s.modality) for s in series) == [("1.1", "CT"), ("1.2", "MR")]


def test_uncompressed_ybr_full_422_is_sized_as_two_values_per_pixel(tmp_path, write_dicom):
    luma = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    pairs = [bytes([luma[r, c], luma[r, c + 1], 128, 128]) for r in range(4) for c in (0, 2)]  # Y1 Y2 Cb Cr
    path = write_dicom(tmp_path / "ybr422.dcm", luma, sop_class="1.2.840.10008.5.1.4.1.1.7", modality="OT",
                       photometric="YBR_FULL_422", SamplesPerPixel=3, PlanarConfiguration=0, BitsAllocated=8,
                       BitsStored=8, HighBit=7, PixelData=b"".join(pairs))  # 32 bytes: two thirds of 4 x 4 x 3

    series, problems = discover_series([path])
    assert problems == [] and len(series) == 1
    decoded = decode_file(str(path))
    np.testing.assert_allclose(decoded.values[0], luma, atol=0.01)  # neutral chroma: luminance is Y


# --- header values that cannot be trusted -------------------------------------------------------


def _with_meta(path, **values: bytes):
    """Rewrite file meta / data set elements in place (medassist.ingest.fuzz.replace_elements)."""
    from medassist.ingest.fuzz import FuzzSource, read_base, replace_elements

    base = read_base(FuzzSource(path))
    path.write_bytes(replace_elements(base.data, base, dict(values)))
    return path


@pytest.mark.parametrize(
    "syntax, reason",
    [
        (b"1.2.840.10008.1.20.1", "Transfer Syntax UID 1.2.840.10008.1.20.1 (Storage Commitment Push Model SOP "
                                  "Class) is not a transfer syntax: the file meta is corrupt"),
        (b"1.2.840.10008.1.1", "Transfer Syntax UID 1.2.840.10008.1.1 (Verification SOP Class) is not a transfer "
                               "syntax: the file meta is corrupt"),
        (b"1.2.3.4.5.6", "unknown Transfer Syntax UID 1.2.3.4.5.6 (private or corrupt): transfer syntax not "
                         "supported"),
        (b"not-a-uid", "invalid Transfer Syntax UID value 'not-a-uid' (not a UID): the file meta is corrupt"),
    ],
)
def test_a_transfer_syntax_that_is_not_one_is_a_problem_naming_the_file(tmp_path, write_dicom, syntax, reason):
    # Used to stop the whole run: ValueError("UID is not a transfer syntax.") from pydicom's UID.
    bad = _with_meta(write_dicom(tmp_path / "bad.dcm", np.zeros((4, 4)), series_uid="1.2.9"), TransferSyntaxUID=syntax)
    good = write_dicom(tmp_path / "good.dcm", np.ones((4, 4)), series_uid="1.2.8")

    series, problems = discover_series([tmp_path])

    assert [(p.path, p.reason) for p in problems] == [(str(bad), reason)]
    assert [s.paths for s in series] == [(str(good),)]
    with pytest.raises(MedassistError) as raised:
        decode_file(str(bad))
    assert str(raised.value) == f"{bad}: {reason}"


@pytest.mark.parametrize(
    "attributes, reason",
    [
        ({"BitsStored": 17}, "invalid BitsStored value 17 (1 to BitsAllocated 16)"),
        ({"BitsStored": 0}, "invalid BitsStored value 0 (1 to BitsAllocated 16)"),
        ({"HighBit": 16}, "invalid HighBit value 16 (0 to BitsAllocated 16 - 1)"),
        ({"PixelRepresentation": 2}, "invalid PixelRepresentation value 2 (0 or 1)"),
        ({"SamplesPerPixel": 2}, "invalid SamplesPerPixel value 2 (1 or 3)"),
    ],
)
def test_stored_bits_and_samples_that_cannot_describe_the_pixels_are_refused(tmp_path, write_dicom, attributes,
                                                                           reason):
    path = write_dicom(tmp_path / "bits.dcm", np.zeros((4, 4)), **attributes)

    (problem,) = discover_series([path])[1]
    with pytest.raises(MedassistError) as raised:
        decode_file(str(path))

    assert problem.reason == reason
    assert str(raised.value) == f"{path}: {reason}"


def test_an_oversized_functional_groups_sequence_is_refused_without_reading_its_items(tmp_path, write_dicom):
    # 100,000 empty items (800 kB) take pydicom ~12 s to build; the length alone says it is no frame's groups.
    item = Dataset()
    path = write_dicom(tmp_path / "groups.dcm", np.zeros((4, 4)),
                       SharedFunctionalGroupsSequence=Sequence([item] * 100_000))
    (problem,) = discover_series([path])[1]

    # refused by its declared length, before any item is built (speed is measured in benchmarks/, not here)
    assert problem.reason == ("SharedFunctionalGroupsSequence of 800000 bytes is too large to read "
                              "(at most 65536 for 1 frame(s))")
    with pytest.raises(MedassistError, match="SharedFunctionalGroupsSequence of 800000 bytes is too large"):
        decode_file(str(path))


def test_a_file_cut_inside_its_file_meta_is_reported_not_skipped(tmp_path, write_dicom):
    # Cut there, pydicom reads a partial SOP Class UID ("1"), which looked like a non-image object.
    path = write_dicom(tmp_path / "cut.dcm", np.zeros((4, 4)))
    path.write_bytes(path.read_bytes()[:167])

    (problem,) = discover_series([path])[1]

    assert problem.reason.startswith("file meta truncated: its group length ")
    assert problem.reason.endswith("runs past the end of the file (167 bytes)")


def test_unreadable_display_attributes_fall_back_to_the_percentile_range(tmp_path, write_dicom):
    # WindowWidth stored as FD holding 6 bytes: pydicom raises when the value is read.
    path = write_dicom(tmp_path / "window.dcm", np.arange(16).reshape(4, 4), window=(8.0, 16.0))
    from medassist.ingest.fuzz import FuzzSource, read_base, replace_elements

    base = read_base(FuzzSource(path))
    path.write_bytes(replace_elements(base.data, base, {"WindowWidth": b"16.0  "}, vrs={"WindowWidth": b"FD"}))

    decoded = decode_file(str(path))

    assert decoded.display.window is None
    np.testing.assert_array_equal(decoded.values[0], np.arange(16).reshape(4, 4))

"""Decoding DICOM pixels: stored values -> physical values -> a 0..1 display image.

The chain for one series (``load_dicom_stack``), file by file:

1. read the whole file (never asking for more bytes than it holds), check the header's sizes
   against the pixel data and against ``MAX_DECODED_BYTES`` (before allocating);
2. decode (pydicom with pylibjpeg / gdcm for compressed syntaxes: the codecs extra; without it,
   Pillow's 8-bit JPEG and JPEG 2000 and pydicom's RLE; a file nothing installed decodes is an
   error naming the file and ``pip install 'medassist[codecs]'``), colour -> grayscale luminance;
3. Modality LUT / rescale (per frame for enhanced multi-frame) -> ``Image.pixels`` (float32);
4. for the whole stack: VOI LUT or the first default window, else the 0.5-99.5 percentile range,
   scaled to 0..1, MONOCHROME1 inverted so bright means dense -> ``Image.display``.

Every failure is a ``MedassistError`` whose message starts with the file path.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medassist.datamodel import Geometry, Image
from medassist.errors import MedassistError
from medassist.ingest.dicom import (
    BoundedFile,
    FrameRef,
    first_line,
    inflated_size_problem,
    layout_problem,
    native_length_problem,
    overlong_element,
    oversized_sequence,
    parse_failure,
    quiet_pydicom,
    safe_get,
    size_limit_problem,
    transfer_syntax_problem,
)
from medassist.ingest.percentiles import percentile
from medassist.optional import install_command, missing

logger = logging.getLogger(__name__)

# Percentiles of the display range when a file has no window or VOI LUT.
DISPLAY_PERCENTILES = (0.5, 99.5)
# Percentiles are taken on at most this many values (a strided sample) to stay fast on big volumes.
_PERCENTILE_SAMPLE = 4_000_000
# CT sanity check: values below this (HU) are air-or-less; only padding should be that low.
_CT_MIN_PLAUSIBLE_HU = -1100.0
_CT_MAX_IMPLAUSIBLE_FRACTION = 0.05
_CT_PADDING_MIN_FRACTION = 0.005
# exp(80) is ~5.5e34, well inside float32, and 1 / (1 + exp(80)) is 0 to float32 precision.
_SIGMOID_EXPONENT_LIMIT = 80.0


@dataclass(frozen=True)
class DicomStack:
    """What a DICOM series' loader needs: its slices in stack order and the discovered geometry."""

    slices: tuple[FrameRef, ...]
    rows: int
    columns: int
    geometry: Geometry
    alternates: dict[str, tuple[str, ...]] = field(default_factory=dict)  # duplicate files to try


@dataclass(frozen=True)
class DisplayParams:
    """How a file asks to be displayed: a VOI LUT, else a window; and its photometric."""

    photometric: str
    window: tuple[float, float] | None = None
    function: str = "LINEAR"
    voi_lut: Dataset | None = None  # a dataset holding the VOILUTSequence, for apply_voi


@dataclass(frozen=True)
class DecodedFile:
    """One file's frames after the Modality LUT, shaped (frames, rows, columns), float32."""

    values: np.ndarray
    display: DisplayParams


def load_dicom_stack(stack: DicomStack) -> Image:
    """Decode every file of a stack and assemble the ordered (slices, rows, columns) image."""
    slots: dict[str, list[tuple[int, int]]] = {}
    for index, ref in enumerate(stack.slices):
        slots.setdefault(ref.path, []).append((index, ref.frame))

    _check_stack_size(stack)
    pixels = np.empty((len(stack.slices), stack.rows, stack.columns), dtype=np.float32)
    first: DisplayParams | None = None
    for path, wanted in slots.items():  # dict order = order of first appearance in the stack
        decoded = _decode_with_fallback(path, stack.alternates.get(path, ()))
        n_frames, rows, columns = decoded.values.shape
        if (rows, columns) != (stack.rows, stack.columns):
            raise MedassistError(
                f"{path}: decoded image is {rows} x {columns}, "
                f"the series expects {stack.rows} x {stack.columns}"
            )
        for slice_index, frame in wanted:
            if frame >= n_frames:
                raise MedassistError(f"{path}: frame {frame + 1} missing, decoded {n_frames} frame(s)")
            pixels[slice_index] = decoded.values[frame]
        first = first or decoded.display

    assert first is not None
    return Image(
        pixels=pixels,
        display=to_display(pixels, first),
        geometry=stack.geometry,
        window=first.window,
        photometric=first.photometric,
    )


def _check_stack_size(stack: DicomStack) -> None:
    """Refuse a series whose decoded stack would not fit ``MAX_DECODED_BYTES`` (before allocating)."""
    too_large = size_limit_problem(stack.rows, stack.columns, 1, len(stack.slices), 32)
    if too_large:
        first = stack.slices[0].path if stack.slices else "series"
        raise MedassistError(f"{first}: series of {len(stack.slices)} slices: {too_large}")


def _decode_with_fallback(path: str, alternates: tuple[str, ...]) -> DecodedFile:
    """Decode ``path``; if that fails, try its duplicates (same SOPInstanceUID) in order."""
    try:
        return decode_file(path)
    except MedassistError as error:
        for alternate in alternates:
            try:
                decoded = decode_file(alternate)
            except MedassistError:
                continue
            logger.warning("%s; using its duplicate %s instead", error, alternate)
            return decoded
        raise


def decode_file(path: str) -> DecodedFile:
    """Read, check, decode and rescale one DICOM file (all its frames)."""
    inflated = inflated_size_problem(path)
    if inflated:
        raise MedassistError(f"{path}: {inflated}")
    with quiet_pydicom():
        try:
            with BoundedFile(path) as fp:
                ds = pydicom.dcmread(fp, force=True)
                overlong = overlong_element(ds, fp.size)
        except Exception as exc:
            raise MedassistError(f"{path}: unreadable DICOM file: {parse_failure(exc)}") from exc
        if overlong:
            raise MedassistError(f"{path}: {overlong}")
        if "PixelData" not in ds:
            raise MedassistError(f"{path}: missing pixel data")
        syntax = _ensure_transfer_syntax(ds, path)
        _check_declared_size(ds, path, syntax)
        frames, decoded_photometric = _decode(ds, path, syntax)
        if decoded_photometric == "PALETTE COLOR":
            frames = _palette_to_rgb(frames, ds, path)
            decoded_photometric = "RGB"
        if frames.ndim == 4:
            values = _luminance(frames, decoded_photometric)
        else:
            values = _modality_values(frames, ds, path)
        if not np.isfinite(values).all():
            raise MedassistError(f"{path}: rescale or Modality LUT gives non-finite pixel values")
        _check_plausible_ct(values, ds, path, syntax)
        return DecodedFile(values=values, display=_safe_display_params(ds, decoded_photometric, path))


def _ensure_transfer_syntax(ds: Dataset, path: str) -> UID:
    """The transfer syntax, filled in from how the file was parsed when the meta lacks it."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID") or "").strip() if meta is not None else ""
    problem = transfer_syntax_problem(syntax)
    if problem:
        raise MedassistError(f"{path}: {problem}")
    if syntax:
        return UID(syntax)
    implicit, little = ds.original_encoding
    if little is False:
        guessed = ExplicitVRBigEndian
    else:
        guessed = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta = meta if meta is not None else pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = guessed
    logger.info("%s: no transfer syntax in file meta; read as %s", path, guessed.name)
    return guessed


def _layout(ds: Dataset, path: str) -> tuple[int, int, int, int, int]:
    """(rows, columns, samples, frames, bits allocated) as ints, or a MedassistError."""
    values = []
    for keyword, default in (
        ("Rows", None),
        ("Columns", None),
        ("SamplesPerPixel", 1),
        ("NumberOfFrames", 1),
        ("BitsAllocated", None),
    ):
        try:
            raw = ds.get(keyword, default)
        except Exception as exc:  # a value its VR cannot hold, an unknown VR...
            raise MedassistError(f"{path}: invalid {keyword} value (unreadable: {first_line(exc)})") from None
        try:
            values.append(int(raw if raw not in (None, "") else default))
        except (TypeError, ValueError, OverflowError):
            raise MedassistError(f"{path}: invalid or missing {keyword} value {str(raw)[:40]!r}") from None
    return tuple(values)  # type: ignore[return-value]


def _check_declared_size(ds: Dataset, path: str, syntax: UID) -> None:
    """Refuse headers whose image size the pixel data does not hold, or that we will not allocate.

    Uncompressed: the data must hold the declared size, plus less than one frame of padding.
    Encapsulated: at least one fragment per declared frame (a decoder allocates all frames before
    finding out).
    """
    rows, columns, samples, n_frames, bits = _layout(ds, path)
    problem = layout_problem(ds, rows, columns, samples, n_frames, bits)
    problem = problem or size_limit_problem(rows, columns, samples, n_frames, bits) or oversized_sequence(ds, n_frames)
    if problem is None and not syntax.is_compressed:
        photometric = str(safe_get(ds, "PhotometricInterpretation") or "").strip().upper()
        problem = native_length_problem(len(ds.PixelData), rows, columns, samples, n_frames, bits, photometric)
    if problem is None and syntax.is_compressed and n_frames > 1:
        n_fragments = _fragment_count(ds.PixelData)
        if n_fragments < n_frames:
            problem = f"{codec_name(syntax)} holds {n_fragments} fragment(s) for {n_frames} frames (NumberOfFrames)"
    if problem:
        raise MedassistError(f"{path}: {problem}")


def _fragment_count(data: bytes) -> int:
    """Fragments of encapsulated pixel data (0 if the items cannot be parsed)."""
    try:
        return parse_fragments(data)[0]
    except (ValueError, TypeError):
        return 0


def _decode(ds: Dataset, path: str, syntax: UID) -> tuple[np.ndarray, str]:
    """Decoded frames shaped (frames, rows, columns[, samples]) and their photometric after decoding."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise MedassistError(f"{path}: transfer syntax {syntax.name} ({syntax}) is not supported") from None
    if syntax.is_compressed and not decoder.available_plugins:  # none of its decoders is installed
        raise MedassistError(f"{path}: {codec_name(syntax)} not decoded: no decoder for {syntax.name} is "
                             f"installed; the codecs extra has them: {install_command('codecs')}")
    try:
        array, meta = _as_array(decoder, ds, syntax)
    except Exception as exc:
        raise MedassistError(
            f"{path}: {codec_name(syntax)} undecodable: {decoder_message(exc)}{_codecs_hint()}"
        ) from exc
    except BaseException as exc:  # a Rust decoder's panic (pyo3 PanicException) is a BaseException
        if type(exc).__name__ != "PanicException":
            raise
        raise MedassistError(
            f"{path}: {codec_name(syntax)} undecodable: the decoder failed ({first_line(exc)})"
        ) from exc
    n_frames = int(meta.get("number_of_frames", 1) or 1)
    samples = int(meta.get("samples_per_pixel", 1) or 1)
    if n_frames == 1 and array.ndim == (3 if samples > 1 else 2):
        array = array[np.newaxis]
    return array, str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))


# gdcm's JPEG codec throws a C++ exception nothing catches - the whole process aborts - on an 8-bit
# JPEG whose BitsStored is below 8 (found by the fuzz corpus): such files are decoded without gdcm.
_GDCM_JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                                 "1.2.840.10008.1.2.4.70"})


def _as_array(decoder: Any, ds: Dataset, syntax: UID) -> tuple[np.ndarray, dict]:
    """``decoder.as_array(ds)``, leaving out the plugins known to abort the process on this header.
    When plugins are left out, the others are tried in turn and their errors reported together,
    one "plugin: message" line each (what ``decoder_message`` reads)."""
    avoid = {"gdcm"} if str(syntax) in _GDCM_JPEG_SYNTAXES and _stored_below_allocated(ds) else set()
    plugins = [name for name in decoder.available_plugins if name not in avoid]
    if not avoid:
        return decoder.as_array(ds)
    errors = []
    for name in plugins:
        try:
            return decoder.as_array(ds, decoding_plugin=name)
        except Exception as exc:
            errors.append(f"{name}: {first_line(exc)}")
    left_out = ", ".join(sorted(avoid))
    raise RuntimeError("\n".join([f"no decoder could decode the pixel data ({left_out} not tried)", *errors]))


def _codecs_hint() -> str:
    """After a decoding failure: how to install the decoders of the codecs extra, when some are missing
    (Pillow, in the core, decodes 8-bit JPEG and JPEG 2000 only; pydicom itself RLE)."""
    if not missing("codecs"):
        return ""
    return f"; the codecs extra may decode it: {install_command('codecs')}"


def _stored_below_allocated(ds: Dataset) -> bool:
    """BitsStored present and below BitsAllocated."""
    try:
        return int(safe_get(ds, "BitsStored") or 0) < int(safe_get(ds, "BitsAllocated") or 0)
    except (TypeError, ValueError, OverflowError):
        return True


def _palette_to_rgb(frames: np.ndarray, ds: Dataset, path: str) -> np.ndarray:
    """PALETTE COLOR frames through the file's palette, or a MedassistError when it has none usable."""
    try:
        return apply_color_lut(frames, ds)
    except Exception as exc:
        raise MedassistError(f"{path}: PALETTE COLOR image without a usable palette: {first_line(exc)}") from exc


_CODEC_NAMES = {
    "1.2.840.10008.1.2.4.50": "JPEG baseline stream",
    "1.2.840.10008.1.2.4.51": "JPEG extended (12-bit) stream",
    "1.2.840.10008.1.2.4.57": "JPEG lossless stream",
    "1.2.840.10008.1.2.4.70": "JPEG lossless stream",
    "1.2.840.10008.1.2.4.80": "JPEG-LS stream",
    "1.2.840.10008.1.2.4.81": "JPEG-LS stream",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 stream",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 stream",
    "1.2.840.10008.1.2.4.92": "JPEG 2000 stream",
    "1.2.840.10008.1.2.4.93": "JPEG 2000 stream",
    "1.2.840.10008.1.2.4.201": "HTJ2K stream",
    "1.2.840.10008.1.2.4.202": "HTJ2K stream",
    "1.2.840.10008.1.2.4.203": "HTJ2K stream",
    "1.2.840.10008.1.2.5": "RLE stream",
}


def codec_name(syntax: UID) -> str:
    """A short name of the pixel encoding, for messages: 'JPEG 2000 stream', 'RLE stream'..."""
    if str(syntax) in _CODEC_NAMES:
        return _CODEC_NAMES[str(syntax)]
    return f"{syntax.name} stream" if syntax.is_compressed else "pixel data"


def decoder_message(exc: BaseException) -> str:
    """The most useful line of a decoding error (pydicom lists one line per plugin tried)."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines()]
    by_plugin = {}
    for line in lines[1:]:
        name, sep, message = line.partition(":")
        if sep:
            by_plugin[name.strip()] = message.strip()
    for plugin in ("pylibjpeg", "gdcm", "pillow", "pyjpegls"):
        if plugin in by_plugin:
            return f"{by_plugin[plugin]} ({plugin})"
    if "could not broadcast" in text:  # pydicom copies each decoded frame into the declared shape
        return "the decoded image size differs from the declared Rows, Columns and SamplesPerPixel"
    return lines[0] if lines else type(exc).__name__


def _luminance(frames: np.ndarray, photometric: str) -> np.ndarray:
    """Colour frames (frames, rows, columns, 3) -> grayscale luminance, float32."""
    if photometric.startswith("YBR"):
        return frames[..., 0].astype(np.float32)  # Y already is the luminance
    weights = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    return (frames.astype(np.float32) @ weights).astype(np.float32)


def _modality_values(frames: np.ndarray, ds: Dataset, path: str) -> np.ndarray:
    """Apply the Modality LUT / rescale: top level, else per frame from the functional groups."""
    try:
        if ds.get("ModalityLUTSequence") or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
            return np.asarray(apply_modality_lut(frames, ds), dtype=np.float32)
        values = frames.astype(np.float32)
        for index in range(frames.shape[0]):
            item = _functional_group(ds, index, "PixelValueTransformationSequence")
            if item is not None and "RescaleSlope" in item and "RescaleIntercept" in item:
                values[index] = apply_modality_lut(frames[index], item)
        return values
    except Exception as exc:  # malformed values, a LUT item without its descriptor...
        raise MedassistError(f"{path}: invalid Modality LUT or rescale values: {first_line(exc)}") from exc


def _functional_group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` for a frame: per-frame functional group, else shared."""
    for holder_keyword, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        holder = ds.get(holder_keyword)
        if holder and len(holder) > index and holder[index].get(sequence):
            return holder[index].get(sequence)[0]
    return None


def _check_plausible_ct(values: np.ndarray, ds: Dataset, path: str, syntax: UID) -> None:
    """Catch decoders that return noise without an error: CT must mostly be >= -1100 HU.

    Padding outside the scan circle is legitimately lower (-2000, -3024...), but it is one
    repeated value; garbage is spread over the whole range.
    """
    rescale_type = safe_get(ds, "RescaleType")
    if str(safe_get(ds, "Modality") or "").upper() != "CT" or str(rescale_type or "HU").upper() not in ("HU", ""):
        return
    low = values[values < _CT_MIN_PLAUSIBLE_HU]
    if low.size <= _CT_MAX_IMPLAUSIBLE_FRACTION * values.size:
        return
    levels, counts = np.unique(low, return_counts=True)
    padding = levels[counts >= _CT_PADDING_MIN_FRACTION * values.size]
    scattered = low.size - int(np.isin(low, padding).sum())
    fraction = scattered / values.size
    if fraction > _CT_MAX_IMPLAUSIBLE_FRACTION:
        raise MedassistError(
            f"{path}: {codec_name(syntax)} decoded to implausible CT values "
            f"({fraction:.0%} of pixels scattered below {_CT_MIN_PLAUSIBLE_HU:.0f} HU); "
            "the compressed data is probably corrupt"
        )


def _safe_display_params(ds: Dataset, decoded_photometric: str, path: str) -> DisplayParams:
    """``_display_params``, or none but the photometric when the display attributes cannot be read
    (the percentile range is used instead: a broken window must not lose the image)."""
    try:
        return _display_params(ds)
    except Exception as exc:
        logger.info("%s: window / VOI LUT unreadable (%s); using the percentile range", path, first_line(exc))
        photometric = str(safe_get(ds, "PhotometricInterpretation") or decoded_photometric or "MONOCHROME2")
        return DisplayParams(photometric=photometric.strip().upper())


def _display_params(ds: Dataset) -> DisplayParams:
    """The file's VOI LUT or first default window (top level, else frame 1's functional group)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    voi_holder = ds if ds.get("VOILUTSequence") else None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        window_holder: Dataset | None = ds
    else:
        window_holder = _functional_group(ds, 0, "FrameVOILUTSequence")
    window = None
    function = "LINEAR"
    if window_holder is not None:
        center = _first_float(window_holder.get("WindowCenter"))
        width = _first_float(window_holder.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            window = (center, width)
            function = str(window_holder.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    voi = None
    if voi_holder is not None:
        voi = Dataset()
        voi.VOILUTSequence = ds.VOILUTSequence
        voi.file_meta = ds.file_meta
        voi.BitsStored = ds.get("BitsStored", 16)
        voi.PixelRepresentation = ds.get("PixelRepresentation", 0)
    return DisplayParams(photometric=photometric, window=window, function=function, voi_lut=voi)


def to_display(pixels: np.ndarray, params: DisplayParams) -> np.ndarray:
    """Physical values -> float32 in 0..1 (VOI LUT, else window, else percentiles); bright = dense."""
    display: np.ndarray | None = None
    if params.voi_lut is not None:
        display = _apply_voi_lut(pixels, params.voi_lut)
    if display is None and params.window is not None:
        display = apply_window(pixels, *params.window, function=params.function)
    if display is None:
        display = percentile_scale(pixels)
    if params.photometric == "MONOCHROME1":
        display = 1.0 - display
    return display.astype(np.float32, copy=False)


def apply_window(values: np.ndarray, center: float, width: float, *, function: str = "LINEAR") -> np.ndarray:
    """DICOM windowing (PS3.3 C.11.2.1.2) to 0..1: LINEAR, LINEAR_EXACT or SIGMOID."""
    x = values.astype(np.float32, copy=False)
    if function == "SIGMOID":  # exponent clipped where the result is 0 or 1 anyway (no overflow)
        exponent = np.clip(-4.0 * (x - center) / width, -_SIGMOID_EXPONENT_LIMIT, _SIGMOID_EXPONENT_LIMIT)
        return (1.0 / (1.0 + np.exp(exponent))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return np.clip((x - (center - width / 2.0)) / width, 0.0, 1.0).astype(np.float32)
    if width <= 1.0:
        return (x > center - 0.5).astype(np.float32)
    display = x - (center - 0.5)  # a new float32 array, then scaled in place (a volume is large)
    display /= width - 1.0
    display += 0.5
    return np.clip(display, 0.0, 1.0, out=display)


def percentile_scale(values: np.ndarray, percentiles: tuple[float, float] = DISPLAY_PERCENTILES) -> np.ndarray:
    """Scale the given percentile range to 0..1 (a constant image maps to 0)."""
    flat = values.reshape(-1)
    step = max(1, math.ceil(flat.size / _PERCENTILE_SAMPLE))
    low, high = percentile(flat[::step], percentiles)
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _apply_voi_lut(pixels: np.ndarray, voi: Dataset) -> np.ndarray | None:
    """The VOI LUT Sequence's first LUT, scaled by the LUT's own output range; None if unusable."""
    try:
        with quiet_pydicom():  # the LUT indexes integer (modality output) values
            mapped = np.asarray(apply_voi(np.rint(pixels).astype(np.int32), voi, index=0), dtype=np.float32)
        item = voi.VOILUTSequence[0]
        data = item.LUTData
        if isinstance(data, (bytes, bytearray)):
            little = voi.file_meta.TransferSyntaxUID.is_little_endian
            entries = np.frombuffer(data, dtype="<u2" if little else ">u2")
        else:
            entries = np.asarray(data if isinstance(data, (list, tuple)) or hasattr(data, "__len__") else [data])
    except Exception as exc:  # a broken VOI LUT falls back to the window
        logger.info("VOI LUT unusable (%s); using the window instead", first_line(exc))
        return None
    low, high = float(entries.min()), float(entries.max())
    if not high > low:
        return None
    return np.clip((mapped - low) / (high - low), 0.0, 1.0)


def _first_float(value: Any) -> float | None:
    """First value of a possibly multi-valued DS, as a float."""
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
            value = value[0]
        result = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return result if math.isfinite(result) else None


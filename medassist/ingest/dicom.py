"""DICOM headers: recognise a file, read its header only, and say what it is.

``read_dicom_header`` answers one of three things for a file:

* ``DicomHeader``  - an image instance worth grouping into a series (header only, no pixels);
* ``Skipped``      - not ours: not DICOM at all, a DICOMDIR, or a non-image object (SEG, SR, RT plan);
* ``IngestProblem`` - looks like DICOM but is broken (truncated, no meta, bad VR, no pixel data).

Pixel data is never read here: we stop before it and only look at its element header and the
file size, which is enough to catch truncated files and headers that lie about the image size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medassist.datamodel import IngestProblem
from medassist.ingest.geometry import slice_normal

logger = logging.getLogger(__name__)

Vec3 = tuple[float, float, float]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})

# SOP classes that carry Pixel Data but are not images to diagnose (masks and maps).
NON_IMAGE_WITH_PIXELS = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
        "1.2.840.10008.5.1.4.1.1.66.8",  # Height Map Segmentation
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
    }
)
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "REG", "DOC"})

# The most memory one file's or one series' decoded pixels may need: 2 GiB, counted as the larger of
# the decoder's output and our float32 copy (``decoded_bytes``), e.g. 512 x 512 x 2048 slices.
# Headers declaring more are refused before anything is allocated.
MAX_DECODED_BYTES = 2 * 1024**3

# pydicom inflates a deflated data set whole, before anything else (header-only reads too): one that
# inflates past the decoded-size limit, plus room for its header, is refused first (``inflated_size_problem``).
MAX_INFLATED_BYTES = MAX_DECODED_BYTES + 64 * 1024**2
_INFLATE_CHUNK = 1024**2

_PIXEL_DATA_TAG = (0x7FE0, 0x0010)
_FLOAT_PIXEL_TAGS = {(0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_ITEM_TAG = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER_TAG = (0xFFFE, 0xE0DD)
_VR_WITH_32BIT_LENGTH = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}
# First tag groups a DICOM stream without a preamble plausibly starts with.
_LEADING_GROUPS = {0x0002, 0x0004, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class FrameRef:
    """One slice of a series: a frame of a file, and where it sits in patient space."""

    path: str
    frame: int
    position: Vec3 | None
    instance_number: int | None


@dataclass(frozen=True)
class PixelElement:
    """The Pixel Data element header, read without reading its value."""

    length: int | None  # None: undefined length (encapsulated, compressed)
    available: int  # bytes in the file after the element header
    complete: bool  # the bytes the header promises are all there
    floating: bool = False  # Float / Double Float Pixel Data (parametric maps)


@dataclass(frozen=True)
class DicomHeader:
    """What discovery keeps of one image instance: identifiers, layout and per-frame geometry."""

    path: str
    study_uid: str
    series_uid: str
    sop_uid: str
    transfer_syntax: str
    patient_id: str
    accession: str
    modality: str
    body_part: str
    sex: str
    age: str
    manufacturer: str
    study_date: str
    description: str
    rows: int
    columns: int
    samples: int
    n_frames: int
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    nominal_slice_spacing: float | None
    frames: tuple[FrameRef, ...]


@dataclass(frozen=True)
class Skipped:
    """A file that is not an image series, skipped without complaint (``kind`` says why)."""

    path: str
    kind: str  # "not-dicom", "dicomdir", "non-image" or "unsupported" (float pixel data)
    reason: str


HeaderResult = DicomHeader | Skipped | IngestProblem


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log lines while reading: they may quote patient data."""
    pydicom_logger = logging.getLogger("pydicom")
    was_disabled = pydicom_logger.disabled
    pydicom_logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_logger.disabled = was_disabled


class BoundedFile(io.FileIO):
    """A file opened for reading whose ``read(n)`` never asks for more than the bytes left.

    pydicom reads an element's value with one ``read(declared length)``; a header declaring 4 GiB
    would otherwise make Python allocate 4 GiB before finding out that the file is short.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "rb") -> None:
        # ``mode``: pydicom re-opens a file for deferred values with ``type(fp)(path, "rb")``
        super().__init__(path, "rb")
        self.size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(self.size - self.tell(), 0))
        return super().read(size)


def file_meta_past_end(ds: Dataset, file_size: int) -> str | None:
    """Why the file meta's group length says the file ends inside its meta, or None. pydicom reads
    what there is of a cut meta element, so a file cut there would parse (and look like a
    non-image object of SOP class "1")."""
    meta = getattr(ds, "file_meta", None)
    length = safe_get(meta, "FileMetaInformationGroupLength") if meta is not None else None
    if not isinstance(length, int):
        return None
    end = (132 if getattr(ds, "preamble", None) else 0) + 12 + length  # (0002,0000) itself: 12 bytes
    if end > file_size:
        return f"file meta truncated: its group length {length} runs past the end of the file ({file_size} bytes)"
    return None


def overlong_element(ds: Dataset, file_size: int) -> str | None:
    """Why a top-level element declares more bytes than the file has left after it, or None."""
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        length = getattr(element, "length", None)
        value_tell = getattr(element, "value_tell", None)
        if length is None or value_tell is None or length == _UNDEFINED_LENGTH:
            continue
        left = max(file_size - value_tell, 0)
        if length > left:
            if tag == 0x7FE00010:  # Pixel Data
                return f"pixel data truncated: expected {length} bytes, found {left}"
            return f"element {tag} declares {length} bytes but only {left} are left in the file"
    return None


def sniff(path: str) -> str:
    """Guess from the first bytes: "preamble" (DICM at 128), "bare" (starts like a dataset), "no"."""
    with open(path, "rb") as fp:
        head = fp.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return "preamble"
    if len(head) >= 8:
        for order in ("<", ">"):
            group, element = struct.unpack(order + "HH", head[:4])
            if group in _LEADING_GROUPS and element < 0x2000:
                return "bare"
    return "no"


def has_dicom_suffix(path: str) -> bool:
    """True for names that claim to be DICOM (.dcm and friends): failures there get reported."""
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def read_dicom_header(path: str, *, explicit: bool = False) -> HeaderResult:
    """Read one file's header (never its pixels) and classify it.

    ``explicit``: the user named this file. Then junk is reported as a problem instead of skipped.
    """
    with quiet_pydicom():
        return _read_and_classify(path, explicit)


def _read_and_classify(path: str, explicit: bool) -> HeaderResult:
    try:
        kind = sniff(path)
    except OSError as exc:
        return IngestProblem(path, f"cannot read file: {exc.strerror or exc}")
    named_dicom = explicit or has_dicom_suffix(path)
    if kind == "no" and not named_dicom:
        return Skipped(path, "not-dicom", "not a DICOM file")

    inflated = inflated_size_problem(path)
    if inflated:
        return IngestProblem(path, inflated)
    try:
        ds, pixel = _read_header(path, force=kind != "preamble")
    except Exception as exc:  # pydicom raises many types on broken input
        if kind == "preamble":
            return IngestProblem(path, f"unreadable DICOM header: {parse_failure(exc)}")
        ds, pixel = None, None
    if kind != "preamble" and (ds is None or not _plausible(ds)):
        if not named_dicom:
            return Skipped(path, "not-dicom", "not a DICOM file")
        if kind == "no" and not has_dicom_suffix(path):
            return IngestProblem(path, "not a DICOM or NIfTI file")
        return IngestProblem(path, "no DICOM file meta and not parseable")
    assert ds is not None
    return _classify(path, ds, pixel, os.path.getsize(path))


def inflated_size_problem(path: str) -> str | None:
    """For a file of the deflated transfer syntax: why its data set inflates past
    ``MAX_INFLATED_BYTES``, or None (also for other syntaxes, and for a stream that does not inflate:
    the parser reports that). Inflates in chunks and keeps nothing."""
    with BoundedFile(path) as fp:
        meta_end = _meta_end_if_deflated(fp.read(64 * 1024))
        if meta_end is None:
            return None
        fp.seek(meta_end)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        try:
            while not inflater.eof:
                chunk = inflater.unconsumed_tail or fp.read(_INFLATE_CHUNK)
                if not chunk:
                    break
                total += len(inflater.decompress(chunk, _INFLATE_CHUNK))
                if total > MAX_INFLATED_BYTES:
                    return (f"deflated data set inflates to more than {MAX_INFLATED_BYTES} bytes (from "
                            f"{fp.size - meta_end}): over the decoded size limit")
        except zlib.error:
            return None
    return None


def _meta_end_if_deflated(head: bytes) -> int | None:
    """Where the data set starts, if the file meta at the start of ``head`` (group 0002, explicit VR
    little endian, read element by element as pydicom does) names the deflated syntax; else None."""
    offset = 132 if head[128:132] == b"DICM" else 0
    deflated = False
    while offset + 8 <= len(head):
        group, element = struct.unpack("<HH", head[offset : offset + 4])
        if group != 0x0002:
            break
        if head[offset + 4 : offset + 6] in _VR_WITH_32BIT_LENGTH:
            (length,) = struct.unpack("<I", head[offset + 8 : offset + 12])
            value = offset + 12
        else:
            (length,) = struct.unpack("<H", head[offset + 6 : offset + 8])
            value = offset + 8
        if element == 0x0010:
            deflated = head[value : value + length].rstrip(b"\0 ") == DEFLATED_SYNTAX.encode()
        offset = value + length
    return offset if deflated else None


def _read_header(path: str, *, force: bool) -> tuple[Dataset, PixelElement | None]:
    """Parse everything before Pixel Data, then peek at the Pixel Data element header."""
    with BoundedFile(path) as fp:
        size = fp.size
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force, defer_size="256 KB")
        meta = getattr(ds, "file_meta", None) or Dataset()
        syntax = str(meta.get("TransferSyntaxUID", ""))
        if syntax == DEFLATED_SYNTAX:
            return ds, _deflated_pixel_element(path)
        return ds, _peek_pixel_element(fp, ds, size)


def _peek_pixel_element(fp: BinaryIO, ds: Dataset, file_size: int) -> PixelElement | None:
    """Read the element header where pydicom stopped; None if it is not Pixel Data."""
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None
    implicit, little = ds.original_encoding
    order = "<" if little in (True, None) else ">"
    group, element = struct.unpack(order + "HH", head[:4])
    if (group, element) in _FLOAT_PIXEL_TAGS:
        return PixelElement(length=None, available=0, complete=True, floating=True)
    if (group, element) != _PIXEL_DATA_TAG:
        return None
    if implicit or head[4:6] not in _VR_WITH_32BIT_LENGTH:
        if implicit:
            (length,) = struct.unpack(order + "I", head[4:8])
        else:
            (length,) = struct.unpack(order + "H", head[6:8])
        header_len = 8
    else:
        if len(head) < 12:
            return PixelElement(length=None, available=0, complete=False)
        (length,) = struct.unpack(order + "I", head[8:12])
        header_len = 12
    available = max(file_size - start - header_len, 0)
    if length == 0xFFFFFFFF:
        complete = _fragments_complete(fp, start + header_len, file_size)
        return PixelElement(length=None, available=available, complete=complete)
    return PixelElement(length=length, available=available, complete=available >= length)


def _fragments_complete(fp: BinaryIO, offset: int, file_size: int) -> bool:
    """Hop over the encapsulated items (seeks only): do they all fit, up to the delimiter?"""
    while offset + 8 <= file_size:
        fp.seek(offset)
        group, element, length = struct.unpack("<HHI", fp.read(8))
        if (group, element) == _SEQUENCE_DELIMITER_TAG:
            return True
        if (group, element) != _ITEM_TAG:
            return False
        offset += 8 + length
    return False


def _deflated_pixel_element(path: str) -> PixelElement | None:
    """Deflated files are inflated in memory by pydicom anyway: read them whole to check."""
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        return None
    n = len(ds.PixelData)
    return PixelElement(length=n, available=n, complete=True)


def _plausible(ds: Dataset) -> bool:
    """A forced parse of a file without a preamble counts as DICOM only if it names itself."""
    keys = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality")
    try:
        return sum(1 for k in keys if ds.get(k)) >= 2
    except Exception:
        return False


def _classify(path: str, ds: Dataset, pixel: PixelElement | None, file_size: int) -> HeaderResult:
    """Decide what a parsed header is, and check its image attributes against its pixel data.

    Non-image objects are skipped even when broken; an image's element that runs past the end of
    the file is reported before anything else (it also hides the pixel data behind it).
    """
    meta = getattr(ds, "file_meta", None) or Dataset()
    meta_problem = file_meta_past_end(ds, file_size)
    if meta_problem:
        return IngestProblem(path, meta_problem)
    sop_class = str(safe_get(ds, "SOPClassUID") or safe_get(meta, "MediaStorageSOPClassUID") or "")
    modality = _text(ds, "Modality").upper()
    if sop_class and not is_valid_uid(sop_class):
        return IngestProblem(path, "invalid SOP Class UID value (not a UID): the header is corrupt")
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return Skipped(path, "dicomdir", "DICOMDIR (a directory of files)")
    overlong = overlong_element(ds, file_size)
    if pixel is None:
        if _is_image_sop_class(sop_class):
            return IngestProblem(path, overlong or f"missing pixel data: {UID(sop_class).name} has no Pixel Data")
        if sop_class or modality:
            return Skipped(path, "non-image", f"non-image object ({_sop_name(sop_class, modality)})")
        return IngestProblem(path, "no SOP Class UID and no Pixel Data: not an image object")
    if sop_class in NON_IMAGE_WITH_PIXELS or modality in NON_IMAGE_MODALITIES:
        return Skipped(path, "non-image", f"non-image object ({_sop_name(sop_class, modality)})")
    if pixel.floating:
        return Skipped(path, "unsupported", "float pixel data (parametric map) is not supported")
    if overlong:
        return IngestProblem(path, overlong)
    syntax = _text(meta, "TransferSyntaxUID")
    syntax_problem = transfer_syntax_problem(syntax)
    if syntax_problem:
        private = is_valid_uid(syntax) and UID(syntax).is_private  # perhaps a vendor's own syntax
        return IngestProblem(path, syntax_problem, kind="unsupported" if private else "error")

    layout = _image_layout(ds, meta)
    if isinstance(layout, str):
        return IngestProblem(path, layout)
    rows, columns, samples, n_frames, bits = layout
    photometric = _text(ds, "PhotometricInterpretation").upper()
    reason = _pixel_data_problem(pixel, syntax, rows, columns, samples, n_frames, bits, photometric)
    reason = reason or oversized_sequence(ds, n_frames)
    if reason:
        return IngestProblem(path, reason)
    return _header(path, ds, syntax, rows, columns, samples, n_frames)


def _image_layout(ds: Dataset, meta: Dataset) -> tuple[int, int, int, int, int] | str:
    """(rows, columns, samples, frames, bits allocated), or the reason they cannot be trusted."""
    required = ("Rows", "Columns", "BitsAllocated")
    missing = [k for k in required if safe_get(ds, k) in (None, "")]
    if missing:
        reason = f"missing image attribute(s): {', '.join(missing)}"
        if "TransferSyntaxUID" not in meta:
            reason += "; file meta has no Transfer Syntax UID"
        return reason
    values = {}
    for keyword, default in (
        ("Rows", None),
        ("Columns", None),
        ("SamplesPerPixel", 1),
        ("NumberOfFrames", 1),
        ("BitsAllocated", None),
    ):
        raw = safe_get(ds, keyword)
        if raw in (None, ""):
            values[keyword] = default
            continue
        try:
            values[keyword] = int(raw)
        except (TypeError, ValueError, OverflowError):
            return f"invalid {keyword} value {str(raw)[:40]!r} (bad VR value)"
    layout = (
        values["Rows"],
        values["Columns"],
        values["SamplesPerPixel"],
        values["NumberOfFrames"],
        values["BitsAllocated"],
    )
    return layout_problem(ds, *layout) or layout


def layout_problem(ds: Dataset, rows: int, columns: int, samples: int, n_frames: int, bits: int) -> str | None:
    """Why declared image attributes cannot describe an image (sizes below 1, BitsAllocated not
    a whole number of bytes or 1, SamplesPerPixel other than 1 or 3, stored bits that do not fit),
    or None."""
    for keyword, value in (("Rows", rows), ("Columns", columns), ("SamplesPerPixel", samples),
                           ("NumberOfFrames", n_frames), ("BitsAllocated", bits)):
        if value < 1:
            return f"invalid {keyword} value {value}"
    if bits not in (1, 8, 16, 32, 64):
        return f"invalid BitsAllocated value {bits}"
    if samples not in (1, 3):
        return f"invalid SamplesPerPixel value {samples} (1 or 3)"
    return stored_bits_problem(ds, bits)


def stored_bits_problem(ds: Dataset, bits_allocated: int) -> str | None:
    """Why BitsStored, HighBit or PixelRepresentation (when present) cannot describe pixels of
    ``bits_allocated`` bits (PS3.3 C.7.6.3), or None. Decoders trust them: gdcm's JPEG codec aborts
    the whole process on some impossible combinations."""
    checks = (
        ("BitsStored", lambda v: 1 <= v <= bits_allocated, f"1 to BitsAllocated {bits_allocated}"),
        ("HighBit", lambda v: 0 <= v < bits_allocated, f"0 to BitsAllocated {bits_allocated} - 1"),
        ("PixelRepresentation", lambda v: v in (0, 1), "0 or 1"),
    )
    for keyword, valid, expected in checks:
        raw = safe_get(ds, keyword)
        if raw in (None, ""):
            continue
        try:
            value = int(raw)
        except (TypeError, ValueError):
            return f"invalid {keyword} value {str(raw)[:40]!r} (bad VR value)"
        if not valid(value):
            return f"invalid {keyword} value {value} ({expected})"
    return None


# Sequences the ingest reads, and the most bytes their encoded value may take (PerFrame...: per
# frame). pydicom builds every item of a sequence when it is first read, about 0.1 ms per item, so
# 1 MB of 8-byte empty items takes 15 s: these limits keep that to about a second. Real values are
# far smaller (a shared group ~2 KB, a frame's ~1 KB, a 16-bit LUT 128 KiB).
_SEQUENCE_BYTE_LIMITS = {
    "SharedFunctionalGroupsSequence": 64 * 1024,
    "PerFrameFunctionalGroupsSequence": 16 * 1024,
    "ModalityLUTSequence": 256 * 1024,
    "VOILUTSequence": 256 * 1024,
}


def oversized_sequence(ds: Dataset, n_frames: int) -> str | None:
    """Why a sequence the ingest reads is too large to read (``_SEQUENCE_BYTE_LIMITS``), or None.
    Looks at the encoded length only: nothing is parsed."""
    for keyword, limit in _SEQUENCE_BYTE_LIMITS.items():
        if keyword not in ds:
            continue
        if keyword.startswith("PerFrame"):
            limit *= max(1, n_frames)
        element = ds.get_item(keyword, keep_deferred=True)
        length = getattr(element, "length", None)
        if length is not None and length != _UNDEFINED_LENGTH and length > limit:
            return f"{keyword} of {length} bytes is too large to read (at most {limit} for {n_frames} frame(s))"
    return None


def expected_pixel_bytes(rows: int, columns: int, samples: int, n_frames: int, bits: int,
                         photometric: str = "") -> int:
    """Bytes of uncompressed pixel data the header promises. YBR_FULL_422 stores two values per
    pixel, not three (Y for each pixel, Cb and Cr shared by pairs: PS3.3 C.7.6.3.1.2)."""
    values = 2 if photometric == "YBR_FULL_422" and samples == 3 else samples
    return (rows * columns * values * n_frames * bits + 7) // 8


def describe_layout(rows: int, columns: int, samples: int, n_frames: int, bits: int) -> str:
    """'512 x 512 x 2 frames x 16 bits', for messages."""
    text = f"{rows} x {columns}"
    if samples != 1:
        text += f" x {samples} samples"
    if n_frames != 1:
        text += f" x {n_frames} frames"
    return f"{text} x {bits} bits"


def decoded_bytes(rows: int, columns: int, samples: int, n_frames: int, bits: int) -> int:
    """Memory the decoded pixels need: the decoder's output or our float32 copy, the larger."""
    return rows * columns * samples * n_frames * max(4, (bits + 7) // 8)


def size_limit_problem(rows: int, columns: int, samples: int, n_frames: int, bits: int) -> str | None:
    """Why a declared image size is too large to decode (``MAX_DECODED_BYTES``), or None."""
    needed = decoded_bytes(rows, columns, samples, n_frames, bits)
    if needed <= MAX_DECODED_BYTES:
        return None
    return (
        f"declared image size {describe_layout(rows, columns, samples, n_frames, bits)} needs "
        f"{needed} bytes decoded, over the {MAX_DECODED_BYTES} byte limit"
    )


def native_length_problem(found: int, rows: int, columns: int, samples: int, n_frames: int, bits: int,
                          photometric: str = "") -> str | None:
    """Why uncompressed pixel data of ``found`` bytes does not match the declared layout, or None.

    Trailing bytes short of one more frame are padding (the even-length pad byte, or vendor
    padding that pydicom trims with a warning) and are accepted. A frame's worth or more means a
    header value is wrong: the image would be read with the wrong shape.
    """
    expected = expected_pixel_bytes(rows, columns, samples, n_frames, bits, photometric)
    layout = describe_layout(rows, columns, samples, n_frames, bits)
    if found < expected:
        return f"pixel data truncated: expected {expected} bytes ({layout}), found {found}"
    one_frame = max(2, expected // max(1, n_frames))
    if found - expected >= one_frame:
        return (
            f"pixel data holds {found} bytes, {found - expected} more than the header declares ({layout}): "
            "Rows, Columns, NumberOfFrames, SamplesPerPixel or BitsAllocated is wrong"
        )
    return None


def _pixel_data_problem(
    pixel: PixelElement, syntax: str, rows: int, columns: int, samples: int, n_frames: int, bits: int,
    photometric: str = "",
) -> str | None:
    """Truncated or lying pixel data, found from the element header and file size alone."""
    too_large = size_limit_problem(rows, columns, samples, n_frames, bits)
    if too_large:
        return too_large
    if pixel.length is None:  # encapsulated
        if not pixel.complete:
            return "pixel data truncated: encapsulated pixel data ends before its sequence delimiter"
        return None
    if not pixel.complete:
        return f"pixel data truncated: expected {pixel.length} bytes, found {pixel.available}"
    compressed = bool(syntax) and UID(syntax).is_compressed
    if compressed:
        return None
    return native_length_problem(pixel.length, rows, columns, samples, n_frames, bits, photometric)


def _header(
    path: str, ds: Dataset, syntax: str, rows: int, columns: int, samples: int, n_frames: int
) -> DicomHeader:
    """Build the header record, including where each frame sits in patient space."""
    orientation, spacing, nominal, positions = _frame_geometry(ds, n_frames)
    instance = _int_or_none(safe_get(ds, "InstanceNumber"))
    frames = tuple(FrameRef(path, i, positions[i], instance) for i in range(n_frames))
    return DicomHeader(
        path=path,
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        transfer_syntax=syntax,
        patient_id=_text(ds, "PatientID"),
        accession=_text(ds, "AccessionNumber"),
        modality=_text(ds, "Modality").upper(),
        body_part=_text(ds, "BodyPartExamined").upper(),
        sex=_text(ds, "PatientSex"),
        age=_text(ds, "PatientAge"),
        manufacturer=_text(ds, "Manufacturer"),
        study_date=_text(ds, "StudyDate"),
        description=_text(ds, "SeriesDescription"),
        rows=rows,
        columns=columns,
        samples=samples,
        n_frames=n_frames,
        orientation=orientation,
        pixel_spacing=spacing,
        nominal_slice_spacing=nominal,
        frames=frames,
    )


def _frame_geometry(
    ds: Dataset, n_frames: int
) -> tuple[tuple[float, ...] | None, tuple[float, float] | None, float | None, list[Vec3 | None]]:
    """Orientation, pixel spacing, nominal slice spacing and one position per frame.

    Looks at the top level first, then the shared and per-frame functional groups of enhanced
    multi-frame objects (PlanePositionSequence per frame), then RT Dose's GridFrameOffsetVector.
    """
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = safe_get(ds, "PerFrameFunctionalGroupsSequence") or []
    first_frame = per_frame[0] if len(per_frame) else None

    def from_groups(sequence: str, keyword: str) -> Any:
        for holder in (ds, shared, first_frame):
            if holder is None:
                continue
            if holder is ds:
                value = safe_get(ds, keyword)
            else:
                value = safe_get(_first_item(holder, sequence) or Dataset(), keyword)
            if value not in (None, ""):
                return value
        return None

    orientation = _floats(from_groups("PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    spacing = _floats(from_groups("PixelMeasuresSequence", "PixelSpacing"), 2)
    if spacing is None:
        spacing = _floats(safe_get(ds, "ImagerPixelSpacing"), 2)
    nominal = _floats(from_groups("PixelMeasuresSequence", "SpacingBetweenSlices"), 1)
    if nominal is None:
        nominal = _floats(from_groups("PixelMeasuresSequence", "SliceThickness"), 1)
    if spacing is not None and min(spacing) <= 0:
        spacing = None

    positions: list[Vec3 | None] = [None] * n_frames
    top_position = _floats(safe_get(ds, "ImagePositionPatient"), 3)
    if len(per_frame) == n_frames and any("PlanePositionSequence" in f for f in per_frame):
        for i, item in enumerate(per_frame):
            value = safe_get(_first_item(item, "PlanePositionSequence") or Dataset(), "ImagePositionPatient")
            positions[i] = _floats(value, 3)  # type: ignore[assignment]
    elif n_frames == 1:
        positions[0] = top_position  # type: ignore[assignment]
    elif top_position is not None and orientation is not None:
        offsets = _floats(safe_get(ds, "GridFrameOffsetVector"), n_frames)
        if offsets is not None:
            normal = slice_normal(orientation)
            origin = np.asarray(top_position)
            for i, offset in enumerate(offsets):
                positions[i] = tuple(float(v) for v in origin + normal * offset)  # type: ignore[assignment]
    return (
        orientation,
        spacing,  # type: ignore[return-value]
        nominal[0] if nominal else None,
        positions,
    )


def transfer_syntax_problem(syntax: str) -> str | None:
    """Why a file meta's Transfer Syntax UID cannot say how the file is encoded, or None (also for
    none at all: the encoding is then guessed from the data)."""
    if not syntax:
        return None
    if not is_valid_uid(syntax):
        return f"invalid Transfer Syntax UID value {syntax[:80]!r} (not a UID): the file meta is corrupt"
    uid = UID(syntax)
    if uid.is_transfer_syntax:
        return None
    if uid.is_private:
        return f"unknown Transfer Syntax UID {syntax} (private or corrupt): transfer syntax not supported"
    named = f" ({uid.name})" if uid.name != syntax else ""
    return f"Transfer Syntax UID {syntax}{named} is not a transfer syntax: the file meta is corrupt"


def is_valid_uid(value: str) -> bool:
    """Digits and dots, at most 64 characters (PS3.5 9.1)."""
    return len(value) <= 64 and _UID_PATTERN.fullmatch(value) is not None


def _is_image_sop_class(sop_class: str) -> bool:
    """Image storage SOP classes must carry Pixel Data."""
    return bool(sop_class) and "Image Storage" in UID(sop_class).name


def _sop_name(sop_class: str, modality: str) -> str:
    if sop_class and UID(sop_class).name != sop_class:
        return UID(sop_class).name
    return modality or sop_class or "unknown SOP class"


def safe_get(ds: Dataset, keyword: str) -> Any:
    """ds.get that never raises on a malformed value (None instead)."""
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _text(ds: Dataset, keyword: str) -> str:
    value = safe_get(ds, keyword)
    return "" if value is None else str(value).strip()


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    value = safe_get(ds, keyword)
    try:
        return value[0] if value else None
    except Exception:
        return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """Exactly ``n`` finite floats, else None (missing or malformed geometry is just unknown)."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        items = list(value) if isinstance(value, Sequence) else [value]
        floats = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    if len(floats) != n or not all(math.isfinite(v) and abs(v) < 1e9 for v in floats):
        return None
    return floats


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_failure(exc: BaseException) -> str:
    """What pydicom's failure to parse a header says, in words (RecursionError: sequences nested
    deeper than Python's recursion limit)."""
    if isinstance(exc, RecursionError):
        return "sequences nested too deep to parse"
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (decoder errors run to several lines)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

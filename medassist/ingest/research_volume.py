"""Research volumes: NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd), one Series per file, read with SimpleITK.

The same conventions as ``nifti``: pixels are (slices, rows, columns) = (k, j, i), where i varies
fastest in the file, and ``Geometry.affine`` maps those indices to DICOM LPS millimetres. ITK
already works in LPS: voxel (i, j, k) lies at ``origin + direction @ (spacing * (i, j, k))``, and
ITK converts an NRRD written in another space (``space: right-anterior-superior``, say) to LPS
when it reads the header. So nothing is flipped here; NIfTI, which is RAS, has its x and y negated
instead. No reorientation here either: that is the preprocess stage's job.

Before SimpleITK sees a file its header text is read here (``data_location``, at most
``MAX_HEADER_BYTES``), to know where the voxels are: after the header (``.nrrd``, ``.mha``) or in
one data file the header names (``.nhdr``, ``.mhd``; that file is one of the Series' paths, and must
be a regular file). Voxels split over several data files are not supported. Then SimpleITK reads the
header only (``ReadImageInformation``), with the one ImageIO of the file's format, and the limits of
the other volume readers hold (``volumes``): at most ``MAX_DECODED_BYTES`` decoded, uncompressed
voxels that the file holds, compressed ones that a deflate stream of the file's size can hold.
Vector, colour and complex voxels are not supported. Volumes with no finite voxel, an infinite one
or one value throughout are refused when loaded.

The modality is ``modality_override``, else the one a MetaImage header declares (CT, MR, NM, US),
else "MR" like NIfTI.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medassist.datamodel import Geometry, Image, IngestProblem, Series
from medassist.errors import MedassistError
from medassist.ingest.dicom import first_line
from medassist.ingest.geometry import affine_geometry
from medassist.ingest.uids import uid_from_path
from medassist.ingest.volumes import (
    DEFAULT_MODALITY,
    declared_size_problem,
    deflate_bound_problem,
    spatial_shape,
    truncated_problem,
    voxel_values_problem,
    volume_image,
)

# The most header text read looking for the header's end (NRRD: an empty line; MetaImage: the
# ElementDataFile line).
MAX_HEADER_BYTES = 1024**2


@dataclass(frozen=True)
class Format:
    """A format family: its name in messages, the one SimpleITK ImageIO that reads it, its suffixes."""

    kind: str
    image_io: str
    suffixes: tuple[str, ...]


NRRD = Format("NRRD", "NrrdImageIO", (".nrrd", ".nhdr"))
METAIMAGE = Format("MetaImage", "MetaImageIO", (".mha", ".mhd"))
FORMATS = (NRRD, METAIMAGE)
RESEARCH_VOLUME_SUFFIXES = tuple(s for f in FORMATS for s in f.suffixes)

_DTYPES = {
    sitk.sitkUInt8: np.uint8, sitk.sitkInt8: np.int8, sitk.sitkUInt16: np.uint16, sitk.sitkInt16: np.int16,
    sitk.sitkUInt32: np.uint32, sitk.sitkInt32: np.int32, sitk.sitkUInt64: np.uint64, sitk.sitkInt64: np.int64,
    sitk.sitkFloat32: np.float32, sitk.sitkFloat64: np.float64,
}
_MET_MODALITIES = {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR", "MET_MOD_NM": "NM", "MET_MOD_US": "US"}


@dataclass(frozen=True)
class DataLocation:
    """Where a header says its voxels are: ``path`` (the header's own file when attached) from byte
    ``offset`` (at least; a skip the header counts in lines is not added), and how they are stored:
    ``encoding`` "raw", "deflate" (NRRD gzip, MetaImage CompressedData) or "other" (text, bzip2...)."""

    path: str
    offset: int
    encoding: str
    detached: bool


def is_research_volume_path(path: str | Path) -> bool:
    """True for names ending in .nrrd, .nhdr, .mha or .mhd (any case)."""
    return str(path).lower().endswith(RESEARCH_VOLUME_SUFFIXES)


def format_of(path: str | Path) -> Format:
    """The format family a file's name says it is (``is_research_volume_path`` must hold)."""
    name = str(path).lower()
    return next(f for f in FORMATS if name.endswith(f.suffixes))


def read_research_volume_series(path: str, *, modality_override: str | None = None) -> Series | IngestProblem:
    """Header-only read of an NRRD or MetaImage file into a Series (voxels are loaded by ``Series.load``)."""
    fmt = format_of(path)
    try:
        location = data_location(path, fmt)
    except OSError as exc:
        return IngestProblem(path, f"unreadable {fmt.kind}: {exc.strerror or first_line(exc)}")
    if isinstance(location, IngestProblem):
        return location
    reader = sitk.ImageFileReader()
    reader.SetImageIO(fmt.image_io)
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return IngestProblem(path, f"unreadable {fmt.kind}: {itk_reason(exc)}")

    components, pixel_id = reader.GetNumberOfComponents(), reader.GetPixelID()
    if components != 1 or pixel_id not in _DTYPES:
        what = sitk.GetPixelIDValueAsString(pixel_id)
        return IngestProblem(path, f"{fmt.kind} voxels of type {what} ({components} components) are not supported; "
                                   "only scalar volumes are", kind="unsupported")
    dtype = np.dtype(_DTYPES[pixel_id])
    shape = tuple(int(n) for n in reader.GetSize())
    spatial = spatial_shape(shape, fmt.kind)
    if isinstance(spatial, str):
        return IngestProblem(path, spatial, kind="unsupported" if spatial.startswith("4D") else "error")
    problem = declared_size_problem(shape, dtype) or _stored_size_problem(fmt, location, math.prod(shape) * dtype.itemsize)
    if problem:
        return IngestProblem(path, problem)
    affine = itk_affine(reader.GetDirection(), reader.GetOrigin(), reader.GetSpacing())
    if not np.all(np.isfinite(affine)):
        return IngestProblem(path, f"{fmt.kind} geometry (direction, origin or spacing) is not finite")

    geometry = affine_geometry(affine, n_slices=spatial[2])
    declared = _MET_MODALITIES.get(_metadata(reader, "Modality")) if fmt == METAIMAGE else None
    return Series(
        study_uid=uid_from_path("study", path),
        series_uid=uid_from_path("series", path),
        patient_id="",
        accession="",
        modality=(modality_override or declared or DEFAULT_MODALITY).upper(),
        body_part="",
        source_path=path,
        paths=(path, location.path) if location.detached and location.path != path else (path,),
        loader=functools.partial(load_research_volume, path, fmt, spatial, geometry),
        description=Path(path).name,
        n_instances=1,
    )


def itk_affine(direction: tuple[float, ...], origin: tuple[float, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """The 4x4 affine from (i, j, k) voxel indices to LPS millimetres of an ITK image of 2 to 4
    dimensions: ``origin + direction @ diag(spacing)``. A 2D image gets a third axis of 1 mm along
    the normal of its plane (the z axis); of a 4D one (size 1 along t) the first three are kept."""
    dim = len(origin)
    matrix = np.asarray(direction, dtype=float).reshape(dim, dim)[:3, :3] * np.asarray(spacing, dtype=float)[:3]
    affine = np.eye(4)
    affine[: matrix.shape[0], : matrix.shape[1]] = matrix
    affine[: min(dim, 3), 3] = np.asarray(origin, dtype=float)[:3]
    return affine


def load_research_volume(path: str, fmt: Format, spatial: tuple[int, int, int], geometry: Geometry) -> Image:
    """Read the voxels as float32 (slices, rows, columns); the same checks as ``load_nifti_image``."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO(fmt.image_io)
    reader.SetFileName(path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise MedassistError(f"{path}: {fmt.kind} voxels unreadable: {itk_reason(exc)}") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MedassistError(f"{path}: {fmt.kind} voxels now have {image.GetNumberOfComponentsPerPixel()} components")
    data = np.array(sitk.GetArrayViewFromImage(image), dtype=np.float32)  # (k, j, i), copied
    del image
    if data.size != spatial[0] * spatial[1] * spatial[2]:
        raise MedassistError(f"{path}: {fmt.kind} holds {data.size} voxels, header says {spatial}")
    problem = voxel_values_problem(data, fmt.kind)
    if problem:
        raise MedassistError(f"{path}: {problem}")
    return volume_image(data.reshape(spatial[::-1]), geometry)


# --- the header text: where the voxels are -------------------------------------------------------


def data_location(path: str, fmt: Format) -> DataLocation | IngestProblem:
    """Where the header says the voxels are, or why the file cannot be read. Reads the header text only."""
    with open(path, "rb") as fp:
        head = fp.read(MAX_HEADER_BYTES)
        whole = not fp.read(1)
    parse = _nrrd_location if fmt == NRRD else _metaimage_location
    found = parse(path, head, whole)
    if isinstance(found, IngestProblem):
        return found
    if found.detached and not os.path.isfile(found.path):
        what = "is not a regular file" if os.path.exists(found.path) else "does not exist"
        return IngestProblem(path, f"{fmt.kind} data file {found.path} named in the header {what}")
    return found


def _header_lines(head: bytes, end: int) -> list[str]:
    return head[:end].decode("latin-1").replace("\r\n", "\n").split("\n")


def _split(path: str, kind: str) -> IngestProblem:
    return IngestProblem(path, f"{kind} voxels split over several data files are not supported", kind="unsupported")


def _nrrd_location(path: str, head: bytes, whole: bool) -> DataLocation | IngestProblem:
    """NRRD: the magic line, then ``field: value`` lines up to an empty line (or the end of a
    detached header); ``data file`` names detached voxels, ``encoding`` how they are stored."""
    if not head.startswith(b"NRRD000"):
        return IngestProblem(path, "unreadable NRRD: the file does not start with the NRRD magic (NRRD000x)")
    match = re.search(rb"\r?\n\r?\n", head)
    if match is None and not whole:
        return IngestProblem(path, f"unreadable NRRD: no end of header in the first {MAX_HEADER_BYTES} bytes")
    end = match.end() if match else len(head)
    fields: dict[str, str] = {}
    for line in _header_lines(head, end)[1:]:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue  # comments, key/value pairs (and ITK's parser will judge the rest)
        key, value = line.split(": ", 1)
        fields[key.strip().lower()] = value.strip()
    encoding = {"raw": "raw", "gzip": "deflate", "gz": "deflate"}.get(fields.get("encoding", "").lower(), "other")
    skip = _int_or_zero(fields.get("byte skip", fields.get("byteskip", "0")))
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is None:
        return DataLocation(path, end + max(skip, 0), encoding, detached=False)
    if data_file.upper().startswith("LIST") or ("%" in data_file and len(data_file.split()) >= 4):
        return _split(path, "NRRD")
    return DataLocation(_beside(path, data_file), max(skip, 0), encoding, detached=True)


def _metaimage_location(path: str, head: bytes, whole: bool) -> DataLocation | IngestProblem:
    """MetaImage: ``Key = Value`` lines, the last one ``ElementDataFile`` (LOCAL: the voxels follow)."""
    match = re.search(rb"(?im)^[ \t]*ElementDataFile[ \t]*=[^\n]*(\n|$)", head)
    if match is None:
        where = "file" if whole else f"first {MAX_HEADER_BYTES} bytes"
        return IngestProblem(path, f"unreadable MetaImage: no ElementDataFile line in the {where}")
    fields: dict[str, str] = {}
    for line in _header_lines(head, match.end()):
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip().lower()] = value.strip()
    if fields.get("compresseddata", "false").lower() == "true":
        encoding = "deflate"
    elif fields.get("binarydata", "true").lower() == "true":
        encoding = "raw"
    else:
        encoding = "other"
    data_file = fields["elementdatafile"]
    if data_file.upper() == "LOCAL":
        return DataLocation(path, match.end(), encoding, detached=False)
    if data_file.upper().startswith("LIST") or ("%" in data_file and len(data_file.split()) >= 4):
        return _split(path, "MetaImage")
    skip = _int_or_zero(fields.get("headersize", "0"))  # -1: the voxels are the file's last bytes
    return DataLocation(_beside(path, data_file), max(skip, 0), encoding, detached=True)


def _stored_size_problem(fmt: Format, location: DataLocation, voxel_bytes: int) -> str | None:
    """Why the data file cannot hold ``voxel_bytes`` of voxels (uncompressed: fewer bytes after the
    offset; deflate: a stream too small to hold them), or None. Nothing is decompressed."""
    stored = os.path.getsize(location.path)
    holder = f"the data file {os.path.basename(location.path)}" if location.detached else "the file"
    if location.encoding == "raw":
        return truncated_problem(fmt.kind, voxel_bytes=voxel_bytes, offset=location.offset, stored=stored,
                                 holder=holder)
    if location.encoding == "deflate":
        stream = "gzip" if fmt == NRRD else "deflate"
        return deflate_bound_problem(fmt.kind, needed=voxel_bytes, stream_bytes=max(stored - location.offset, 0),
                                     stream=stream)
    return None


def _beside(header: str, name: str) -> str:
    """A data file named in a header: relative names are relative to the header's folder."""
    return name if os.path.isabs(name) else os.path.join(os.path.dirname(header), name)


def _int_or_zero(text: str) -> int:
    try:
        return int(text.split()[0]) if text.split() else 0
    except ValueError:
        return 0


# --- SimpleITK's messages --------------------------------------------------------------------------

_ITK_PREFIX = re.compile(r"^(?:itk::|ITK |sitk::)?ERROR: (?:\w+\(0x[0-9a-fA-F]+\): )?")
_NRRD_PREFIX = re.compile(r"^\[nrrd\] \w+:\s*")


def itk_reason(exc: BaseException) -> str:
    """The useful part of a SimpleITK exception: without the "Exception thrown in SimpleITK ..."
    source line, the ImageIO's address and MetaIO's errno "Reason:"; for NRRD the innermost cause."""
    lines = [line.strip() for line in str(exc).splitlines()]
    lines = [_ITK_PREFIX.sub("", line) for line in lines
             if line and not line.startswith(("Exception thrown in SimpleITK", "Reason:"))]
    causes = [_NRRD_PREFIX.sub("", line) for line in lines if line.startswith("[nrrd]")]
    causes = [c for c in causes if c and c != "trouble"]
    if causes:
        return causes[-1]
    return lines[0] if lines else first_line(exc)


def _metadata(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

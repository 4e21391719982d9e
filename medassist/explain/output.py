"""Writing a saliency map: the float32 map (.npy) and an overlay PNG, both atomically.

The overlay is a separate rendered picture (a matplotlib colormap blended over the grayscale
display image, more opaque where the map is stronger); the source pixels are never altered.
File names come from ``saliency_stem``: series UID, model name and slice index, never a patient
identifier; a UID that is not a plain DICOM UID carries a short hash of itself, so no two series share a file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np

from medassist.atomic import write_atomic
from medassist.errors import MedassistError

# One picture of a map everywhere (the PNG beside it, the review app, the DICOM secondary capture):
# the colormap's colour over the grey image, transparent below OVERLAY_FLOOR of the map's maximum,
# its alpha rising with the map up to OVERLAY_OPACITY.
COLORMAPS = ("inferno", "jet", "hot", "viridis")
OVERLAY_CMAP = COLORMAPS[0]
OVERLAY_OPACITY = 0.45
OVERLAY_FLOOR = 0.1
# zlib level 1: a 450 x 300 overlay encodes in ~8 ms instead of ~41 ms at PIL's default 6, about as
# small (lossless either way); triage writes one per flagged finding on the cores the model uses
PNG_COMPRESS_LEVEL = 1

_UNSAFE = re.compile(r"[^0-9A-Za-z._-]+")
_PLAIN_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_NAME_MAX = 64  # a DICOM UID's longest; longer (not plain) UIDs are cut, their hash keeps them apart
UID_HASH_CHARS = 8


def saliency_stem(series_uid: str, model_name: str, slice_index: int = 0, method: str | None = None) -> str:
    """``<series_uid>_<model>_s<slice>[_<method>]``, characters outside [0-9A-Za-z._-] replaced by '_';
    the UID part as ``uid_file_part`` makes it.

    Built from identifiers that name no patient: the series instance UID, the model and the slice.
    """
    uid = uid_file_part(str(series_uid)) if series_uid else ""
    model = _UNSAFE.sub("_", str(model_name)).strip("._")
    if not uid or not model:
        raise ValueError(f"cannot name a saliency file from series_uid={series_uid!r}, model={model_name!r}")
    if int(slice_index) < 0:
        raise ValueError(f"slice_index must be >= 0, got {slice_index}")
    stem = f"{uid}_{model}_s{int(slice_index):04d}"
    if method:
        stem += "_" + _UNSAFE.sub("_", method)
    return stem


def uid_file_part(uid: str) -> str:
    """A UID as part of a file name: a plain DICOM UID (digits and dots, at most 64) as it is; any
    other text sanitised (``_UNSAFE`` characters to '_', leading/trailing '.' and '_' dropped, cut to
    ``UID_NAME_MAX``) plus '-' and the first ``UID_HASH_CHARS`` hex digits of the exact UID's sha256.

    '/1.2.3' and '1.2.3' (or 'a' and 'A' on a case-blind disk) thus never name the same file; a
    plain UID never holds '-', so a hashed name cannot equal one either.
    """
    if _PLAIN_UID.fullmatch(uid) and len(uid) <= UID_NAME_MAX:
        return uid
    cleaned = _UNSAFE.sub("_", uid).strip("._")[:UID_NAME_MAX].rstrip("._") or "uid"
    return f"{cleaned}-{hashlib.sha256(uid.encode('utf-8', 'surrogatepass')).hexdigest()[:UID_HASH_CHARS]}"


@functools.lru_cache(maxsize=8)
def colormap_lut(name: str) -> np.ndarray:
    """A 256 x 3 uint8 RGB lookup table of one of ``COLORMAPS`` (read-only)."""
    if name not in COLORMAPS:
        raise MedassistError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    from matplotlib import colormaps  # heavy; only when an overlay is drawn

    lut = (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def saliency_layer(saliency2d: np.ndarray, colormap: str = OVERLAY_CMAP, floor: float = OVERLAY_FLOOR) -> np.ndarray:
    """The overlay layer of a 0..1 map: RGBA uint8, colour from the colormap, alpha from the map
    (transparent below ``floor``, so only salient regions are tinted)."""
    values = np.clip(np.nan_to_num(np.asarray(saliency2d, dtype=np.float32)), 0.0, 1.0)
    index = (values * 255.0 + 0.5).astype(np.uint8)
    rgba = np.empty(values.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = colormap_lut(colormap)[index]
    alpha = np.where(values >= floor, values, 0.0)
    rgba[..., 3] = (alpha * 255.0 + 0.5).astype(np.uint8)
    return rgba


def composite(base: np.ndarray, layer: np.ndarray | None, opacity: float) -> np.ndarray:
    """Blend an RGBA layer over an 8-bit grey (or RGB) base at ``opacity`` (0..1); a new RGB uint8 array."""
    rgb = np.repeat(base[..., None], 3, axis=-1) if base.ndim == 2 else base.copy()
    if layer is None or opacity <= 0:
        return rgb.astype(np.uint8, copy=False)
    if layer.shape[:2] != rgb.shape[:2]:
        raise MedassistError(f"overlay is {layer.shape[:2]}, image {rgb.shape[:2]}: they must match")
    # integer blend: out = (base * (256 - a) + colour * a) / 256, a = alpha * opacity in 0..256
    weight = np.uint16(round(min(max(opacity, 0.0), 1.0) * 256))
    a = (layer[..., 3].astype(np.uint16) * weight + 127) // 255
    a = a[..., None]
    out = rgb.astype(np.uint16) * (256 - a)
    out += layer[..., :3].astype(np.uint16) * a
    out += 128
    out >>= 8
    return out.astype(np.uint8)


def render_overlay(
    map_source: np.ndarray,
    display_image: np.ndarray,
    *,
    cmap: str = OVERLAY_CMAP,
    opacity: float = OVERLAY_OPACITY,
) -> np.ndarray:
    """An (rows, cols, 3) uint8 RGB picture: the map (scaled by its maximum) as ``saliency_layer``
    over the grey ``display_image`` (0..1, clipped), blended by ``composite``; where the map is
    below the floor the picture is the display image's grey."""
    sal = np.asarray(map_source, dtype=np.float32)
    gray = np.asarray(display_image, dtype=np.float32)
    if gray.ndim == 3 and gray.shape[0] == 1:
        gray = gray[0]
    if sal.shape != gray.shape:
        raise ValueError(f"saliency map {sal.shape} and display image {gray.shape} differ in shape")
    base = (np.clip(np.nan_to_num(gray), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    sal = np.nan_to_num(np.maximum(sal, 0.0))
    peak = float(sal.max())
    weight = (sal / peak) if peak > 0 else np.zeros_like(sal)
    return composite(base, saliency_layer(weight, cmap), opacity)


def write_saliency(
    map_source: np.ndarray,
    display_image: np.ndarray,
    out_dir: str | Path,
    stem: str,
    *,
    cmap: str = OVERLAY_CMAP,
    opacity: float = OVERLAY_OPACITY,
) -> tuple[Path, Path]:
    """Write ``<stem>.npy`` (the float32 map as given, source geometry) and ``<stem>.png`` (overlay).

    Each file is written to a temporary name in ``out_dir`` and renamed into place, so a reader
    never sees a partial file. Returns (npy_path, png_path).
    """
    sal = np.ascontiguousarray(map_source, dtype=np.float32)
    return _write_pair(sal, render_overlay(sal, display_image, cmap=cmap, opacity=opacity), out_dir, stem)


def write_volume_saliency(
    maps: np.ndarray,
    overlay_plane: int,
    display_image: np.ndarray,
    out_dir: str | Path,
    stem: str,
    *,
    cmap: str = OVERLAY_CMAP,
    opacity: float = OVERLAY_OPACITY,
) -> tuple[Path, Path]:
    """Write ``<stem>.npy`` (the (k, rows, cols) maps of a volume finding's slices) and
    ``<stem>.png`` (the overlay of plane ``overlay_plane`` on that slice's ``display_image``)."""
    stack = np.ascontiguousarray(maps, dtype=np.float32)
    if stack.ndim != 3 or not 0 <= overlay_plane < stack.shape[0]:
        raise ValueError(f"maps {stack.shape}: no plane {overlay_plane}")
    rgb = render_overlay(stack[overlay_plane], display_image, cmap=cmap, opacity=opacity)
    return _write_pair(stack, rgb, out_dir, stem)


def _write_pair(sal: np.ndarray, rgb: np.ndarray, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """The .npy map and .png overlay, each written atomically."""
    from PIL import Image as PILImage

    if not stem or "/" in stem or os.sep in stem or stem.startswith("."):
        raise ValueError(f"invalid saliency file stem {stem!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    npy_buf = io.BytesIO()
    np.save(npy_buf, sal, allow_pickle=False)
    png_buf = io.BytesIO()
    PILImage.fromarray(rgb).save(png_buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)

    npy_path, png_path = out / f"{stem}.npy", out / f"{stem}.png"
    write_atomic(npy_path, npy_buf.getvalue())
    write_atomic(png_path, png_buf.getvalue())
    return npy_path, png_path

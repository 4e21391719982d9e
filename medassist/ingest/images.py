"""Plain image files (JPEG, PNG) for training and sample code: grayscale uint8 arrays."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile

from medassist.errors import MedassistError


def load_jpeg_grayscale(path: str | Path) -> np.ndarray:
    """Read an image file as a (rows, columns) uint8 grayscale array.

    Truncated files (some FracAtlas JPEGs miss their last bytes) are decoded anyway with
    ``ImageFile.LOAD_TRUNCATED_IMAGES``, with a warning naming the file; other files are read
    strictly. 16-bit and float images are scaled to 0..255 by their maximum.
    """
    try:
        return _read(path, allow_truncated=False)
    except OSError as exc:
        if "truncated" not in str(exc).lower():
            raise MedassistError(f"{path}: unreadable image: {exc}") from exc
    warnings.warn(f"{path}: truncated image file, decoded with missing data filled", stacklevel=2)
    try:
        return _read(path, allow_truncated=True)
    except OSError as exc:
        raise MedassistError(f"{path}: unreadable image: {exc}") from exc


def _read(path: str | Path, *, allow_truncated: bool) -> np.ndarray:
    """Decode with Pillow; LOAD_TRUNCATED_IMAGES is set only for this call, then restored."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
    try:
        with PILImage.open(path) as img:
            img.load()
            return _to_gray_uint8(img)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _to_gray_uint8(img: PILImage.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 luminance."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(img, dtype=np.float32)
        top = float(values.max()) if values.size else 0.0
        scaled = values * (255.0 / top) if top > 0 else np.zeros_like(values)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if img.mode in ("P", "PA", "LA", "RGBA"):
        img = img.convert("RGB")
    return np.asarray(img.convert("L"), dtype=np.uint8)

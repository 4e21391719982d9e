"""load_jpeg_grayscale: plain image files for training code (medassist.ingest.images)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from medassist.errors import MedassistError
from medassist.ingest import load_jpeg_grayscale


def _jpeg(path, mode="RGB", size=(40, 30)):
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path, quality=90)
    return path


def test_colour_jpeg_becomes_2d_uint8(tmp_path):
    gray = load_jpeg_grayscale(_jpeg(tmp_path / "c.jpg"))
    assert gray.shape == (30, 40) and gray.dtype == np.uint8


def test_truncated_jpeg_warns_naming_the_file_and_still_decodes(tmp_path):
    path = _jpeg(tmp_path / "t.jpg", mode="L", size=(64, 64))
    path.write_bytes(path.read_bytes()[:-40])

    with pytest.warns(UserWarning, match="t.jpg: truncated"):
        gray = load_jpeg_grayscale(path)

    assert gray.shape == (64, 64)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the global flag is restored


def test_16_bit_png_is_scaled_to_uint8(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)).save(path)
    gray = load_jpeg_grayscale(path)
    assert gray.tolist() == [[0, 64], [128, 255]]


def test_non_image_raises_naming_the_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(MedassistError, match="notes.jpg: unreadable image"):
        load_jpeg_grayscale(path)

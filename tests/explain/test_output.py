"""medassist.explain.output: file stems, the overlay, atomic .npy + .png writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medassist.explain import explain_and_write, render_overlay, saliency_stem, write_saliency
from medassist.preprocess.transforms import prepare_2d

from .conftest import dev_model


def test_stem_is_series_model_slice_and_nothing_else():
    stem = saliency_stem("1.2.826.0.1.3680043.8.498.1", "fracture_xray", 7)
    assert stem == "1.2.826.0.1.3680043.8.498.1_fracture_xray_s0007"
    assert saliency_stem("1.2.3", "m", 0, method="occlusion") == "1.2.3_m_s0000_occlusion"


def test_stem_cannot_escape_the_folder():
    stem = saliency_stem("../../etc/passwd", "a b/c", 1)
    assert "/" not in stem and " " not in stem and not stem.startswith(".")
    with pytest.raises(ValueError):
        saliency_stem("", "m", 0)
    with pytest.raises(ValueError):
        saliency_stem("1.2.3", "m", -1)


def test_series_whose_uids_differ_only_in_unsafe_characters_never_share_a_file():
    uids = ["1.2.3", "/1.2.3", "1.2.3/", "1 2.3", "1_2.3", "A.1", "a.1", "x" * 300, "x" * 301, "..", "é"]
    stems = [saliency_stem(uid, "m", 0) for uid in uids]
    assert len({stem.lower() for stem in stems}) == len(uids)  # unique even on a case-blind disk
    assert stems[0] == "1.2.3_m_s0000"  # a plain UID keeps its name
    for stem in stems:
        assert "/" not in stem and not stem.startswith(".") and len(stem) < 100
    assert saliency_stem("/1.2.3", "m", 0) == saliency_stem("/1.2.3", "m", 0)  # stable across runs


def test_write_saliency_writes_a_readable_png_and_npy(tmp_path):
    rng = np.random.default_rng(0)
    display = rng.random((37, 53)).astype(np.float32)
    original = display.copy()
    sal = np.zeros((37, 53), np.float32)
    sal[10:20, 30:40] = np.linspace(0.1, 2.0, 10, dtype=np.float32)[None]
    npy, png = write_saliency(sal, display, tmp_path / "sal", "1.2.3_m_s0000")

    assert npy == tmp_path / "sal" / "1.2.3_m_s0000.npy" and png.suffix == ".png"
    loaded = np.load(npy, allow_pickle=False)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, sal)
    with PILImage.open(png) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (53, 37)
        rgb = np.asarray(img)
    np.testing.assert_array_equal(display, original)  # the source pixels are never touched
    grey = np.clip(original * 255 + 0.5, 0, 255).astype(np.uint8)
    untouched = sal == 0
    for channel in range(3):  # where the map is zero the picture is the display's grey exactly
        np.testing.assert_array_equal(rgb[..., channel][untouched], grey[untouched])
    assert (rgb[sal > 1.0].std(axis=-1) > 10).all()  # coloured where the map is strong
    assert sorted(p.name for p in (tmp_path / "sal").iterdir()) == [npy.name, png.name]  # no temp files


def test_write_saliency_replaces_an_existing_file(tmp_path):
    display = np.zeros((8, 8), np.float32)
    write_saliency(np.ones((8, 8), np.float32), display, tmp_path, "s")
    npy, _ = write_saliency(np.full((8, 8), 3.0, np.float32), display, tmp_path, "s")
    assert float(np.load(npy).max()) == 3.0


def test_shapes_must_match_and_stem_must_be_a_name(tmp_path):
    with pytest.raises(ValueError):
        write_saliency(np.zeros((4, 4)), np.zeros((5, 4)), tmp_path, "s")
    with pytest.raises(ValueError):
        write_saliency(np.zeros((4, 4)), np.zeros((4, 4)), tmp_path, "../s")
    assert list(tmp_path.iterdir()) == []


def test_all_zero_map_renders_the_plain_display():
    display = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    rgb = render_overlay(np.zeros((4, 5), np.float32), display)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_explain_and_write_a_batch_in_source_geometry(tmp_path):
    model = dev_model(input_size=128)
    shapes = [(90, 120), (150, 60)]
    displays = [np.random.default_rng(i).random(s).astype(np.float32) for i, s in enumerate(shapes)]
    prepared = [prepare_2d(d, model.spec.preprocess) for d in displays]
    inputs = torch.stack([t for t, _ in prepared])
    stems = [saliency_stem(f"1.2.{i}", model.spec.name, 0) for i in range(2)]
    paths = explain_and_write(model, inputs, [b for _, b in prepared], displays, tmp_path, stems)
    for (npy, png), shape in zip(paths, shapes):
        assert np.load(npy).shape == shape
        with PILImage.open(png) as img:
            assert img.size == (shape[1], shape[0])
    with pytest.raises(ValueError):
        explain_and_write(model, inputs, [prepared[0][1]], displays, tmp_path, stems)


def test_written_files_get_the_usual_permissions(tmp_path):
    """Not tempfile.mkstemp's owner-only 0600: a viewer running as another user can read them."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    npy, png = write_saliency(np.ones((4, 4), np.float32), np.zeros((4, 4), np.float32), tmp_path, "p")
    for path in (npy, png):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask

"""Training augmentation: shapes, ranges, determinism, and the warp shared by images and masks."""

import torch

from medassist.models.augment import augment_batch, magnify, photometric, random_crops, rescale_percentiles

STRONG = {"rotate_deg": 25, "rotate_any": 0.5, "scale": [0.8, 2.4], "translate": 0.25, "hflip": True,
          "vflip": True, "contrast": 0.3, "gamma": 0.5, "invert": 0.5, "unsharp": 1.5, "blur": 2.0,
          "downsample": 3.0, "noise": 0.04, "jpeg": 0.5, "borders": 0.5, "markers": 0.5}


def _batch(n: int = 6, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, 40:56, 40:56] = 1
    return images, masks


def test_strong_augmentation_keeps_range_and_resamples_to_the_output_size():
    images, masks = _batch()
    out, out_masks = augment_batch(images, masks, STRONG, torch.Generator().manual_seed(0), out_size=64)
    assert out.shape == (6, 1, 64, 64) and out_masks.shape == (6, 1, 64, 64)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert set(torch.unique(out_masks).tolist()) <= {0.0, 1.0}  # nearest: masks stay binary


def test_same_seed_same_batch_other_seed_other_batch():
    images, masks = _batch()
    a, _ = augment_batch(images, masks, STRONG, torch.Generator().manual_seed(1))
    b, _ = augment_batch(images, masks, STRONG, torch.Generator().manual_seed(1))
    c, _ = augment_batch(images, masks, STRONG, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_identity_config_changes_nothing():
    images, masks = _batch()
    out, out_masks = augment_batch(images, masks, {}, torch.Generator().manual_seed(0))
    assert torch.allclose(out, images, atol=1e-5)
    assert torch.equal(out_masks, masks)


def test_invert_everything_gives_the_negative():
    images, _ = _batch()
    out = photometric(images, {"invert": 1.0}, torch.Generator().manual_seed(0))
    assert torch.allclose(out, 1.0 - images)


def test_black_borders_and_markers_touch_only_the_chosen_images():
    images = torch.full((4, 1, 80, 80), 0.5)
    out = photometric(images, {"borders": 1.0}, torch.Generator().manual_seed(5))
    assert (out == 0).any() and float(out.max()) == 0.5
    marked = photometric(images, {"markers": 1.0}, torch.Generator().manual_seed(5))
    assert all(float(marked[i].max()) >= 0.8 for i in range(4))


def test_crops_on_a_finding_hold_it_and_other_crops_stay_on_the_anatomy():
    images = torch.zeros(8, 1, 96, 96)
    images[:, :, :, 48:] = 0.7  # anatomy on the right half; the left half is letterbox black
    masks = torch.zeros(8, 1, 96, 96)
    masks[:4, :, 70:74, 80:84] = 1  # a small finding on the first four
    gen = torch.Generator().manual_seed(0)
    x, m = random_crops(images, masks, 32, gen, on_finding=1.0)
    assert x.shape == (8, 1, 32, 32) and m.shape == (8, 1, 32, 32)
    assert all(float(m[i].max()) == 1.0 for i in range(4))  # every finding crop holds mask pixels
    assert all(float(x[i].max()) > 0 for i in range(4, 8))  # the rest show anatomy, not padding
    again, _ = random_crops(images, masks, 32, torch.Generator().manual_seed(0), on_finding=1.0)
    assert torch.equal(x, again)  # the seeded generator decides the placement
    anywhere, _ = random_crops(images, masks, 32, torch.Generator().manual_seed(1), on_finding=0.0)
    assert all(float(anywhere[i].max()) > 0 for i in range(8))


def test_magnify_shows_a_window_at_the_input_size_with_its_mask_still_binary():
    images, masks = _batch(n=2, size=96)
    window_x, window_m = images[:, :, 32:80, 32:80], masks[:, :, 32:80, 32:80]
    big_x, big_m = magnify(window_x, window_m, 96)
    assert big_x.shape == big_m.shape == (2, 1, 96, 96)
    assert set(big_m.unique().tolist()) == {0.0, 1.0}
    # the mask's share of the window is kept (16 of 48 pixels a side -> a third of 96)
    assert abs(float(big_m.mean()) - float(window_m.mean())) < 0.01
    same_x, _ = magnify(images, masks, 96)
    assert same_x is images  # already at the size: untouched


def test_rescale_percentiles_maps_each_image_to_its_own_range_and_flat_images_to_zero():
    ramp = torch.linspace(0.2, 0.4, 100).reshape(1, 1, 10, 10)
    flat = torch.full((1, 1, 10, 10), 0.7)
    out = rescale_percentiles(torch.cat([ramp, flat]), 0.0, 100.0)
    assert torch.isclose(out[0].min(), torch.tensor(0.0)) and torch.isclose(out[0].max(), torch.tensor(1.0))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    clipped = rescale_percentiles(ramp, 10.0, 90.0)
    assert float((clipped == 0).float().mean()) > 0.05 and float((clipped == 1).float().mean()) > 0.05

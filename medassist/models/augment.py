"""Training-time augmentation: batch-wise on (N, 1, S, S) tensors in 0..1, from a seeded generator.

``augment_batch`` is the one entry point. The config's ``train.augment`` mapping switches each step
on; a key that is absent (or zero) leaves its step out, so an older config keeps its old behaviour.

Geometry (the same warp for images and masks): ``rotate_deg`` (uniform +-), ``rotate_any`` (share of
images turned by an arbitrary angle instead), ``scale``, ``translate``, ``hflip``, ``vflip``.
Photometry (images only), meant to make one source's grey-level habits look like another's:
``contrast``, ``gamma``, ``invert`` (share shown negative, as some exports are), ``unsharp``
(local-contrast boost, a CLAHE-like look), ``blur``, ``downsample`` (resolution loss and back),
``noise``, ``jpeg`` (share re-encoded at quality 20-70), ``borders`` (share given black bands:
letterboxing and collimation), ``markers`` (share given burned-in bright marker blocks).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image as PILImage
from torch.nn import functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + torch.rand(n, generator=gen) * (high - low)


def _chosen(n: int, share: float, gen: torch.Generator) -> torch.Tensor:
    """A boolean mask choosing about ``share`` of ``n`` items."""
    return torch.rand(n, generator=gen) < share


def random_affine_grid(batch: int, size: int, aug: dict, gen: torch.Generator) -> torch.Tensor:
    """Sampling grids for random rotation, scale, translation and flips."""
    angle = (torch.rand(batch, generator=gen) * 2 - 1) * math.radians(aug.get("rotate_deg", 0))
    if aug.get("rotate_any"):
        anywhere = _chosen(batch, aug["rotate_any"], gen)
        angle = torch.where(anywhere, _uniform(batch, -math.pi, math.pi, gen), angle)
    low, high = aug.get("scale", [1.0, 1.0])
    scale = low + torch.rand(batch, generator=gen) * (high - low)
    shift = (torch.rand(batch, 2, generator=gen) * 2 - 1) * aug.get("translate", 0.0) * 2
    flip = torch.where(torch.rand(batch, generator=gen) < (0.5 if aug.get("hflip") else 0.0), -1.0, 1.0)
    vflip = torch.ones(batch)
    if aug.get("vflip"):  # drawn only when asked, so older configs keep their random stream
        vflip = torch.where(torch.rand(batch, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * flip, -sin * vflip, shift[:, 0]
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * flip, cos * vflip, shift[:, 1]
    return F.affine_grid(theta, [batch, 1, size, size], align_corners=False)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own sigma (pixels); sigma 0 leaves it as it is."""
    out = images.clone()
    for i in torch.nonzero(sigma > 0.05).flatten().tolist():
        radius = max(1, int(3 * float(sigma[i])))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (t / sigma[i]) ** 2)
        kernel = kernel / kernel.sum()
        x = F.pad(images[i : i + 1], (radius, radius, radius, radius), mode="replicate")
        x = F.conv2d(x, kernel.view(1, 1, 1, -1))
        out[i : i + 1] = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return out


def _downsample(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Lose resolution: area-shrink each chosen image by its factor and bilinear-grow it back."""
    out = images.clone()
    size = images.shape[-1]
    for i in torch.nonzero(factors > 1.0).flatten().tolist():
        small = max(16, int(size / float(factors[i])))
        x = F.interpolate(images[i : i + 1], size=(small, small), mode="area")
        out[i : i + 1] = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return out


def _jpeg(images: torch.Tensor, chosen: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Re-encode the chosen images as JPEG at a random quality (20-70) and decode them again."""
    out = images.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        quality = int(_uniform(1, 20, 70, gen))
        pixels = (images[i, 0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        buffer = io.BytesIO()
        PILImage.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(PILImage.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.float32)
        out[i, 0] = torch.from_numpy(decoded / 255.0)
    return out


def _black_borders(images: torch.Tensor, chosen: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Black bands (up to 20% of the side) on random edges of the chosen images."""
    out = images.clone()
    size = images.shape[-1]
    for i in torch.nonzero(chosen).flatten().tolist():
        bands = (torch.rand(4, generator=gen) < 0.5) * (torch.rand(4, generator=gen) * 0.2 * size)
        top, bottom, left, right = (int(b) for b in bands)
        if top:
            out[i, :, :top] = 0
        if bottom:
            out[i, :, size - bottom :] = 0
        if left:
            out[i, :, :, :left] = 0
        if right:
            out[i, :, :, size - right :] = 0
    return out


def _markers(images: torch.Tensor, chosen: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Burned-in markers: 1-3 bright blocks (lead letters, labels, rulers) on the chosen images."""
    out = images.clone()
    size = images.shape[-1]
    for i in torch.nonzero(chosen).flatten().tolist():
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            h, w = (int(v) for v in torch.randint(size // 40, size // 8, (2,), generator=gen))
            r, c = int(torch.randint(0, size - h, (1,), generator=gen)), int(torch.randint(0, size - w, (1,), generator=gen))
            level = float(_uniform(1, 0.8, 1.0, gen))
            block = out[i, 0, r : r + h, c : c + w]
            if torch.rand(1, generator=gen) < 0.5:  # an outlined letter-like block, not a solid one
                inner = block[h // 4 : h - h // 4, w // 4 : w - w // 4].clone()
                block.fill_(level)
                block[h // 4 : h - h // 4, w // 4 : w - w // 4] = inner
            else:
                block.fill_(level)
    return out


def photometric(images: torch.Tensor, aug: dict, gen: torch.Generator) -> torch.Tensor:
    """The grey-level steps of ``augment_batch`` (images only)."""
    n = images.shape[0]
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * aug.get("contrast", 0.0)
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * aug.get("gamma", 0.0))
    images = ((images.clamp(0, 1) ** gamma) * contrast).clamp(0, 1)
    if aug.get("invert"):
        negative = _chosen(n, aug["invert"], gen).view(n, 1, 1, 1)
        images = torch.where(negative, 1.0 - images, images)
    if aug.get("unsharp"):
        amount = (torch.rand(n, 1, 1, 1, generator=gen) * aug["unsharp"])
        size = images.shape[-1]  # the local mean: a 16x area shrink grown back (cheap, smooth)
        coarse = F.interpolate(images, size=(max(1, size // 16),) * 2, mode="area")
        smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        images = (images + amount * (images - smooth)).clamp(0, 1)
    if aug.get("blur"):
        sigma = torch.rand(n, generator=gen) * aug["blur"] * _chosen(n, 0.3, gen)
        images = _gaussian_blur(images, sigma)
    if aug.get("downsample"):
        factor = 1 + torch.rand(n, generator=gen) * (aug["downsample"] - 1) * _chosen(n, 0.3, gen)
        images = _downsample(images, factor)
    if aug.get("noise"):
        sigma = torch.rand(n, 1, 1, 1, generator=gen) * aug["noise"]
        images = (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0, 1)
    if aug.get("jpeg"):
        images = _jpeg(images, _chosen(n, aug["jpeg"], gen), gen)
    if aug.get("borders"):
        images = _black_borders(images, _chosen(n, aug["borders"], gen), gen)
    if aug.get("markers"):
        images = _markers(images, _chosen(n, aug["markers"], gen), gen)
    return images


def augment_batch(images: torch.Tensor, masks: torch.Tensor, aug: dict, gen: torch.Generator,
                  out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images (bilinear) and masks (nearest) identically, then the photometric steps.

    ``out_size``: the side of the warped output (default: the input's); sampling a larger cached
    image into a smaller output keeps detail when the warp zooms in.
    """
    grid = random_affine_grid(images.shape[0], out_size or images.shape[-1], aug, gen)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return photometric(images, aug, gen), masks


def random_crops(images: torch.Tensor, masks: torch.Tensor, size: int, gen: torch.Generator, *,
                 on_finding: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``size`` x ``size`` window of each (N, 1, S, S) image and mask: local evidence only.

    An image whose mask is not empty gets, with probability ``on_finding``, a window that holds a
    random mask pixel (anywhere inside it); every other window is placed at random over the image's
    non-zero pixels (not on the letterbox padding), so a crop shows anatomy, not black.
    """
    n, side = images.shape[0], images.shape[-1]
    out_x = torch.empty(n, 1, size, size, dtype=images.dtype)
    out_m = torch.empty(n, 1, size, size, dtype=masks.dtype)
    for i in range(n):
        use_mask = bool(masks[i].amax() > 0) and float(torch.rand(1, generator=gen)) < on_finding
        where = torch.nonzero(masks[i, 0] > 0) if use_mask else torch.nonzero(images[i, 0] > 0.05)
        if len(where):
            r, c = (int(v) for v in where[int(torch.randint(0, len(where), (1,), generator=gen))])
        else:
            r, c = side // 2, side // 2
        offset = torch.randint(size // 8, size - size // 8, (2,), generator=gen)
        top = min(max(r - int(offset[0]), 0), side - size)
        left = min(max(c - int(offset[1]), 0), side - size)
        out_x[i] = images[i, :, top : top + size, left : left + size]
        out_m[i] = masks[i, :, top : top + size, left : left + size]
    return out_x, out_m


def magnify(images: torch.Tensor, masks: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (N, 1, s, s) windows and their masks to ``size`` (bilinear / nearest): a window of the
    input shown at the network's input size, as a tile of a radiograph is shown at inference."""
    if images.shape[-1] == size:
        return images, masks
    return (F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False),
            F.interpolate(masks, size=(size, size), mode="nearest"))


def rescale_percentiles(images: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Each (N, 1, s, s) image re-scaled to 0..1 between its own ``low``/``high`` percentiles
    (clipped; a flat image becomes zeros): a window scaled as ``prepare_2d`` scales a cropped tile."""
    flat = images.reshape(images.shape[0], -1)
    q = torch.quantile(flat, torch.tensor([low / 100.0, high / 100.0], dtype=flat.dtype), dim=1)
    lo, hi = q[0][:, None], q[1][:, None]
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp(min=1e-12), torch.zeros_like(flat))
    return out.clamp_(0.0, 1.0).reshape(images.shape)

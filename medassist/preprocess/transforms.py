"""The MONAI transform chain a model's PreprocessSpec asks for, and its exact inverse geometry.

Chain for a 2D image: per-image percentile intensity scaling -> aspect-preserving resize of the
longest side -> centred zero pad to a square. ``Letterbox`` records the resize and pad so a
saliency map can be mapped back onto the source pixels exactly.

The chain is written in numpy and plain torch, not as a MONAI Compose: it gives the same numbers
as MONAI's ``ScaleIntensityRangePercentiles(b_min=0, b_max=1, clip=True)``, ``Resize(size_mode=
"longest", mode="area")`` and ``SpatialPad`` (tests compare them), at a fraction of the CPU time.
The percentile scaling was half of the preprocessing time with MONAI's torch.quantile path, and
MetaTensor bookkeeping was most of the resize's. Triage runs this chain once per image on the
same cores as the model, so every millisecond here is throughput lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medassist.ingest.percentiles import percentile
from medassist.models.spec import PreprocessSpec


@dataclass(frozen=True)
class Letterbox:
    """Where a (rows, cols) source image sits inside the square network input."""

    source_shape: tuple[int, int]
    resized_shape: tuple[int, int]
    pad_before: tuple[int, int]
    input_size: int

    def to_source(self, heatmap: np.ndarray) -> np.ndarray:
        """Crop the padding away and resize a network-input-sized map back to the source shape."""
        top, left = self.pad_before
        rows, cols = self.resized_shape
        crop = torch.from_numpy(np.ascontiguousarray(np.asarray(heatmap, dtype=np.float32)[top : top + rows,
                                                                                           left : left + cols]))
        back = F.interpolate(crop[None, None], size=self.source_shape, mode="bilinear", align_corners=False)
        return back[0, 0].numpy()

    def to_input(self, row: float, col: float) -> tuple[float, float]:
        """Map a source pixel coordinate to network-input coordinates."""
        row_scale = self.resized_shape[0] / self.source_shape[0]
        col_scale = self.resized_shape[1] / self.source_shape[1]
        return row * row_scale + self.pad_before[0], col * col_scale + self.pad_before[1]


def letterbox_for(source_shape: tuple[int, int], input_size: int) -> Letterbox:
    """The resize and pad of the longest side to ``input_size`` (MONAI's Resize(size_mode='longest')
    + SpatialPad arithmetic: sizes rounded, the odd pixel of padding after)."""
    scale = input_size / max(source_shape)
    resized = tuple(int(round(s * scale)) for s in source_shape)
    pad_before = tuple((input_size - r) // 2 for r in resized)
    return Letterbox(tuple(source_shape), resized, pad_before, input_size)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PercentileScale:
    """Per-image percentile scaling to 0..1, clipped: removes scanner- and source-level intensity cues.

    A constant image maps to zeros. Returns float32, same shape.
    """

    lower: float
    upper: float

    def __call__(self, image: np.ndarray) -> np.ndarray:
        img = np.asarray(image, dtype=np.float32)
        low, high = (float(v) for v in percentile(img, (self.lower, self.upper)))
        if high <= low:
            return np.zeros_like(img)
        scaled = img - low  # a new array: the steps below work in place on it, not on ``image``
        scaled /= high - low
        return np.clip(scaled, 0.0, 1.0, out=scaled)


def intensity_transform(spec: PreprocessSpec) -> PercentileScale:
    """The spec's per-image percentile scaling."""
    low, high = spec.percentiles
    return PercentileScale(lower=low, upper=high)


def letterbox_array(image: np.ndarray, box: Letterbox) -> np.ndarray:
    """Area-resize a (rows, cols) image to ``box.resized_shape`` and zero-pad it: (1, S, S) float32 numpy.

    The padding is written by numpy into a zeroed array, not by ``F.pad``: the same numbers, but
    torch splits a 256 x 256 pad over its threads, and on cores shared with other work that wait
    cost ~10 ms a slice (a 150-slice MR volume is prepared in this process).
    """
    x = np.ascontiguousarray(image, dtype=np.float32)
    if x.shape != box.resized_shape:
        x = F.interpolate(torch.from_numpy(x)[None, None], size=box.resized_shape, mode="area")[0, 0].numpy()
    (top, left), (rows, cols) = box.pad_before, box.resized_shape
    out = np.zeros((1, box.input_size, box.input_size), dtype=np.float32)
    out[0, top : top + rows, left : left + cols] = x
    return out


def apply_letterbox(image: np.ndarray, box: Letterbox) -> torch.Tensor:
    """Area-resize a (rows, cols) image to ``box.resized_shape`` and zero-pad it to (1, S, S), float32."""
    return torch.from_numpy(letterbox_array(image, box))


EQUALIZE_BINS = 256


def equalize_nonzero(images: torch.Tensor, bins: int = EQUALIZE_BINS) -> torch.Tensor:
    """Histogram-equalise each image of (..., S, S) values in 0..1 over its non-zero pixels.

    Each value becomes the share of the image's non-zero pixels at or below it (values binned to
    ``bins`` levels), so any monotonic grey-level mapping of a source gives the same output. Zeros
    (letterbox padding, background clipped by the percentile scaling) stay 0. The training loop
    applies it to augmented batches, inference to each prepared input: one definition for both.
    """
    shape = images.shape
    flat = images.reshape(-1, shape[-2] * shape[-1]).clamp(0, 1)
    levels = (flat * (bins - 1)).round().long()
    hist = torch.zeros(flat.shape[0], bins, dtype=torch.float32, device=images.device)
    hist.scatter_add_(1, levels, torch.ones_like(flat))
    hist[:, 0] = 0
    cdf = hist.cumsum(1)
    lut = cdf / cdf[:, -1:].clamp(min=1.0)
    lut[:, 0] = 0
    return torch.gather(lut, 1, levels).reshape(shape).to(images.dtype)


def prepare_2d(image: np.ndarray, spec: PreprocessSpec) -> tuple[torch.Tensor, Letterbox]:
    """One (rows, cols) image -> a (1, S, S) float32 network input and its Letterbox."""
    array, box = prepare_2d_array(image, spec)
    return torch.from_numpy(array), box


def prepare_2d_array(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Letterbox]:
    """``prepare_2d`` with the input as a (1, S, S) float32 numpy array (to stack many with numpy)."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    box = letterbox_for(image.shape, spec.input_size)
    array = letterbox_array(intensity_transform(spec)(image), box)
    if spec.equalize:
        array = equalize_nonzero(torch.from_numpy(array)).numpy()
    return array, box

"""Radiographs (``input_kind`` "image2d"): one 2D image per study, its score the study's score.

The first slice of the spec's source array is letterboxed to the input size
(``preprocess.transforms.prepare_2d``); a map goes back through the letterbox, which covers the
whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from medassist.families.base import ModelFamily, PreparedPlane, SaliencyInputs, StudyScore
from medassist.models.spec import InputKind
from medassist.preprocess.transforms import Letterbox, letterbox_for, prepare_2d

if TYPE_CHECKING:
    from torch import nn

    from medassist.datamodel import Image
    from medassist.models.spec import ModelSpec, PreprocessSpec


@dataclass
class PreparedRadiograph:
    """A radiograph's one network input (1, 1, S, S), its letterbox; no slices to report."""

    inputs: torch.Tensor
    letterbox: Letterbox
    slices: tuple[int, ...] = ()


def letterbox_to_source(input_map: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """One (S, S) input-frame map -> the source image's (rows, cols): crop the pad, undo the resize,
    negatives clipped."""
    arr = np.asarray(input_map, dtype=np.float32)
    if arr.shape != (letterbox.input_size, letterbox.input_size):
        raise ValueError(f"map shape {arr.shape} is not the letterbox input {letterbox.input_size} square")
    back = letterbox.to_source(arr)
    return np.maximum(np.asarray(back, dtype=np.float32), 0.0)


class RadiographFamily(ModelFamily):
    """One input per study (the first slice); its score is the study's, no slices reported."""

    name = InputKind.IMAGE2D.value
    case_unit = "case"
    batches_across_studies = True
    volumetric = False

    def prepare(self, image: Image, spec: ModelSpec) -> PreparedRadiograph:
        """The first slice of the spec's source array, letterboxed to the input size."""
        source = np.asarray(getattr(image, spec.preprocess.source))
        if source.ndim != 3 or source.shape[0] < 1:
            raise ValueError(f"expected (slices, rows, cols) pixels, got shape {source.shape}")
        tensor, box = prepare_2d(source[0], spec.preprocess)
        return PreparedRadiograph(tensor[None], box)

    def prepare_plane(self, pixels: np.ndarray, preprocess: PreprocessSpec) -> PreparedPlane:
        """A 2D image as inference prepares it (``prepare_2d``)."""
        image = np.asarray(pixels, dtype=np.float32)
        tensor, box = prepare_2d(image, preprocess)
        return PreparedPlane(tensor, box, tuple(image.shape), None, self)

    def plane_to_source(self, plane: PreparedPlane, input_map: np.ndarray) -> np.ndarray:
        return letterbox_to_source(input_map, plane.frame)

    def aggregate(self, scores: torch.Tensor, slices: tuple[int, ...]) -> StudyScore:
        """The single input's score; no slices to report."""
        return StudyScore(float(scores[0]), ())

    @torch.no_grad()
    def score_study(self, network: nn.Module, spec: ModelSpec, prepared: PreparedRadiograph) -> StudyScore:
        """The probability of the one input under the spec's score head."""
        device = next(network.parameters()).device
        logits, cells = network.forward_all(prepared.inputs.float().to(device))
        return self.aggregate(self.probabilities(logits, cells, spec).cpu(), prepared.slices)

    def saliency_inputs(self, image: Image, spec: ModelSpec, slices: tuple[int, ...],
                        inputs: torch.Tensor | None = None) -> SaliencyInputs:
        """The input of the (first reported, else first) slice, its letterbox and display image;
        ``inputs`` (the scoring pass's) are reused when given."""
        slice_index = slices[0] if slices else 0
        source = getattr(image, spec.preprocess.source)[slice_index]
        box = letterbox_for(source.shape, spec.preprocess.input_size)
        if inputs is None:
            inputs = prepare_2d(np.asarray(source), spec.preprocess)[0][None]
        return SaliencyInputs(inputs[:1], (slice_index,), [box], [image.display[slice_index]])


RADIOGRAPH = RadiographFamily()

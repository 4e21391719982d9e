"""Brain MR volumes (``input_kind`` "volume"): scored slice by slice, aggregated to a study score.

Everything is delegated to ``models.tumor``: ``prepare_volume`` (reorientation, acquisition plane,
foreground, slice inputs by ``prepare_slice``: head mask, crop, letterbox) and
``score_prepared_volume`` (slice probabilities under the score head, in-brain mask, study
aggregation, the flagged slices). A map goes back through the letterbox and the head crop
(``SliceFrame.to_source``) and onto the stored slice (``preprocess.volume.stored_plane``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medassist.families.base import ModelFamily, PreparedPlane, SaliencyInputs, StudyScore
from medassist.models.spec import InputKind
from medassist.preprocess import volume as vol

if TYPE_CHECKING:
    from torch import nn

    from medassist.datamodel import Image
    from medassist.models.spec import ModelSpec, PreprocessSpec
    from medassist.models.tumor import PreparedVolume


@dataclass
class VolumeSaliencyInputs(SaliencyInputs):
    """``SaliencyInputs`` of a volume finding, with what ``to_stored`` needs to put each map back
    on its stored slice."""

    planes: list[np.ndarray] = field(default_factory=list)  # the canonical slices the inputs came from
    canonical: list[int] = field(default_factory=list)  # their canonical indices
    axes: Any = None
    axis: int = 0
    stored_shape: tuple[int, ...] = ()

    def to_stored(self, maps: np.ndarray) -> np.ndarray:
        """Input-frame maps (k, S, S) as (k, rows, cols) float32 maps on the stored slices,
        negatives clipped."""
        out = np.zeros((len(self.slices),) + tuple(self.stored_shape[1:]), dtype=np.float32)
        for k, (c, plane, frame, m) in enumerate(zip(self.canonical, self.planes, self.frames, maps)):
            stored, back = vol.stored_plane(frame.to_source(m, plane.shape), self.stored_shape, self.axes, self.axis, c)
            assert stored == self.slices[k], "canonical and stored slice indices disagree"
            out[k] = np.maximum(back, 0.0)
        return out


class BrainMRFamily(ModelFamily):
    """One input per in-brain slice of the acquisition plane; the study is scored whole."""

    name = InputKind.VOLUME.value
    case_unit = "slice"
    batches_across_studies = False
    volumetric = True

    def prepare(self, image: Image, spec: ModelSpec) -> PreparedVolume:
        """``tumor.prepare_volume``: MedassistError ("no brain found ...") for a volume without a head."""
        from medassist.models.tumor import prepare_volume

        return prepare_volume(spec, image)

    def prepare_plane(self, pixels: np.ndarray, preprocess: PreprocessSpec) -> PreparedPlane:
        """One slice as the tumour model prepares it (``tumor.prepare_slice``); its support is the
        head crop."""
        from medassist.models.tumor import prepare_slice

        image = np.asarray(pixels, dtype=np.float32)
        tensor, frame = prepare_slice(image, preprocess)
        r0, r1, c0, c1 = frame.crop
        support = np.zeros(image.shape, dtype=bool)
        support[r0:r1, c0:c1] = True
        return PreparedPlane(tensor, frame, tuple(image.shape), support, self)

    def plane_to_source(self, plane: PreparedPlane, input_map: np.ndarray) -> np.ndarray:
        """Back through the letterbox and the crop; zero outside the head crop."""
        return np.maximum(plane.frame.to_source(np.asarray(input_map, dtype=np.float32), plane.source_shape), 0.0)

    def aggregate(self, scores: torch.Tensor, slices: tuple[int, ...]) -> StudyScore:
        """Not how a volume is scored: its aggregation needs the whole prepared volume (``score_study``)."""
        raise TypeError("a brain MR volume is scored whole (score_study), not aggregated from a batch")

    def score_study(self, network: nn.Module, spec: ModelSpec, prepared: PreparedVolume) -> StudyScore:
        """``tumor.score_prepared_volume``: the study score and its flagged slices."""
        from medassist.models.tumor import score_prepared_volume

        result = score_prepared_volume(network, spec, prepared)
        return StudyScore(float(result.score), tuple(result.slices))

    def jobs_per_batch(self, batch_size: int) -> int:
        """One study at a time."""
        return 1

    def saliency_inputs(self, image: Image, spec: ModelSpec, slices: tuple[int, ...],
                        inputs: torch.Tensor | None = None) -> VolumeSaliencyInputs:
        """The network inputs of the stored ``slices`` (ascending, duplicates dropped), recomputed
        from the canonical slices they are (``inputs`` is not used: a volume's scoring inputs are
        of in-brain slices, not of the flagged ones).

        Raises ValueError when the volume is read across a plane other than the stored slice axis
        (a reformat: a canonical slice spans several stored slices) or an index is out of range.
        """
        from medassist.models.tumor import prepare_slice

        volume, axes = vol.reorient_canonical(image, spec.preprocess.source)
        axis = vol.acquisition_plane(axes)
        if axes.source_axes[axis] != 0:
            raise ValueError("the volume was read across a reformatted plane: no stored slices to draw on")
        stored_shape = tuple(int(n) for n in getattr(image, spec.preprocess.source).shape)
        wanted = tuple(sorted(set(int(i) for i in slices)))
        if not wanted or wanted[0] < 0 or wanted[-1] >= stored_shape[0]:
            raise ValueError(f"slice indices {slices} outside 0..{stored_shape[0] - 1}")
        canonical = [axes.source_index(axis, i) for i in wanted]
        planes = [np.asarray(vol.cut_slices(volume, axis, c, c + 1)[0], dtype=np.float32) for c in canonical]
        prepared = [prepare_slice(p, spec.preprocess) for p in planes]
        return VolumeSaliencyInputs(
            inputs=torch.stack([tensor for tensor, _ in prepared]), slices=wanted,
            frames=[frame for _, frame in prepared], displays=[image.display[i] for i in wanted],
            planes=planes, canonical=canonical, axes=axes, axis=axis, stored_shape=stored_shape,
        )


BRAIN_MR = BrainMRFamily()

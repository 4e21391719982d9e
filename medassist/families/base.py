"""``ModelFamily``: what every kind of model (a spec's ``input_kind``) answers, in one interface.

A family says how one study becomes network inputs (``prepare``), with the way back from an input's
map to the source geometry (``prepare_plane``, ``saliency_inputs``); how the network's outputs become
the finding's probability (``probabilities``: the one score-head rule, ``models.heads.score_probability``);
how the inputs' scores become the study's score and the slices it reports (``aggregate`` for a family
whose inputs are scored in batches across studies, ``score_study`` for one scored a study at a time);
and what a case of its audit image files is (``case_unit``).

Two shapes of scoring exist, and ``batches_across_studies`` says which a family takes:

* True (radiographs): the inputs of several studies are concatenated into one batch, scored by the
  model (``LoadedModel.scores``) and each study's scores given to ``aggregate``;
* False (brain MR volumes): each prepared study is scored whole by ``score_study``, which runs the
  network itself (slice batches, in-brain masking, study aggregation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from medassist.models.heads import score_probability

if TYPE_CHECKING:
    import torch
    from torch import nn

    from medassist.datamodel import Image
    from medassist.models.spec import ModelSpec, PreprocessSpec


@dataclass(frozen=True)
class StudyScore:
    """A study's score and the source slice indices it reports (the worklist's ``slices``)."""

    score: float
    slices: tuple[int, ...] = ()


@dataclass(frozen=True)
class PreparedPlane:
    """One 2D image as the model reads it: the (1, S, S) network input, ``frame`` (where it came
    from: a ``Letterbox`` or a ``SliceFrame``), the source shape, the source pixels a map can reach
    (``support``; None: all of them) and ``to_source``, a map's way back to the source geometry."""

    input: torch.Tensor
    frame: Any
    source_shape: tuple[int, int]
    support: np.ndarray | None
    family: ModelFamily

    def to_source(self, input_map: np.ndarray) -> np.ndarray:
        """An (S, S) input-frame map in the source geometry, (rows, cols) float32, negatives clipped."""
        return self.family.plane_to_source(self, input_map)


@dataclass
class SaliencyInputs:
    """What a study's saliency maps are computed from: the network inputs (k, 1, S, S) of the
    slices maps are drawn on (``slices``, source slice indices, ascending), each input's way back
    to the source geometry (``frames``) and the source-geometry display image of each (0..1)."""

    inputs: torch.Tensor
    slices: tuple[int, ...]
    frames: Sequence[Any]
    displays: Sequence[np.ndarray]


class ModelFamily(ABC):
    """How one family of models reads a study. Stateless: one shared instance per family."""

    name: ClassVar[str]  # the spec's ``input_kind`` value
    case_unit: ClassVar[str]  # what one audit image file is: "case" (a study) or "slice"
    batches_across_studies: ClassVar[bool]  # see the module docstring
    volumetric: ClassVar[bool]  # a study is a volume: scores, reports and maps are per slice

    @abstractmethod
    def prepare(self, image: Image, spec: ModelSpec) -> Any:
        """The study's network inputs: an object with ``inputs`` (k, 1, S, S), plus what the family
        needs to map back to the source geometry and to score the study (a family batched across
        studies: ``slices``, the source slice indices ``aggregate`` is given with the scores)."""

    @abstractmethod
    def prepare_plane(self, pixels: np.ndarray, preprocess: PreprocessSpec) -> PreparedPlane:
        """One 2D image (an audit image file, a localisation case) as the model reads it."""

    @abstractmethod
    def plane_to_source(self, plane: PreparedPlane, input_map: np.ndarray) -> np.ndarray:
        """``PreparedPlane.to_source``: an input-frame map back on the plane's source pixels."""

    def probabilities(self, image_logits: torch.Tensor, cell_logits: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
        """The finding's probability (N,) per input under the spec's score head: the one rule,
        ``models.heads.score_probability``, for every family."""
        return score_probability(image_logits, cell_logits, spec.score_head)

    @abstractmethod
    def aggregate(self, scores: torch.Tensor, slices: tuple[int, ...]) -> StudyScore:
        """The study's score from its inputs' scores (scored in a batch across studies), and the
        slices to report. Families with ``batches_across_studies`` False raise TypeError."""

    @abstractmethod
    def score_study(self, network: nn.Module, spec: ModelSpec, prepared: Any) -> StudyScore:
        """Score one prepared study with ``network`` (its ``forward_all``), whole."""

    def jobs_per_batch(self, batch_size: int) -> int:
        """How many studies one batch of ``batch_size`` network inputs should hold."""
        return batch_size

    @abstractmethod
    def saliency_inputs(self, image: Image, spec: ModelSpec, slices: tuple[int, ...],
                        inputs: torch.Tensor | None = None) -> SaliencyInputs:
        """The inputs a finding's saliency maps attribute, for the reported ``slices`` (``inputs``:
        the study's network inputs from scoring, reused where the family can)."""

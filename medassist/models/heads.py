"""Score heads: which network output is a model's score (``ModelSpec.score_head``), in one place.

A localising network gives two presence outputs for each input: the image logit (output 0 of the
image head, shape (N, outputs)) and a grid of cell logits (N, 1, h, w). A score head says how they
make the finding's score:

* ``image``: sigmoid of the image logit;
* ``cell_max``: sigmoid of the largest cell logit;
* ``mean``: the mean of those two probabilities.

Saliency attributes a logit, not a probability; ``score_logit`` gives it (see its docstring for
what ``mean`` means there).

Torch is not imported here: the functions use tensor methods only, so ``models.spec`` can check a
head's name without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    import torch

Values = Union["torch.Tensor", np.ndarray]


class ScoreHead(str, Enum):
    """A score head; the value is the name a spec's JSON stores."""

    IMAGE = "image"
    CELL_MAX = "cell_max"
    MEAN = "mean"

    def __str__(self) -> str:
        return self.value


SCORE_HEADS: tuple[str, ...] = tuple(head.value for head in ScoreHead)


def parse_score_head(name: str | ScoreHead) -> ScoreHead:
    """The head ``name`` names; ValueError naming the known heads otherwise."""
    if isinstance(name, str) and name in SCORE_HEADS:
        return ScoreHead(name)
    raise ValueError(f"unknown score_head {name!r}; expected one of {', '.join(SCORE_HEADS)}")


@dataclass(frozen=True)
class HeadProbabilities:
    """The probability of the finding under every head, each of shape (N,)."""

    image: Values
    cell_max: Values
    mean: Values

    def of(self, head: str | ScoreHead) -> Values:
        """The probabilities of one head (ValueError for a name that is not a head)."""
        return getattr(self, parse_score_head(head).value)


def head_probabilities(image_logits: torch.Tensor, cell_logits: torch.Tensor) -> HeadProbabilities:
    """Every head's probabilities (float32 tensors, (N,)) from image logits (N, outputs) and
    cell logits (N, 1, h, w)."""
    image = image_logits[:, 0].float().sigmoid()
    cell_max = cell_logits.amax(dim=(1, 2, 3)).float().sigmoid()
    return HeadProbabilities(image=image, cell_max=cell_max, mean=(image + cell_max) / 2)


def score_probability(image_logits: torch.Tensor, cell_logits: torch.Tensor, head: str | ScoreHead) -> torch.Tensor:
    """The score (N,) under ``head``: the probability of the finding for each input (float32)."""
    return head_probabilities(image_logits, cell_logits).of(head)


def score_logit(image_logits: torch.Tensor, cell_logits: torch.Tensor, head: str | ScoreHead) -> torch.Tensor:
    """The (N, 1) logit saliency attributes under ``head``, in the logits' dtype.

    ``image``: the image logit; ``cell_max``: the largest cell logit (its gradient reaches only
    the cell that is largest). Both are exactly the logit of the head's probability.

    ``mean``: the mean of the image logit and the largest cell logit, ``(a + b) / 2``. This is not
    the logit of the mean probability, ``logit((sigmoid(a) + sigmoid(b)) / 2)``, but it rises with
    each of the two logits, as the score does, and is above 0 exactly when the score is above 0.5
    (both hold exactly when ``a > -b``).
    """
    head = parse_score_head(head)
    image = image_logits[:, :1]
    cell = cell_logits.amax(dim=(1, 2, 3))[:, None]
    if head is ScoreHead.IMAGE:
        return image
    if head is ScoreHead.CELL_MAX:
        return cell
    return (image + cell) / 2


def concatenate(parts: list[HeadProbabilities]) -> HeadProbabilities:
    """Batches of probabilities joined into one, as numpy arrays (from tensors on any device)."""
    return HeadProbabilities(*(np.concatenate([_as_numpy(getattr(p, head)) for p in parts]) for head in SCORE_HEADS))


def _as_numpy(values: Values) -> np.ndarray:
    return values if isinstance(values, np.ndarray) else values.detach().cpu().numpy()

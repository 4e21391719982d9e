"""medassist.models.heads: each score head's value, the same score on every path that scores, refusals."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from medassist.audit.evaluation import slice_outputs
from medassist.models import heads
from medassist.models.fracture_external import score_inputs
from medassist.models.heads import (SCORE_HEADS, HeadProbabilities, ScoreHead, concatenate, head_probabilities,
                                    parse_score_head, score_logit, score_probability)
from medassist.models.registry import LoadedModel
from medassist.models.train import predict_scores
from medassist.models.tumor import predict_all, slice_probabilities

from .tumour_model_helpers import tiny_tumour_model

LOG3 = math.log(3.0)  # sigmoid(LOG3) = 0.75, sigmoid(-LOG3) = 0.25

# Two inputs: output 1 of the image logits is a type logit, which no head reads.
IMAGE_LOGITS = torch.tensor([[0.0, 5.0], [LOG3, -5.0]])
CELL_LOGITS = torch.tensor([[[[-1.0, LOG3], [-2.0, 0.0]]], [[[-LOG3, -5.0], [-6.0, -7.0]]]])
EXPECTED = {"image": [0.5, 0.75], "cell_max": [0.75, 0.25], "mean": [0.625, 0.5]}
EXPECTED_LOGITS = {"image": [0.0, LOG3], "cell_max": [LOG3, -LOG3], "mean": [LOG3 / 2, 0.0]}


# --- values on known logits ------------------------------------------------------------------------------


@pytest.mark.parametrize("head", SCORE_HEADS)
def test_each_head_on_known_logits(head):
    probs = head_probabilities(IMAGE_LOGITS, CELL_LOGITS)
    np.testing.assert_allclose(probs.of(head).numpy(), EXPECTED[head], atol=1e-6)
    np.testing.assert_allclose(getattr(probs, head).numpy(), EXPECTED[head], atol=1e-6)
    np.testing.assert_allclose(score_probability(IMAGE_LOGITS, CELL_LOGITS, head).numpy(), EXPECTED[head], atol=1e-6)
    assert probs.of(ScoreHead(head)) is probs.of(head)


@pytest.mark.parametrize("head", SCORE_HEADS)
def test_each_heads_logit_on_known_logits(head):
    logit = score_logit(IMAGE_LOGITS, CELL_LOGITS, head)
    assert logit.shape == (2, 1)
    np.testing.assert_allclose(logit[:, 0].numpy(), EXPECTED_LOGITS[head], atol=1e-6)


def test_image_and_cell_max_logits_are_the_logits_of_their_probabilities():
    torch.manual_seed(0)
    image, cells = torch.randn(16, 4) * 3, torch.randn(16, 1, 3, 3) * 3
    probs = head_probabilities(image, cells)
    for head in ("image", "cell_max"):
        torch.testing.assert_close(score_logit(image, cells, head)[:, 0].sigmoid(), probs.of(head))


def test_the_mean_logit_is_above_zero_exactly_when_the_mean_score_is_above_one_half():
    a, b = torch.meshgrid(torch.linspace(-6, 6, 41), torch.linspace(-6, 6, 43), indexing="ij")
    image, cells = a.reshape(-1, 1), b.reshape(-1, 1, 1, 1)
    logit = score_logit(image, cells, "mean")[:, 0]
    score = score_probability(image, cells, "mean")
    away = (a + b).reshape(-1).abs() > 1e-4  # off the boundary a = -b, where rounding decides
    assert away.sum() > 1500 and (logit[away] > 0).any() and (logit[away] < 0).any()
    assert torch.equal((logit > 0)[away], (score > 0.5)[away])
    torch.testing.assert_close(logit, (image[:, 0] + cells.reshape(-1)) / 2)


def test_probabilities_are_float32_from_half_precision_logits():
    probs = head_probabilities(IMAGE_LOGITS.half(), CELL_LOGITS.half())
    assert {getattr(probs, h).dtype for h in SCORE_HEADS} == {torch.float32}


def test_concatenate_joins_batches_in_order_as_numpy():
    first = head_probabilities(IMAGE_LOGITS[:1], CELL_LOGITS[:1])
    second = head_probabilities(IMAGE_LOGITS[1:], CELL_LOGITS[1:])
    joined = concatenate([first, second])
    for head in SCORE_HEADS:
        assert isinstance(joined.of(head), np.ndarray)
        np.testing.assert_allclose(joined.of(head), EXPECTED[head], atol=1e-6)


# --- names -----------------------------------------------------------------------------------------------


def test_the_heads_are_the_names_spec_json_stores():
    assert SCORE_HEADS == ("image", "cell_max", "mean")
    assert [parse_score_head(name) for name in SCORE_HEADS] == [ScoreHead.IMAGE, ScoreHead.CELL_MAX, ScoreHead.MEAN]
    assert json.dumps({"score_head": ScoreHead.MEAN}) == '{"score_head": "mean"}'
    assert str(ScoreHead.CELL_MAX) == f"{ScoreHead.CELL_MAX}" == "cell_max"


def test_the_spec_check_uses_the_same_names():
    from medassist.models import spec

    assert spec.SCORE_HEADS is heads.SCORE_HEADS


@pytest.mark.parametrize("name", ["median", "max", "Mean", "", "image ", None, 1])
def test_unknown_head_names_are_refused_with_the_known_ones(name):
    message = f"unknown score_head {name!r}; expected one of image, cell_max, mean"
    with pytest.raises(ValueError) as err:
        parse_score_head(name)
    assert str(err.value) == message
    probs = head_probabilities(IMAGE_LOGITS, CELL_LOGITS)
    for refuse in (lambda: probs.of(name), lambda: score_probability(IMAGE_LOGITS, CELL_LOGITS, name),
                   lambda: score_logit(IMAGE_LOGITS, CELL_LOGITS, name)):
        with pytest.raises(ValueError, match="unknown score_head"):
            refuse()


def test_head_probabilities_are_frozen():
    probs = head_probabilities(IMAGE_LOGITS, CELL_LOGITS)
    assert isinstance(probs, HeadProbabilities)
    with pytest.raises(AttributeError):
        probs.mean = probs.image


# --- one score on every path ------------------------------------------------------------------------------


class KnownOutputs(nn.Module):
    """A network whose logits are fixed by its input: the features are the input average-pooled to 2 x 2,
    the cell logits 8 * features - 4, the image logit 6 * their mean - 3, then three type logits."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 2) * self.scale

    def heads(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = feats.mean(dim=(1, 2, 3))[:, None] * 6 - 3
        types = torch.stack([feats[:, 0, 0, 0], feats[:, 0, 0, 1], feats[:, 0, 1, 0]], dim=1)
        return torch.cat([image, types], dim=1), feats * 8 - 4

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.features(x))


def quadrant_inputs(size: int = 16) -> torch.Tensor:
    """(3, 1, S, S) inputs, constant on each quadrant (exact averages in any summation order), where
    the image and cell-max scores differ: one bright quadrant, two, one on a grey image."""
    half = size // 2
    x = torch.zeros(3, 1, size, size)
    x[0, 0, :half, :half] = 1.0
    x[1, 0, :half, :] = 1.0
    x[2] = 0.5
    x[2, 0, :half, :half] = 1.0
    return x


def known_probabilities() -> dict[str, np.ndarray]:
    """What the heads must give on ``quadrant_inputs`` through ``KnownOutputs``, worked by hand."""
    image_logit = np.array([6 * 0.25 - 3, 6 * 0.5 - 3, 6 * 0.625 - 3])
    cell_max_logit = np.array([8 * 1.0 - 4, 8 * 1.0 - 4, 8 * 1.0 - 4])
    image, cell_max = 1 / (1 + np.exp(-image_logit)), 1 / (1 + np.exp(-cell_max_logit))
    return {"image": image, "cell_max": cell_max, "mean": (image + cell_max) / 2}


def scores_on_every_path(network: nn.Module, head: str, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The score of (N, 1, S, S) inputs ``x`` under ``head`` through each place that scores network inputs."""
    _, spec = tiny_tumour_model(input_size=x.shape[-1])
    spec = replace(spec, score_head=head)
    model = LoadedModel(spec=spec, network=network, device=torch.device("cpu"))
    return {
        "registry": model.scores(x).numpy(),
        "fracture_external": score_inputs(network, x[:, 0].numpy()).of(head),
        "tumour_slices": slice_probabilities(network, spec, x)[0],
        "audit": slice_outputs(model, x, 3)[0],
    }


def test_the_known_network_differs_between_heads():
    """The check below can tell the heads apart: on these inputs no two heads agree."""
    known = known_probabilities()
    for a, b in (("image", "cell_max"), ("image", "mean"), ("cell_max", "mean")):
        assert np.abs(known[a] - known[b]).min() > 0.05


@pytest.mark.parametrize("head", SCORE_HEADS)
def test_every_path_gives_the_same_score_for_the_same_outputs(head):
    x = quadrant_inputs()
    scores = scores_on_every_path(KnownOutputs().eval(), head, x)
    expected = known_probabilities()[head]
    for path, values in scores.items():
        assert values.shape == (3,), path
        np.testing.assert_allclose(values, expected, rtol=1e-6, err_msg=f"{path}, score head {head}")
        np.testing.assert_array_equal(values.astype(np.float32), scores["registry"], err_msg=path)


@pytest.mark.parametrize("head", SCORE_HEADS)
def test_every_path_agrees_on_a_real_network(head):
    """A real (untrained) network, and the two training paths too, which score uint8 cached inputs."""
    net, _ = tiny_tumour_model(input_size=32)
    cached = np.random.default_rng(1).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    x = torch.from_numpy(cached).float().div_(255.0)[:, None]
    with torch.no_grad():
        reference = head_probabilities(*net.forward_all(x)).of(head).numpy()
    scores = scores_on_every_path(net, head, x)
    scores["fracture_training"] = predict_scores(net, cached, batch_size=3).of(head)
    scores["tumour_training"] = predict_all(net, cached, batch_size=3)[0].of(head)
    for path, values in scores.items():
        np.testing.assert_allclose(values, reference, rtol=1e-5, atol=1e-6, err_msg=f"{path}, score head {head}")

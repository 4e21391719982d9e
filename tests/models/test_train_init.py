"""train_common.initial_weights: a run may start from weights trained here earlier, checked by sha256."""

from __future__ import annotations

import pytest
import torch

from medassist.errors import MedassistError
from medassist.models.networks import build_network
from medassist.models.train_common import initial_weights, sha256_of


def test_initial_weights_load_when_the_sha256_matches_and_are_refused_otherwise(tmp_path):
    net = build_network("localising_resnet", {"layers": [1, 1, 1, 1], "widen_factor": 0.25})
    path = tmp_path / "start.pt"
    torch.save(net.state_dict(), path)
    state = initial_weights({"weights": str(path), "sha256": sha256_of(path)})
    fresh = build_network("localising_resnet", {"layers": [1, 1, 1, 1], "widen_factor": 0.25})
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    with pytest.raises(MedassistError, match="start.pt has sha256"):
        initial_weights({"weights": str(path), "sha256": "0" * 64})

"""models.registry: the way in to a model, by shipped name or from a spec file."""

from __future__ import annotations

import pytest

from medassist.errors import MedassistError


def test_a_model_loads_by_shipped_name_or_from_a_spec_file_beside_its_weights(tmp_path):
    import shutil

    import torch

    from medassist.models.registry import WEIGHTS_DIR, load_named_or_file

    by_name = load_named_or_file("fracture_xray", torch.device("cpu"))
    for suffix in (".json", ".pt"):
        shutil.copy(WEIGHTS_DIR / f"fracture_xray{suffix}", tmp_path / f"fracture_xray{suffix}")
    by_file = load_named_or_file(tmp_path / "fracture_xray.json", torch.device("cpu"))
    assert by_file.spec == by_name.spec
    (tmp_path / "fracture_xray.pt").write_bytes(b"not the weights")
    with pytest.raises(MedassistError):
        load_named_or_file(tmp_path / "fracture_xray.json", torch.device("cpu"))  # weights checked

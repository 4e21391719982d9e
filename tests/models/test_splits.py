"""The split rules live in ``medassist.models.splits``; moving them there changed no split's members.

The digests below were taken with the code before the move (``fracatlas.split_of``,
``tumor.split_of`` and ``tumor_data.hash_split`` as they were): on synthetic ids always, and on
the data under ../shared/data when it is there (skipped when absent)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from medassist.models import fracatlas, splits, tumor, tumor_data

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"


def digest(values) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, values))).encode()).hexdigest()[:16]


def test_fracatlas_block_split_members_unchanged_on_synthetic_ids():
    ids = [f"IMG{n:07d}.jpg" for n in range(0, 5000, 7)]
    assert digest(i for i in ids if fracatlas.split_of(i, **splits.FRACATLAS_SPLIT) == "val") == "19810dd92316bf45"


def test_brain_tumor_block_split_members_unchanged_on_synthetic_numbers():
    numbers = range(0, 5000, 3)
    assert digest(n for n in numbers if tumor.split_of(n, **splits.BRAIN_TUMOR_SPLIT) == "val") == "e8700371126c3915"


def test_hash_split_members_unchanged_on_synthetic_ids():
    ids = [f"P{i:03d}" for i in range(120)]
    strata = {k: f"inst{int(k[1:]) % 7}" for k in ids}
    cfg = tumor_data.source_config(None, "lgg")
    split = splits.hash_split(ids, val_percent=float(cfg["val_percent"]), salt=str(cfg["salt"]), strata=strata)
    assert digest(k for k, s in split.items() if s == "val") == "1f1cbdea56223c7f"


def test_block_split_is_the_rule_it_says():
    for n in range(0, 2000, 13):
        assert splits.block_split(n, block_size=100, n_folds=5, val_fold=4) == ("val" if (n // 100) % 5 == 4 else "train")


def test_block_settings_reads_a_data_section_over_defaults():
    assert splits.block_settings({"block_size": "50", "root": "x"}, splits.FRACATLAS_SPLIT) == {
        "block_size": 50, "n_folds": 5, "val_fold": 4}
    with pytest.raises(KeyError):
        splits.block_settings({"block_size": 50})


@pytest.mark.parametrize("config, defaults", [("fracture_xray", splits.FRACATLAS_SPLIT),
                                              ("tumor_mri", splits.BRAIN_TUMOR_SPLIT)])
def test_the_defaults_are_the_shipped_configs(config, defaults):
    data = yaml.safe_load((REPO / "configs" / f"{config}.yaml").read_text())["data"]
    assert splits.block_settings(data) == defaults
    if config == "tumor_mri":
        for source in ("lgg", "ixi"):
            cfg = tumor_data.source_config(data, source)
            assert (float(cfg["val_percent"]), cfg["salt"]) == (splits.HASH_SPLIT["val_percent"],
                                                                splits.HASH_SPLIT["salt"])


def need(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        pytest.skip(f"{path} not here")
    return path


def test_fracatlas_members_unchanged_on_the_real_data():
    records = fracatlas.read_records(need("fracatlas"))
    val = [r.image_id for r in records if fracatlas.split_of(r.image_id, **splits.FRACATLAS_SPLIT) == "val"]
    assert (len(records), digest(val)) == (3498, "e23acd2490655314")


def test_brain_tumor_members_unchanged_on_the_real_data():
    records = tumor.read_records(need("brain_tumor"))
    val = [r.number for r in records if tumor.split_of(r.number, **splits.BRAIN_TUMOR_SPLIT) == "val"]
    assert (len(records), digest(val)) == (3904, "f23b5db2f619c5a8")


def test_lgg_and_ixi_members_unchanged_on_the_real_data():
    lgg = tumor_data.lgg_split(tumor_data.read_lgg(need("lgg_mri")))
    ixi = tumor_data.ixi_split(tumor_data.read_ixi(need("ixi_t1")))
    assert (len(lgg), digest(k for k, v in lgg.items() if v == "val")) == (98, "c6cfe0e59c4dad46")
    assert (len(ixi), digest(k for k, v in ixi.items() if v == "val")) == (50, "9f76d40fb531b8a5")

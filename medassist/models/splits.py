"""The validation split rules, and their defaults, in one place.

Two rules, both deterministic and independent of file order:

- ``block_split`` (FracAtlas, figshare / Br35H): ids whose consecutive numbers are often one
  patient are split by contiguous blocks, block = number // block_size, validation when
  block % n_folds == val_fold. ``fracatlas.split_of`` and ``tumor.split_of`` map a record's id to
  its number and apply it; the defaults are ``FRACATLAS_SPLIT`` and ``BRAIN_TUMOR_SPLIT`` (the
  values in configs/fracture_xray.yaml and configs/tumor_mri.yaml, data section).
- ``hash_split`` (LGG by patient, IXI by subject): ids ranked by a stable hash (sha256 of salt and
  id), the lowest ``val_percent`` of each stratum are validation; defaults ``HASH_SPLIT``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

BLOCK_KEYS = ("block_size", "n_folds", "val_fold")
FRACATLAS_SPLIT = {"block_size": 100, "n_folds": 5, "val_fold": 4}
BRAIN_TUMOR_SPLIT = {"block_size": 100, "n_folds": 5, "val_fold": 1}
HASH_SPLIT = {"val_percent": 20.0, "salt": "tumor_mri"}


def block_split(number: int, *, block_size: int, n_folds: int, val_fold: int) -> str:
    """'train' or 'val' by contiguous blocks of numbers."""
    return "val" if (number // block_size) % n_folds == val_fold else "train"


def block_settings(data_cfg: Mapping, defaults: Mapping | None = None) -> dict[str, int]:
    """The block split's settings (``BLOCK_KEYS``, as ints) from a config's data section, over
    ``defaults`` when given (without: all three must be in ``data_cfg``)."""
    merged = {**(defaults or {}), **{k: v for k, v in data_cfg.items() if k in BLOCK_KEYS}}
    return {k: int(merged[k]) for k in BLOCK_KEYS}


def hash_rank(key: str, salt: str) -> int:
    """A stable pseudo-random rank of an id: the first 8 bytes of sha256("salt:key")."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big")


def hash_split(ids: list[str], *, val_percent: float, salt: str, strata: Mapping[str, str] | None = None
               ) -> dict[str, str]:
    """'train' or 'val' for each id (a patient or subject): within each stratum (e.g. an LGG
    institution; one stratum without ``strata``), the round(val_percent% of n) ids of lowest
    ``hash_rank`` are validation. Deterministic, independent of the order of ``ids``, and every
    stratum with at least 3 ids gets at least one validation id."""
    groups: dict[str, list[str]] = {}
    for key in sorted(set(ids)):
        groups.setdefault((strata or {}).get(key, ""), []).append(key)
    split = {}
    for members in groups.values():
        n_val = round(len(members) * val_percent / 100)
        if len(members) >= 3 and val_percent > 0:
            n_val = max(1, n_val)
        ranked = sorted(members, key=lambda k: hash_rank(k, salt))
        split.update({k: "val" if i < n_val else "train" for i, k in enumerate(ranked)})
    return split

"""``family_for(spec)``: the ``ModelFamily`` a spec's ``input_kind`` names (one line per family)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medassist.errors import MedassistError
from medassist.families.base import ModelFamily
from medassist.families.brain_mr import BRAIN_MR
from medassist.families.radiograph import RADIOGRAPH
from medassist.models.spec import InputKind

if TYPE_CHECKING:
    from medassist.models.spec import ModelSpec

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (RADIOGRAPH, BRAIN_MR)}


def family_for(spec: ModelSpec) -> ModelFamily:
    """The family of ``spec.input_kind`` (a spec object without one, or with an empty one, is a
    radiograph model); MedassistError naming the known kinds for any other."""
    kind = getattr(spec, "input_kind", InputKind.IMAGE2D) or InputKind.IMAGE2D
    kind = kind.value if isinstance(kind, InputKind) else kind
    if kind not in FAMILIES:
        raise MedassistError(f"model {spec.name}: unknown input kind {kind!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[kind]

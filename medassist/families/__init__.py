"""Model families: how a kind of model (``ModelSpec.input_kind``) reads a study.

``family_for(spec)`` gives the ``ModelFamily`` (``base``) a spec's ``input_kind`` names: radiographs
(``radiograph.RadiographFamily``, "image2d") or brain MR volumes (``brain_mr.BrainMRFamily``,
"volume"). Triage, the audit and the saliency evaluation ask the family, not the input kind, how to
prepare an image, score it and map results back to the source geometry. Adding a family is one
module, its tests and one line in ``registry.FAMILIES``.

This package imports nothing from triage, audit, explain, review or pacs (tests/test_layering.py).
"""

from medassist.families.base import ModelFamily, PreparedPlane, StudyScore
from medassist.families.registry import FAMILIES, family_for

__all__ = ["FAMILIES", "ModelFamily", "PreparedPlane", "StudyScore", "family_for"]

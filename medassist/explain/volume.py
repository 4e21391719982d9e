"""Saliency for volume findings (brain MRI): maps on the flagged slices, in the stored geometry.

A volume model scores canonical slices cut across the acquisition plane (``models.tumor``). For
each flagged slice this module recomputes that slice's network input, attributes the finding with
``saliency_map``, undoes the head crop and letterbox (``SliceFrame.to_source``) and puts the map
back on the stored slice (``preprocess.volume.stored_plane``), so it overlays the images a viewer
shows. The maps of a finding are stacked in ascending stored-slice order: ``(k, rows, cols)`` for
the ``k`` slices of the worklist's ``slices`` column.
"""

from __future__ import annotations

import numpy as np

from medassist.datamodel import Image
from medassist.explain.saliency import DEFAULT_METHOD, saliency_map
from medassist.families.brain_mr import BRAIN_MR
from medassist.models.registry import LoadedModel


def volume_slice_saliency(
    model: LoadedModel, image: Image, stored_slices: tuple[int, ...], *, method: str = DEFAULT_METHOD
) -> tuple[tuple[int, ...], np.ndarray]:
    """(ascending stored slice indices, maps (k, rows, cols) float32) for a volume finding.

    Raises ValueError when the slices were cut across a plane other than the stored slice axis
    (a reformat: a canonical slice spans several stored slices) or an index is out of range
    (``BrainMRFamily.saliency_inputs``, which recomputes the slices' inputs; ``to_stored`` puts
    the maps back on the stored slices).
    """
    found = BRAIN_MR.saliency_inputs(image, model.spec, stored_slices)
    maps = saliency_map(model, found.inputs, method=method)
    return found.slices, found.to_stored(maps)

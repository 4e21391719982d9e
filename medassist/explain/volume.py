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
import torch

from medassist.datamodel import Image
from medassist.explain.saliency import DEFAULT_METHOD, saliency_map
from medassist.models.registry import LoadedModel
from medassist.preprocess import volume as vol


def volume_slice_saliency(
    model: LoadedModel, image: Image, stored_slices: tuple[int, ...], *, method: str = DEFAULT_METHOD
) -> tuple[tuple[int, ...], np.ndarray]:
    """(ascending stored slice indices, maps (k, rows, cols) float32) for a volume finding.

    Raises ValueError when the slices were cut across a plane other than the stored slice axis
    (a reformat: a canonical slice spans several stored slices) or an index is out of range.
    """
    from medassist.models.tumor import prepare_slice

    spec = model.spec
    volume, axes = vol.reorient_canonical(image, spec.preprocess.source)
    axis = vol.acquisition_plane(axes)
    if axes.source_axes[axis] != 0:
        raise ValueError("the volume was read across a reformatted plane: no stored slices to draw on")
    stored_shape = tuple(int(n) for n in getattr(image, spec.preprocess.source).shape)
    wanted = tuple(sorted(set(int(i) for i in stored_slices)))
    if not wanted or wanted[0] < 0 or wanted[-1] >= stored_shape[0]:
        raise ValueError(f"slice indices {stored_slices} outside 0..{stored_shape[0] - 1}")
    canonical = [axes.source_index(axis, i) for i in wanted]
    planes = [np.asarray(vol.cut_slices(volume, axis, c, c + 1)[0], dtype=np.float32) for c in canonical]
    prepared = [prepare_slice(p, spec.preprocess) for p in planes]
    inputs = torch.stack([tensor for tensor, _ in prepared])
    maps = saliency_map(model, inputs, method=method)
    out = np.zeros((len(wanted),) + stored_shape[1:], dtype=np.float32)
    for k, (c, plane, (_, frame), m) in enumerate(zip(canonical, planes, prepared, maps)):
        stored, back = vol.stored_plane(frame.to_source(m, plane.shape), stored_shape, axes, axis, c)
        assert stored == wanted[k], "canonical and stored slice indices disagree"
        out[k] = np.maximum(back, 0.0)
    return wanted, out

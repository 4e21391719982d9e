"""The saliency map as a secondary-capture overlay (highdicom ``SCImage``): what a reader looks at.

Why secondary capture by default (and SEG as the option, ``seg.py``): the map's purpose is to be
seen by a person next to the score, in whatever viewer the site has. An RGB secondary capture of
the image with the map blended on top displays in every PACS viewer, needs no frame of reference
or plane positions (a DX/CR radiograph has neither), and is one small instance per image. A
FRACTIONAL SEG keeps the exact map for software, but few viewers draw segmentations on projection
radiographs; highdicom 0.28 builds one for DX without a frame of reference, so ``seg.py`` offers it.

The overlay: the image's display pixels (ingest stage: VOI LUT/window applied, MONOCHROME1
inverted) as grey, with the map drawn by ``explain.output.render_overlay``, the one renderer the
PNG beside the map and the review app use too (same colormap, floor and opacity).
For multi-slice series one capture is made per slice in the worklist row's ``slices`` (else the
slice where the map peaks). Each capture references its source image (Source Image Sequence).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from medassist.dicom_out.results import DICOM_RESULTS, check_map_shape, with_type2_attributes
from medassist.dicom_out.sr import MANUFACTURER, derived_uid, software_version
from medassist.explain.output import render_overlay
from medassist.optional import require

hd = require("highdicom", extra="pacs", feature=DICOM_RESULTS)

SC_SERIES_NUMBER = 9902


def build_saliency_sc(row, index, saliency: np.ndarray, *, instance_offset: int = 0) -> list[Dataset]:
    """Secondary captures for one worklist row (see the module docstring).

    ``index``: a ``results.SourceIndex`` (finds the series, its headers and display pixels).
    ``saliency``: the normalised map, (slices, rows, cols) on the source grid.
    """
    headers = index.headers(row)
    check_map_shape(saliency, headers, row.saliency_path)
    display = index.series(row).load().display
    if display.shape != saliency.shape:
        raise ValueError(f"display pixels {display.shape} and saliency map {saliency.shape} differ in shape")
    slices = [i for i in row.slices if 0 <= i < saliency.shape[0]] or [int(np.argmax(saliency.reshape(len(saliency), -1).max(axis=1)))]
    multiframe = len(headers) == 1 and saliency.shape[0] > 1
    out = []
    for n, i in enumerate(slices, start=1):
        ref = headers[0] if multiframe else headers[i]
        out.append(_capture(row, ref, render_overlay(saliency[i], display[i]), i, instance_offset + n,
                            frame=i + 1 if multiframe else None))
    return out


def _capture(row, ref: Dataset, rgb: np.ndarray, slice_index: int, instance_number: int, frame: int | None) -> Dataset:
    orientation = tuple(str(v) for v in (ref.get("PatientOrientation") or []) if str(v))
    spacing = ref.get("PixelSpacing") or ref.get("ImagerPixelSpacing")
    kwargs = dict(
        ref_dataset=with_type2_attributes(ref),
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=derived_uid("sc-series", row.study_uid, row.model),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=derived_uid("sc", row.series_uid, row.model, row.model_version, row.score, slice_index),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        pixel_spacing=tuple(float(v) for v in spacing) if spacing else None,
    )
    try:
        sc = hd.sc.SCImage.from_ref_dataset(patient_orientation=orientation, **kwargs)
    except ValueError:
        # The source does not say how the patient lies in the image (common for DX exports).
        # highdicom insists on a value, so build with a placeholder and then leave Patient
        # Orientation empty, as the source did (Type 2C: present, empty when unknown).
        sc = hd.sc.SCImage.from_ref_dataset(patient_orientation=("L", "F"), **kwargs)
        sc.PatientOrientation = None
    sc.SeriesDescription = f"medassist saliency {row.model} {row.finding} (research use)"[:64]
    sc.ImageComments = (
        f"{row.model} {row.model_version}: {row.finding} score {row.score:.4f} "
        f"(threshold {row.threshold}, {'flagged' if row.flagged else 'not flagged'}); "
        "saliency overlay, not for diagnosis"
    )
    sc.DerivationDescription = "Saliency map of the model's finding blended over the source image"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "NO"
    sc.SoftwareVersions = software_version()
    source = Dataset()
    source.ReferencedSOPClassUID = ref.SOPClassUID
    source.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    if frame is not None:
        source.ReferencedFrameNumber = frame
    sc.SourceImageSequence = DicomSequence([source])
    return sc

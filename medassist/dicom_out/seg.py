"""The saliency map as a DICOM Segmentation (highdicom ``Segmentation``, FRACTIONAL): for software.

One segment, "saliency", whose property type is the finding's concept, on the source image grid
(one frame per source instance or frame), values 0..1 stored as 0..255 PROBABILITY fractions.
highdicom 0.28 builds it for 2D DX/CR sources without a frame of reference as well as for
cross-sectional series. See ``sc.py`` for why the secondary capture is the default output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medassist.dicom_out import codes as mcodes
from medassist.dicom_out.results import DICOM_RESULTS, check_map_shape, with_type2_attributes
from medassist.dicom_out.sr import MANUFACTURER, derived_uid, software_version
from medassist.optional import require

hd = require("highdicom", extra="pacs", feature=DICOM_RESULTS)

SEG_SERIES_NUMBER = 9903


def build_saliency_seg(row, headers: Sequence[Dataset], saliency: np.ndarray) -> hd.seg.Segmentation:
    """A FRACTIONAL SEG of ``saliency`` (normalised, (frames, rows, cols)) on ``headers``' grid."""
    check_map_shape(saliency, headers, row.saliency_path)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=row.model, version=row.model_version or "unknown", family=codes.DCM.ArtificialIntelligence
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"saliency {row.finding}"[:64],
        segmented_property_category=mcodes.FINDING_CATEGORY,
        segmented_property_type=mcodes.finding_code(row.finding or row.model),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=derived_uid("tracking", row.series_uid, row.model, row.model_version),
        tracking_id=f"{row.model} {row.finding} saliency"[:64],
    )
    seg = hd.seg.Segmentation(
        source_images=[with_type2_attributes(headers[0]), *headers[1:]],  # patient and study come from the first
        pixel_array=np.clip(saliency, 0.0, 1.0).astype(np.float32),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[description],
        series_instance_uid=derived_uid("seg-series", row.study_uid, row.model),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=derived_uid("seg", row.series_uid, row.model, row.model_version, row.score),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="medassist",
        software_versions=software_version(),
        device_serial_number="0",
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        content_label="SALIENCY",
        content_description=f"{row.model} {row.model_version} saliency for {row.finding}"[:64],
        omit_empty_frames=False,
    )
    seg.SeriesDescription = f"medassist saliency {row.model} {row.finding} (research use)"[:64]
    return seg

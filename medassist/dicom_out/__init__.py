"""dicom_out stage: results as DICOM, and de-identified exports.

Map of the package:

* ``results`` - reads a triage worklist, finds the sources again, writes the objects below (entry point);
* ``sr``      - one Comprehensive 3D SR per study, TID 1500 measurement report (highdicom);
* ``sc``      - saliency as a secondary-capture overlay (default: viewable in any PACS viewer);
* ``seg``     - saliency as a FRACTIONAL segmentation on the source grid (option, for software);
* ``codes``   - the coded concepts those objects use;
* ``deid``    - PS3.15 Basic Application Level Confidentiality Profile, ``export_deidentified``.
"""

from medassist.dicom_out.deid import UidMap, deidentify_dataset, export_deidentified
from medassist.datamodel import read_worklist
from medassist.dicom_out.results import DicomResults, write_dicom_results

__all__ = [
    "UidMap",
    "deidentify_dataset",
    "export_deidentified",
    "DicomResults",
    "read_worklist",
    "write_dicom_results",
]

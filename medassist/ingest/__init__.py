"""ingest stage: find image series in folders, DICOM files, DICOMDIRs, NIfTI, NRRD and MetaImage, decode lazily.

Map of the package:

* ``discover``  - walk the inputs, follow DICOMDIRs, hand each file to a reader (entry point);
* ``dicom``     - recognise DICOM by content, read headers only, classify (image/skip/problem);
* ``series``    - group headers into Series, drop duplicates, order slices along the normal;
* ``pixels``    - decode + Modality LUT -> ``Image.pixels``; VOI LUT/window -> ``Image.display``;
* ``geometry``  - spacing, orientation, positions and the LPS affine;
* ``nifti``     - NIfTI files (nibabel), RAS converted to LPS;
* ``research_volume`` - NRRD and MetaImage files (SimpleITK), already LPS;
* ``volumes``   - what the volume readers share: shape, size and voxel-value checks, the Image;
* ``images``    - plain JPEG/PNG as grayscale uint8 for training code.
"""

from medassist.ingest.discover import Discovery, discover_files, discover_series, find_series, read_series_file
from medassist.ingest.images import load_jpeg_grayscale

__all__ = ["Discovery", "discover_files", "discover_series", "find_series", "read_series_file", "load_jpeg_grayscale"]

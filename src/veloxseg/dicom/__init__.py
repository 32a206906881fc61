"""DICOM in and out: series to volumes (:mod:`.series`), PET to SUV (:mod:`.suv`), a study's series
matched to a model's channels on one grid (:mod:`.study`), DICOM cases for ``veloxseg predict``
(:mod:`.cases`), DICOM-SEG output (:mod:`.seg`) and RTSTRUCT output (:mod:`.rtstruct`, contours from
:mod:`.contours`).

Needs the ``dicom`` extra (pydicom, highdicom): ``pip install 'veloxseg[dicom]'``. Importing this
package does not import pydicom; the functions that need it say how to install it.
"""

from .series import SeriesRef, Volume, contains_dicom, find_series, load_series
from .study import DicomStudy, channel_modality, find_studies, load_channels, match_channels, reference_channel
from .suv import suv_conversion, to_suv

__all__ = ["DicomStudy", "SeriesRef", "Volume", "channel_modality", "contains_dicom", "find_series", "find_studies",
           "load_channels", "load_series", "match_channels", "reference_channel", "suv_conversion", "to_suv"]

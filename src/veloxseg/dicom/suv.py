"""Body-weight SUV of a PET series from its DICOM header (the QIBA vendor-neutral recipe).

``SUVbw = activity concentration (Bq/mL) x body weight (g) / injected dose decay-corrected (Bq)``

Units (0054,1001) decide where the activity concentration comes from:

* ``BQML`` (GE, Siemens, and Philips when set so): the rescaled pixel values are Bq/mL.
* ``CNTS`` (Philips): Philips' SUV scale factor (7053,1000), when present and non-zero, turns the
  rescaled values into SUVbw directly; else Philips' activity concentration scale factor
  (7053,1009) turns them into Bq/mL, and SUV follows from the formula.
* ``GML`` (already SUVbw, g/mL): used as it is.

Decay correction (0054,1102): ``START`` -- the image is decay-corrected to the series start, so
the dose is decayed from the injection to the series start with RadionuclideHalfLife (0018,1075);
``ADMIN`` -- corrected to the injection time: no decay of the dose. Other values (``NONE``) stop
with an error. Injection time: RadiopharmaceuticalStartDateTime (0018,1078), else
RadiopharmaceuticalStartTime (0018,1072) on the SeriesDate (the previous day if that would put the
injection after the scan start: a scan that crossed midnight). Series start: SeriesDate/SeriesTime,
or the earliest AcquisitionDate/Time when that is earlier (GE writes a later SeriesTime to a
re-processed series; QIBA's rule). A missing tag is a one-line error naming the tag and the series.
No header value is ever logged (weights, doses and times can identify a patient).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .series import SeriesRef, Volume, quiet_pydicom

PHILIPS_CREATOR = "Philips PET Private Group"
#: Philips private elements (group 0x7053, offsets in the private block)
PHILIPS_SUV_SCALE = 0x00  # (7053,1000) SUV Scale Factor
PHILIPS_ACTIVITY_SCALE = 0x09  # (7053,1009) Activity Concentration Scale Factor


@dataclass(frozen=True)
class SuvConversion:
    """How a PET series becomes SUVbw: one factor per slice (sorted order) and how it was found."""

    factors: np.ndarray
    method: str

    def apply(self, volume: Volume) -> Volume:
        """``volume`` with its values multiplied slice by slice (in place), units ``SUVbw``."""
        volume.array *= self.factors.astype(np.float32)[None, None, :]
        volume.units = "SUVbw"
        return volume


def _missing(series: SeriesRef, what: str) -> InputError:
    return InputError(f"{series.label}: cannot compute SUV: {what} missing")


def _number(value: Any) -> float | None:
    """A DS/FD value, or the bytes of an element pydicom read as UN (no private dictionary)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("ascii", "ignore").strip("\x00 ")
        if text:
            try:
                return float(text)
            except ValueError:
                pass
        if len(value) == 8:
            return float(np.frombuffer(value, "<f8")[0])
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def philips_factor(ds: Any, offset: int) -> float | None:
    """A Philips PET private scale factor of one image, or ``None`` when absent or zero."""
    try:
        block = ds.private_block(0x7053, PHILIPS_CREATOR)
        value = _number(block[offset].value)
    except KeyError:
        value = _number(ds.get((0x7053, 0x1000 + offset)).value) if (0x7053, 0x1000 + offset) in ds else None
    return value if value else None


def _parse_datetime(date: Any, time: Any) -> dt.datetime | None:
    from pydicom.valuerep import DA, TM

    if not date or not time:
        return None
    try:
        d, t = DA(str(date)), TM(str(time))
    except ValueError:
        return None
    return dt.datetime.combine(dt.date(d.year, d.month, d.day),
                               dt.time(t.hour, t.minute, t.second, t.microsecond))


def _parse_dt(value: Any) -> dt.datetime | None:
    from pydicom.valuerep import DT

    if not value:
        return None
    try:
        v = DT(str(value))
    except ValueError:
        return None
    return dt.datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)  # local, no zone


def series_start(headers: Sequence[Any], series: SeriesRef) -> dt.datetime:
    """The time the activity was decay-corrected to for ``START``: series start, or the earliest acquisition."""
    first = headers[0]
    start = _parse_datetime(first.get("SeriesDate"), first.get("SeriesTime"))
    acquisitions = [a for a in (_parse_datetime(h.get("AcquisitionDate") or first.get("SeriesDate"),
                                                h.get("AcquisitionTime")) for h in headers) if a is not None]
    earliest = min(acquisitions) if acquisitions else None
    if start is None and earliest is None:
        raise _missing(series, "SeriesDate (0008,0021) / SeriesTime (0008,0031)")
    if start is None or (earliest is not None and earliest < start):
        return earliest  # type: ignore[return-value]
    return start


def injection_time(radiopharm: Any, headers: Sequence[Any], scan: dt.datetime, series: SeriesRef) -> dt.datetime:
    """Injection date and time: RadiopharmaceuticalStartDateTime, else StartTime on the SeriesDate."""
    full = _parse_dt(radiopharm.get("RadiopharmaceuticalStartDateTime"))
    if full is not None:
        return full
    time = radiopharm.get("RadiopharmaceuticalStartTime")
    if not time:
        raise _missing(series, "RadiopharmaceuticalStartDateTime (0018,1078) and RadiopharmaceuticalStartTime "
                               "(0018,1072)")
    date = headers[0].get("SeriesDate") or headers[0].get("AcquisitionDate")
    inj = _parse_datetime(date, time)
    if inj is None:
        raise _missing(series, "SeriesDate (0008,0021), needed with RadiopharmaceuticalStartTime (0018,1072)")
    return inj - dt.timedelta(days=1) if inj > scan else inj


@quiet_pydicom
def suv_conversion(volume: Volume) -> SuvConversion:
    """The per-slice factors that turn ``volume`` (a PET series, Modality LUT applied) into SUVbw."""
    series, headers = volume.series, volume.headers
    first = headers[0]
    units = str(first.get("Units", "") or "").upper()
    n = len(headers)
    if units == "GML":
        return SuvConversion(np.ones(n), "Units GML: already SUVbw")
    if units == "CNTS":
        suv = [philips_factor(h, PHILIPS_SUV_SCALE) for h in headers]
        if all(v is not None for v in suv):
            return SuvConversion(np.array(suv, dtype=np.float64), "Units CNTS: Philips SUV scale factor (7053,1000)")
        activity = [philips_factor(h, PHILIPS_ACTIVITY_SCALE) for h in headers]
        if not all(v is not None for v in activity):
            raise _missing(series, "Philips SUV scale factor (7053,1000) and activity concentration scale factor "
                                   "(7053,1009) (Units CNTS)")
        to_bqml = np.array(activity, dtype=np.float64)
        method = "Units CNTS: Philips activity concentration scale factor (7053,1009), then "
    elif units == "BQML":
        to_bqml, method = np.ones(n), "Units BQML: "
    elif not units:
        raise _missing(series, "Units (0054,1001)")
    else:
        raise InputError(f"{series.label}: cannot compute SUV from Units {units} (BQML, CNTS with Philips scale "
                         f"factors, or GML are supported)")
    return SuvConversion(to_bqml * body_weight_factor(headers, series), method + "body weight / decayed dose")


def body_weight_factor(headers: Sequence[Any], series: SeriesRef) -> float:
    """``weight (g) / decay-corrected dose (Bq)``: Bq/mL times this is SUVbw."""
    first = headers[0]
    weight = _number(first.get("PatientWeight"))
    if not weight or weight <= 0:
        raise _missing(series, "PatientWeight (0010,1030)")
    info = first.get("RadiopharmaceuticalInformationSequence")
    if not info:
        raise _missing(series, "RadiopharmaceuticalInformationSequence (0054,0016)")
    radiopharm = info[0]
    dose = _number(radiopharm.get("RadionuclideTotalDose"))
    if not dose or dose <= 0:
        raise _missing(series, "RadionuclideTotalDose (0018,1074)")
    correction = str(first.get("DecayCorrection", "") or "").upper()
    if correction == "ADMIN":
        decayed = dose
    elif correction == "START":
        half_life = _number(radiopharm.get("RadionuclideHalfLife"))
        if not half_life or half_life <= 0:
            raise _missing(series, "RadionuclideHalfLife (0018,1075)")
        scan = series_start(headers, series)
        elapsed = (scan - injection_time(radiopharm, headers, scan, series)).total_seconds()
        decayed = dose * 2.0 ** (-elapsed / half_life)
    elif not correction:
        raise _missing(series, "DecayCorrection (0054,1102)")
    else:
        raise InputError(f"{series.label}: cannot compute SUV with DecayCorrection {correction} (START or ADMIN "
                         f"are supported)")
    return weight * 1000.0 / decayed


def to_suv(volume: Volume) -> Volume:
    """``volume`` (a PET series) converted to SUVbw in place; :class:`InputError` naming a missing tag."""
    if volume.series.modality != "PT":
        raise InputError(f"{volume.series.label}: SUV needs a PET (PT) series")
    return suv_conversion(volume).apply(volume)

"""DICOM in: series found, sorted and checked, geometry as the equivalent NIfTI, PET to SUV by each
vendor convention against a hand computation, PET resampled onto CT, and every bad series a
one-line error naming the series (and no patient data)."""

from __future__ import annotations

import datetime as dt
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from veloxseg.dicom import find_series, find_studies, load_channels, load_series, match_channels, to_suv  # noqa: E402
from veloxseg.dicom.synthetic import PetDose, SeriesSpec, new_study_uids, write_series  # noqa: E402
from veloxseg.errors import InputError  # noqa: E402
from veloxseg.io import write_nifti  # noqa: E402

SHAPE = (32, 28, 16)
THETA = 0.2
# oblique (rotated about z), in-plane 0.9 x 1.1 mm, 2.5 mm slices, arbitrary origin
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = np.array([[np.cos(THETA), -np.sin(THETA), 0], [np.sin(THETA), np.cos(THETA), 0], [0, 0, 1]]) \
    @ np.diag([-0.9, -1.1, 2.5])
OBLIQUE[:3, 3] = [30.0, 12.5, -40.0]
AXIAL = np.diag([-2.0, -2.0, 3.0, 1.0])
AXIAL[:3, 3] = [31.0, 27.0, -22.5]
AXIAL_CT = np.diag([-1.5, -1.5, 2.0, 1.0])
AXIAL_CT[:3, 3] = [30.0, 30.0, -20.0]
PET_AFFINE = np.diag([-4.0, -4.0, 4.0, 1.0])
PET_AFFINE[:3, 3] = [45.0, 25.0, -30.0]


def ct_values(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).integers(-1000, 1500, size=shape).astype(np.float64)


def write_ct(folder, values=None, affine=OBLIQUE, description="CT 3mm", **kwargs):
    study, frame = kwargs.pop("uids", None) or new_study_uids()
    values = ct_values() if values is None else values
    write_series(folder, values, affine, SeriesSpec("CT", study, frame, description, intercept=-1024.0), **kwargs)
    return values


def write_pet(folder, suv, affine=AXIAL, dose=None, uids=None, **spec):
    dose = dose or PetDose()
    study, frame = uids or new_study_uids()
    args = dict(slope=None, units="BQML", pet=dose)
    args.update(spec)
    write_series(folder, np.asarray(suv, dtype=np.float64) / dose.suv_factor(), affine,
                 SeriesSpec("PT", study, frame, "PET AC", 3, **args))
    return dose


def one_line_error(func, *args) -> str:
    with pytest.raises(InputError) as info:
        func(*args)
    message = str(info.value)
    assert "\n" not in message
    assert "Phantom" not in message and "PHANTOM" not in message  # never a patient name or ID
    return message


# ---------------------------------------------------------------------------------------------
# geometry


def test_ct_series_is_the_equivalent_nifti(tmp_path):
    values = write_ct(tmp_path / "ct")
    (series,) = find_series(tmp_path / "ct")
    vol = load_series(series)
    assert vol.units == "HU" and series.modality == "CT"
    assert np.array_equal(vol.array, values.astype(np.float32))  # slope 1, intercept -1024: exact HU
    assert np.allclose(vol.affine, OBLIQUE, atol=1e-6)
    # the same voxels and affine through a NIfTI file land at the same world coordinates
    write_nifti(tmp_path / "ct.nii.gz", values.astype(np.float32), OBLIQUE)
    img = nib.load(str(tmp_path / "ct.nii.gz"))
    assert np.array_equal(np.asarray(img.dataobj), vol.array)
    assert np.allclose(img.affine, vol.affine, atol=1e-5)
    assert nib.aff2axcodes(vol.affine) == nib.aff2axcodes(OBLIQUE)


def test_in_plane_axes_agree_with_nibabel_dicom_wrapper(tmp_path):
    write_ct(tmp_path / "ct")
    vol = load_series(find_series(tmp_path / "ct")[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nibabel calls its DICOM readers experimental
        from nibabel.nicom import dicomwrappers

        first = min(vol.series.files, key=lambda p: int(p.stem.split("_")[1]))
        wrapper = dicomwrappers.wrapper_from_file(str(first))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    for col, row in [(0, 0), (5, 0), (0, 7), (31, 27)]:  # nibabel indexes (row, column); we index (column, row)
        assert np.allclose(wrapper.affine @ [row, col, 0, 1], lps @ [col, row, 0, 1], atol=1e-4)


def test_files_in_any_order_and_names_are_sorted_by_position(tmp_path):
    values = write_ct(tmp_path / "raw")
    files = sorted((tmp_path / "raw").iterdir())
    rng = np.random.default_rng(1)
    (tmp_path / "ct" / "deep").mkdir(parents=True)
    for i, k in enumerate(rng.permutation(len(files))):  # shuffled names, one level down
        shutil.copy(files[k], tmp_path / "ct" / "deep" / f"IM{i:05d}")
    vol = load_series(find_series(tmp_path / "ct")[0])
    assert np.array_equal(vol.array, values.astype(np.float32))


def test_pet_is_resampled_onto_the_ct_grid_through_the_affines(tmp_path):
    uids = new_study_uids()
    write_ct(tmp_path / "study" / "CT", ct_values((40, 40, 20)), AXIAL_CT, uids=uids)
    # PET = a linear function of world position: linear interpolation must reproduce it exactly
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (20, 20, 12)], indexing="ij"), -1)
    world = grid @ PET_AFFINE[:3, :3].T + PET_AFFINE[:3, 3]
    suv = 5.0 + 0.01 * world[..., 0] - 0.02 * world[..., 1] + 0.03 * world[..., 2]
    write_pet(tmp_path / "study" / "PET", suv, PET_AFFINE, uids=uids)
    (study,) = find_studies(tmp_path / "study")
    series = match_channels(study.series, ["PET", "CT"], study.folder)
    assert [s.modality for s in series] == ["PT", "CT"]
    loaded = load_channels(series, ["PET", "CT"])
    pet, ct = loaded.volumes
    assert loaded.reference == 1 and pet.array.shape == ct.array.shape == (40, 40, 20)
    assert np.array_equal(pet.affine, ct.affine)
    assert pet.units == "SUVbw"
    cgrid = np.stack(np.meshgrid(*[np.arange(s) for s in (40, 40, 20)], indexing="ij"), -1)
    cworld = cgrid @ ct.affine[:3, :3].T + ct.affine[:3, 3]
    expected = 5.0 + 0.01 * cworld[..., 0] - 0.02 * cworld[..., 1] + 0.03 * cworld[..., 2]
    pvox = (cworld - PET_AFFINE[:3, 3]) @ np.linalg.inv(PET_AFFINE[:3, :3]).T
    inside = np.all((pvox >= 0) & (pvox <= np.array([19, 19, 11])), axis=-1)
    assert inside.sum() > 1000 and (~inside).sum() > 1000
    assert np.allclose(pet.array[inside], expected[inside], rtol=1e-3, atol=1e-3)
    far = np.any((pvox < -1) | (pvox > np.array([20, 20, 12])), axis=-1)  # beyond the PET field of view
    assert far.sum() > 100 and np.all(pet.array[far] == 0)


# ---------------------------------------------------------------------------------------------
# SUV against hand computations, per vendor convention

BQML = np.full((8, 8, 4), 12000.0)  # Bq/mL everywhere
HOUR = dt.timedelta(hours=1)


def hand_suv(bqml, weight_kg, dose_bq, minutes, half_life_s=6586.2):
    """SUVbw = Bq/mL * weight[g] / (dose * 2^(-t/T1/2)), written out independently of the code."""
    return bqml * weight_kg * 1000.0 / (dose_bq * 2.0 ** (-(minutes * 60.0) / half_life_s))


def pet_volume(tmp_path, dose, **spec):
    uids = new_study_uids()
    args = dict(slope=None, units="BQML", pet=dose)
    args.update(spec)
    write_series(tmp_path / "pet", BQML, AXIAL, SeriesSpec("PT", *uids, "PET", 3, **args))
    return load_series(find_series(tmp_path / "pet")[0])


@pytest.mark.parametrize("full_datetime", [True, False])
def test_suv_bqml_decay_corrected_to_series_start(tmp_path, full_datetime):
    # Siemens/GE: Units BQML, DecayCorrection START; injection 09:00, scan 10:00 (60 min)
    dose = PetDose(weight_kg=82.0, dose_bq=3.7e8, full_datetime=full_datetime)
    vol = to_suv(pet_volume(tmp_path, dose))
    assert vol.units == "SUVbw"
    assert np.allclose(vol.array, hand_suv(12000.0, 82.0, 3.7e8, 60.0), rtol=2e-4)  # int16 storage: ~1e-4


def test_suv_decay_correction_admin_does_not_decay_the_dose(tmp_path):
    dose = PetDose(weight_kg=70.0, dose_bq=3.0e8, decay_correction="ADMIN")
    vol = to_suv(pet_volume(tmp_path, dose))
    assert np.allclose(vol.array, 12000.0 * 70000.0 / 3.0e8, rtol=2e-4)


def test_suv_injection_before_midnight_scan_after(tmp_path):
    dose = PetDose(injection=dt.datetime(2024, 1, 15, 23, 30), series_start=dt.datetime(2024, 1, 16, 0, 30),
                   full_datetime=False)  # StartTime 23:30 with SeriesDate the 16th: the previous day
    vol = to_suv(pet_volume(tmp_path, dose))
    assert np.allclose(vol.array, hand_suv(12000.0, 75.0, 3.5e8, 60.0), rtol=2e-4)


def test_suv_uses_the_earliest_acquisition_when_series_time_is_later(tmp_path):
    # GE re-processed series: SeriesTime 11:00 but acquired from 10:00 (QIBA: use the acquisition)
    uids = new_study_uids()
    dose = PetDose()
    write_series(tmp_path / "pet", BQML, AXIAL, SeriesSpec("PT", *uids, "PET", 3, slope=None, units="BQML", pet=dose))
    import pydicom

    for p in (tmp_path / "pet").iterdir():
        ds = pydicom.dcmread(p)
        ds.SeriesTime = "110000"
        ds.save_as(p)
    vol = to_suv(load_series(find_series(tmp_path / "pet")[0]))
    assert np.allclose(vol.array, hand_suv(12000.0, 75.0, 3.5e8, 60.0), rtol=2e-4)


def test_suv_philips_cnts_with_suv_scale_factor(tmp_path):
    # Philips: Units CNTS; SUV = rescaled counts x (7053,1000)
    vol = to_suv(pet_volume(tmp_path, PetDose(), units="CNTS", philips={"suv": 0.000123}))
    assert np.allclose(vol.array, 12000.0 * 0.000123, rtol=2e-4)


def test_suv_philips_cnts_with_activity_concentration_scale_factor(tmp_path):
    # Philips without (7053,1000): Bq/mL = counts x (7053,1009), then the body-weight formula
    vol = to_suv(pet_volume(tmp_path, PetDose(), units="CNTS", philips={"activity": 2.5}))
    assert np.allclose(vol.array, hand_suv(12000.0 * 2.5, 75.0, 3.5e8, 60.0), rtol=2e-4)


def test_suv_units_gml_is_already_suv(tmp_path):
    vol = to_suv(pet_volume(tmp_path, PetDose(), units="GML"))
    assert np.allclose(vol.array, 12000.0, rtol=2e-4)


@pytest.mark.parametrize("tag, keyword", [("RadionuclideTotalDose", "RadionuclideTotalDose (0018,1074)"),
                                          ("RadionuclideHalfLife", "RadionuclideHalfLife (0018,1075)"),
                                          ("PatientWeight", "PatientWeight (0010,1030)"),
                                          ("Units", "Units (0054,1001)"),
                                          ("Start", "RadiopharmaceuticalStartTime (0018,1072)")])
def test_missing_suv_tag_is_named(tmp_path, tag, keyword):
    import pydicom

    vol = pet_volume(tmp_path, PetDose())
    for ds in vol.headers:
        if tag == "PatientWeight" or tag == "Units":
            delattr(ds, tag)
        elif tag == "Start":
            item = ds.RadiopharmaceuticalInformationSequence[0]
            del item.RadiopharmaceuticalStartTime, item.RadiopharmaceuticalStartDateTime
        else:
            delattr(ds.RadiopharmaceuticalInformationSequence[0], tag)
    assert isinstance(vol.headers[0], pydicom.Dataset)
    message = one_line_error(to_suv, vol)
    assert keyword in message and "PET" in message and str(tmp_path / "pet") in message


def test_philips_counts_without_scale_factors(tmp_path):
    vol = pet_volume(tmp_path, PetDose(), units="CNTS")
    assert "(7053,1000)" in one_line_error(to_suv, vol)


# ---------------------------------------------------------------------------------------------
# bad series: one line, naming the series


def test_missing_slice(tmp_path):
    write_ct(tmp_path / "ct", slices=[k for k in range(SHAPE[2]) if k != 7])
    message = one_line_error(load_series, find_series(tmp_path / "ct")[0])
    assert "missing slice" in message and str(tmp_path / "ct") in message and "CT 3mm" in message


def test_duplicate_slice(tmp_path):
    write_ct(tmp_path / "ct", slices=[*range(SHAPE[2]), 5])
    assert "duplicate slices" in one_line_error(load_series, find_series(tmp_path / "ct")[0])


def test_uneven_spacing(tmp_path):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AXIAL
    positions = [lps[:3, 3] + np.array([0, 0, 3.0 * k + (0.4 if k == 5 else 0.0)]) for k in range(8)]
    write_ct(tmp_path / "ct", ct_values((8, 8, 8)), AXIAL, positions=positions)
    assert "uneven slice spacing" in one_line_error(load_series, find_series(tmp_path / "ct")[0])


def test_gantry_tilt(tmp_path):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AXIAL
    tilt = np.tan(np.radians(15.0))
    positions = [lps[:3, 3] + np.array([0, 3.0 * k * tilt, 3.0 * k]) for k in range(8)]  # sheared along y
    write_ct(tmp_path / "ct", ct_values((8, 8, 8)), AXIAL, positions=positions)
    message = one_line_error(load_series, find_series(tmp_path / "ct")[0])
    assert "gantry tilt" in message and "15.00 degrees" in message


def test_mixed_orientations(tmp_path):
    uids = new_study_uids()
    uid = "1.2.826.0.1.3680043.8.498.1"
    write_series(tmp_path / "ct" / "a", ct_values((8, 8, 4)), AXIAL, SeriesSpec("CT", *uids, "mixed", series_uid=uid))
    rotated = OBLIQUE.copy()
    rotated[:3, 3] = AXIAL[:3, 3] + [0, 0, 40]
    write_series(tmp_path / "ct" / "b", ct_values((8, 8, 4)), rotated, SeriesSpec("CT", *uids, "mixed", series_uid=uid))
    (series,) = find_series(tmp_path / "ct")
    assert "mixed orientations" in one_line_error(load_series, series)


def test_two_series_of_one_modality_in_a_study(tmp_path):
    uids = new_study_uids()
    write_ct(tmp_path / "study" / "ct1", ct_values((8, 8, 4)), AXIAL, uids=uids)
    write_ct(tmp_path / "study" / "ct2", ct_values((8, 8, 4)), AXIAL, description="CT lung", uids=uids)
    write_pet(tmp_path / "study" / "pet", np.ones((8, 8, 4)), AXIAL, uids=uids)
    (study,) = find_studies(tmp_path / "study")
    message = one_line_error(match_channels, study.series, ["CT", "PET"], study.folder)
    assert "2 CT series for channel CT" in message and "CT lung" in message


def test_no_dicom_in_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    assert "no DICOM files" in one_line_error(find_series, tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# compressed transfer syntaxes


def test_jpeg_ls_lossless_series_reads_identically(tmp_path):
    pytest.importorskip("jpeg_ls")  # pyjpegls: pydicom's JPEG-LS encoder/decoder plugin
    values = write_ct(tmp_path / "ct", ct_values((16, 16, 4)), AXIAL)
    uids = new_study_uids()
    write_series(tmp_path / "ls", values, AXIAL, SeriesSpec("CT", *uids, "CT", intercept=-1024.0,
                                                            transfer_syntax="1.2.840.10008.1.2.4.80"))
    vol = load_series(find_series(tmp_path / "ls")[0])
    assert vol.headers[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert np.array_equal(vol.array, values.astype(np.float32))


def test_undecodable_compressed_data_names_the_plugin(tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate

    write_ct(tmp_path / "ct", ct_values((8, 8, 4)), AXIAL)
    for p in (tmp_path / "ct").iterdir():  # claim JPEG 2000, hold bytes no decoder can read
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"
        ds.save_as(p, enforce_file_format=True)
    message = one_line_error(load_series, find_series(tmp_path / "ct")[0])
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in message and "JPEG 2000" in message


def test_invalid_patient_values_never_reach_the_console(tmp_path, capsys, caplog):
    import logging

    import pydicom

    from veloxseg.dicom.seg import write_segmentation

    write_ct(tmp_path / "ct", ct_values((8, 8, 4)), AXIAL)
    for p in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pydicom warns as we write the invalid value
            ds.PatientBirthDate = "19801399"  # not a date: pydicom and highdicom quote such values
        ds.save_as(p)
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = load_series(find_series(tmp_path / "ct")[0])
        message = one_line_error(write_segmentation, tmp_path / "seg.dcm", np.ones((8, 8, 4), np.uint8),
                                 vol.headers, {"lesion": 1})
    shown = message + " ".join(str(w.message) for w in caught) + capsys.readouterr().err + caplog.text
    assert "cannot build a DICOM-SEG" in message and "CT_0001.dcm" in message
    assert "19801399" not in shown and not (tmp_path / "seg.dcm").exists()


def test_model_trained_on_bqml_keeps_pet_in_bqml(tmp_path):
    uids = new_study_uids()
    write_ct(tmp_path / "s" / "CT", ct_values((8, 8, 4)), AXIAL, uids=uids)
    dose = write_pet(tmp_path / "s" / "PET", np.full((8, 8, 4), 2.0), AXIAL, uids=uids)
    (study,) = find_studies(tmp_path / "s")
    series = match_channels(study.series, ["CT", "PET"], study.folder)
    pet = load_channels(series, ["CT", "PET"], pet_units="BQML").volumes[1]
    assert pet.units == "BQML" and np.allclose(pet.array, 2.0 / dose.suv_factor(), rtol=1e-4)
    assert "PET units 'SUL'" in one_line_error(load_channels, series, ["CT", "PET"], "SUL")

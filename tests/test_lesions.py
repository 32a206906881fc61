"""Lesion statistics: volumes in mL, 26-connected components, SUVmax/SUVmean/TLG, TMTV."""

from __future__ import annotations

import numpy as np
import pytest

from veloxseg.lesions import case_statistics, label_statistics, voxel_volume_ml

AFFINE = np.diag([2.0, 2.0, 5.0, 1.0])  # 20 mm^3 = 0.02 mL per voxel


def test_corner_touching_voxels_are_one_lesion_with_26_connectivity():
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # touch by a corner only
    mask[4, 4, 4] = True  # apart
    stats = label_statistics(mask, AFFINE)
    assert stats["components"] == 2 and stats["voxels"] == 3
    assert stats["volume_ml"] == pytest.approx(3 * 0.02)
    assert [les["voxels"] for les in stats["lesions"]] == [2, 1]  # largest first


def test_pet_statistics_by_hand():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 1  # lesion A: 8 voxels
    labels[6:9, 6:7, 6:7] = 1  # lesion B: 3 voxels
    labels[0, 9, 9] = 2  # a second label, one voxel
    pet = np.ones((10, 10, 10), dtype=np.float32)
    pet[1:3, 1:3, 1:3] = 4.0
    pet[1, 1, 1] = 10.0
    pet[6:9, 6:7, 6:7] = [[[2.0]], [[3.0]], [[7.0]]]
    pet[0, 9, 9] = 5.0
    stats = case_statistics(labels, AFFINE, {"background": 0, "tumour": 1, "node": 2}, pet, "SUVbw")
    tumour, node = stats["labels"]["tumour"], stats["labels"]["node"]
    a, b = tumour["lesions"]
    assert a["voxels"] == 8 and a["suv_max"] == 10.0 and a["suv_mean"] == pytest.approx((7 * 4 + 10) / 8)
    assert a["tlg"] == pytest.approx((7 * 4 + 10) / 8 * 8 * 0.02)
    assert b["voxels"] == 3 and b["suv_max"] == 7.0 and b["suv_mean"] == pytest.approx(4.0)
    assert tumour["suv_mean"] == pytest.approx((38 + 12) / 11) and tumour["components"] == 2
    assert node["volume_ml"] == pytest.approx(0.02) and node["suv_max"] == 5.0
    total = stats["total"]
    assert total["tmtv_ml"] == pytest.approx(12 * 0.02) and total["lesions"] == 3
    assert total["tlg"] == pytest.approx((38 + 12 + 5) * 0.02) and total["suv_max"] == 10.0
    assert stats["pet"] == {"values": "SUVbw"}
    assert a["centroid_ras_mm"] == pytest.approx([3.0, 3.0, 7.5])  # voxel (1.5, 1.5, 1.5) in mm


def test_no_pet_and_empty_labels():
    stats = case_statistics(np.zeros((4, 4, 4), np.uint8), AFFINE, {"background": 0, "lesion": 1})
    assert stats["pet"] is None
    assert stats["labels"]["lesion"] == {"value": 1, "voxels": 0, "volume_ml": 0.0, "components": 0, "lesions": []}
    assert stats["total"] == {"volume_ml": 0.0, "lesions": 0}
    assert voxel_volume_ml(np.diag([-1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.001)

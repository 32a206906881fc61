import json

import pytest

from veloxseg.cli import main
from veloxseg.jl import jl_group_widths


def test_default_kappa_reproduces_paper_widths():
    assert jl_group_widths(2, 4) == [4, 8, 8, 16]


@pytest.mark.parametrize("kappa", [0.73, 0.78, 0.82])
def test_documented_kappa_range(kappa):
    assert jl_group_widths(2, 4, kappa=kappa) == [4, 8, 8, 16]


@pytest.mark.parametrize("kappa", [0.70, 0.85])
def test_outside_range_changes_widths(kappa):
    assert jl_group_widths(2, 4, kappa=kappa) != [4, 8, 8, 16]


def test_widths_are_capped_to_divide_level_width():
    assert jl_group_widths(2, 4, kappa=20.0, level_widths=[16, 32, 64, 128]) == [16, 32, 64, 128]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="modalities"):
        jl_group_widths(0, 4)


def test_cli_json(capsys):
    assert main(["jl", "--modalities", "2", "--patch-size", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["group_widths"] == [4, 8, 8, 16]
    assert len(data["bound"]) == 4

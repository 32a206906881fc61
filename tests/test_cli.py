import json
import subprocess
import sys

from veloxseg.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "veloxseg", "--help"], capture_output=True, text=True, check=True).stdout
    assert "summary" in out and "jl" in out


def test_summary_json_keys(capsys):
    assert main(["summary", "--preset", "autopet", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("params_inference", "params_training", "flops", "input_shape", "output_shape"):
        assert key in info
    assert info["input_shape"] == [1, 2, 96, 96, 96]

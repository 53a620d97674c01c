"""ONNX export of a student, checked against onnxruntime (skipped without the onnx extra)."""

import pytest
import torch

import dbsn
from dbsn.cli import main
from dbsn.hub import save_weights

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name,channels,colour", [("mwcnn_small", 1, "joint"), ("unet_small", 3, "joint"),
                                                  ("mwcnn_small", 3, "opponent")])
def test_student_exports_and_matches(tmp_path, name, channels, colour):
    from dbsn.export import export_onnx

    torch.manual_seed(0)
    model = dbsn.create_model(name, in_channels=channels, colour=colour)
    result = export_onnx(model, tmp_path / "s.onnx")
    assert (tmp_path / "s.onnx").is_file() and result["max_abs_diff"] < 1e-4


def test_export_cli_refuses_stage1(tmp_path, capsys):
    save_weights(tmp_path / "t.safetensors", dbsn.create_model("dbsn_tiny"))
    assert main(["export", "--model", str(tmp_path / "t.safetensors"), "-o", str(tmp_path / "t.onnx")]) == 2
    assert "student" in capsys.readouterr().err and not (tmp_path / "t.onnx").exists()

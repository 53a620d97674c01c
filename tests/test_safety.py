"""Nothing a user owns is lost: every pre-existing file is hashed before and after `dbsn denoise`.

Each layout below is one way outputs could land on files the call did not write: an input
of another extension, two inputs of one stem, one name in two folders, a name that differs
only in case, a symlink, an earlier output, ``-o`` naming a file.
"""

import hashlib
import os

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from dbsn.cli import main
from dbsn.files import output_names
from dbsn.nn import create_model
from dbsn.hub import save_weights


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained stage-1 model: these tests are about files, not quality."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_weights(path, create_model("dbsn_tiny", noise_model="awgn"))
    return path


def _png(path, value=100, size=(12, 13)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _denoise(model_file, *args):
    return main(["-q", "denoise", "--model", str(model_file), *map(str, args)])


def _unchanged(before, root):
    after = _hashes(root)
    return all(after.get(p) == h for p, h in before.items())


def test_an_output_never_replaces_a_file_the_call_did_not_write(model_file, tmp_path, capsys):
    folder = tmp_path / "dir"
    _png(folder / "pic.png", 10)  # the user's own file, not an input of the call below
    Image.fromarray(np.full((12, 13, 3), 200, np.uint8)).save(folder / "pic.jpg")
    before = _hashes(tmp_path)
    assert _denoise(model_file, folder / "pic.jpg", "-o", folder) == 2
    assert "already exists" in capsys.readouterr().err
    assert _hashes(tmp_path) == before  # nothing replaced, nothing added


def test_inputs_of_one_stem_get_distinct_outputs(model_file, tmp_path, capsys):
    _png(tmp_path / "in" / "pic.png", 10)
    tifffile.imwrite(tmp_path / "in" / "pic.tif", np.full((12, 13), 30000, np.uint16))
    _png(tmp_path / "a" / "x.png", 20)
    _png(tmp_path / "b" / "x.png", 230)
    before = _hashes(tmp_path)
    out = tmp_path / "out"
    assert _denoise(model_file, tmp_path / "in", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--noise-map",
                    "-o", out) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["pic_png.png", "pic_tif.tif", "a_x.png", "b_x.png", "pic_png_std_n.tiff", "pic_tif_std_n.tiff",
         "a_x_std_n.tiff", "b_x_std_n.tiff"])
    assert _unchanged(before, tmp_path)
    # each output comes from its own input: the bright one stays bright
    assert np.asarray(Image.open(out / "b_x.png")).mean() > np.asarray(Image.open(out / "a_x.png")).mean() + 100
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote")]
    assert len(printed) == len(set(printed)) == 8


@pytest.mark.parametrize("names, expected", [
    (["a/pic.png", "a/pic.jpg"], ["pic_png.png", "pic_jpg.png"]),
    (["a/x.png", "b/x.png"], ["a_x.png", "b_x.png"]),
    (["a/x.png", "a/x.jpg", "b/x.png"], ["x_1.png", "x_2.png", "x_3.png"]),
    (["a/IMG.png", "a/img.jpg"], ["IMG_png.png", "img_jpg.png"]),  # case-folded: one name on macOS and Windows
    (["a/pic.png", "a/pic.jpg", "a/pic_png.png"], ["pic_png_1.png", "pic_jpg.png", "pic_png_2.png"]),
    (["a/s.tif", "a/t.TIFF"], ["s.tif", "t.TIFF"]),
])
def test_output_names_are_distinct_and_predictable(tmp_path, names, expected):
    paths = [tmp_path / n for n in names]
    got = output_names(paths)
    assert got == expected
    assert len({n.casefold() for n in got}) == len(got)


def test_a_name_that_differs_only_in_case_is_the_input(model_file, tmp_path, capsys):
    _png(tmp_path / "IMG.PNG", 50)
    before = _hashes(tmp_path)
    assert _denoise(model_file, tmp_path / "IMG.PNG", "-o", tmp_path) == 2  # IMG.png is IMG.PNG where case folds
    assert "would replace the input" in capsys.readouterr().err
    assert _hashes(tmp_path) == before


def test_a_symlink_onto_an_input_is_refused(model_file, tmp_path, capsys):
    _png(tmp_path / "in" / "a.png", 50)
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "in" / "a.png", tmp_path / "out" / "a.png")
    before = _hashes(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert _denoise(model_file, tmp_path / "in", "-o", tmp_path / "out", *extra) == 2
        assert "would replace the input" in capsys.readouterr().err
        assert _hashes(tmp_path) == before


def test_earlier_outputs_are_replaced_only_when_asked(model_file, tmp_path, capsys):
    _png(tmp_path / "in" / "a.png", 50)
    _png(tmp_path / "in" / "b.png", 150)
    out = tmp_path / "out"
    assert _denoise(model_file, tmp_path / "in", "-o", out) == 0
    before = _hashes(tmp_path)
    assert _denoise(model_file, tmp_path / "in", "-o", out) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert _hashes(tmp_path) == before
    (out / "a.png").write_bytes(b"an earlier output, damaged")
    assert _denoise(model_file, tmp_path / "in", "-o", out, "--overwrite") == 0
    assert _hashes(tmp_path) == before  # the outputs are back, bit for bit; the inputs never changed


def test_o_naming_a_file_fails_before_any_work(model_file, tmp_path, capsys):
    _png(tmp_path / "in" / "a.png")
    (tmp_path / "notes.txt").write_text("mine")
    before = _hashes(tmp_path)
    assert _denoise(model_file, tmp_path / "in", "-o", tmp_path / "notes.txt") == 2
    assert "is an existing file" in capsys.readouterr().err
    assert _hashes(tmp_path) == before


def test_an_empty_folder_is_an_error(model_file, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _denoise(model_file, tmp_path / "empty", "-o", tmp_path / "out") == 2
    assert "no images in" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_files_are_skipped_and_the_rest_is_written(model_file, tmp_path, capsys):
    _png(tmp_path / "in" / "good.png", 80)
    x = np.full((6, 7), 0.5, np.float32)
    x[2, 3] = np.nan
    tifffile.imwrite(tmp_path / "in" / "nan.tif", x)
    tifffile.imwrite(tmp_path / "in" / "white.tif", np.full((6, 7), 200.0, np.float32))  # 0-255 stored as float
    (tmp_path / "in" / "cut.png").write_bytes((tmp_path / "in" / "good.png").read_bytes()[:40])
    out = tmp_path / "out"
    assert _denoise(model_file, tmp_path / "in", "-o", out) == 1
    err = capsys.readouterr().err
    assert "nan.tif" in err and "row 2, column 3" in err
    assert "white.tif" in err and "divide by 255" in err
    assert "cut.png" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


def test_a_stale_temporary_of_a_killed_call_is_removed(model_file, tmp_path):
    _png(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.png.x1y2z3.tmp.png").write_bytes(b"half an image")
    (out / ".notes.tmp").write_bytes(b"the user's")
    assert _denoise(model_file, tmp_path / "in", "-o", out) == 0
    assert sorted(p.name for p in out.iterdir()) == [".notes.tmp", "a.png"]


def test_weights_holding_nan_are_refused(tmp_path, capsys):
    model = create_model("dbsn_tiny", noise_model="awgn")
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    save_weights(tmp_path / "nan.safetensors", model)
    _png(tmp_path / "in" / "a.png")
    assert _denoise(tmp_path / "nan.safetensors", tmp_path / "in", "-o", tmp_path / "out") == 2
    assert "NaN" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong shape", "unknown setting"])
def test_broken_weights_files_are_one_line_errors(model_file, tmp_path, capsys, damage):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad.safetensors"
    if damage == "truncated":
        bad.write_bytes(model_file.read_bytes()[:1000])
    elif damage == "garbage":
        bad.write_bytes(os.urandom(2000))
    else:
        from safetensors import safe_open

        with safe_open(str(model_file), framework="pt") as fh:
            meta = fh.metadata()
        tensors = load_file(str(model_file))
        if damage == "wrong shape":
            key = next(iter(tensors))
            tensors[key] = torch.zeros(3, 3)
        else:
            meta["config"] = meta["config"].replace('"width"', '"no_such_setting": 1, "width"')
        save_file(tensors, str(bad), metadata=meta)
    _png(tmp_path / "in" / "a.png")
    assert _denoise(bad, tmp_path / "in", "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.safetensors" in err and "Traceback" not in err


def test_out_of_memory_on_one_image_names_it_and_the_batch_goes_on(model_file, tmp_path, capsys, monkeypatch):
    from dbsn.denoiser import Denoiser

    _png(tmp_path / "in" / "a.png", 50)
    _png(tmp_path / "in" / "huge.png", 60, size=(30, 31))
    _png(tmp_path / "in" / "z.png", 70)
    real = Denoiser.predict

    def predict(self, y):
        if y.shape[-2:] == (30, 31):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return real(self, y)

    monkeypatch.setattr(Denoiser, "predict", predict)
    assert _denoise(model_file, tmp_path / "in", "-o", tmp_path / "out", "--max-memory", "512M") == 1
    err = capsys.readouterr().err
    assert "huge.png: out of memory" in err and "--max-memory (now 0.5G)" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "z.png"]


def test_a_stack_is_denoised_plane_by_plane_and_written_back_with_its_axes(model_file, tmp_path):
    import dbsn

    rng = np.random.default_rng(0)
    stack = (rng.random((2, 3, 12, 13)) * 60000).astype(np.uint16)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "cells.tif", stack, imagej=True,
                     metadata={"axes": "TZYX", "spacing": 0.3, "unit": "um"}, resolution=(4.0, 4.0))
    assert _denoise(model_file, tmp_path / "in", "--noise-map", "-o", tmp_path / "out") == 0
    denoiser = dbsn.load(model_file)
    with tifffile.TiffFile(tmp_path / "out" / "cells.tif") as out:
        assert out.series[0].axes == "TZYX" and out.series[0].shape == stack.shape
        assert out.imagej_metadata["spacing"] == 0.3 and out.pages[0].tags["XResolution"].value == (4, 1)
        result = out.asarray()
    assert result.dtype == np.uint16
    for t, z in [(0, 0), (1, 2)]:  # each plane is the 2-D denoiser's result on that plane
        assert np.array_equal(result[t, z], denoiser.denoise(stack[t, z]))
    with tifffile.TiffFile(tmp_path / "out" / "cells_std_n.tiff") as noise_map:
        assert noise_map.series[0].axes == "TZYX" and noise_map.series[0].dtype == np.float32


def test_files_named_by_option_are_not_replaced_unless_asked(model_file, tmp_path, capsys):
    _png(tmp_path / "clean" / "c.png", 90)
    report = tmp_path / "report.json"
    report.write_text("the user's notes")
    args = ["-q", "evaluate", "--model", str(model_file), "--clean", str(tmp_path / "clean"), "--noise", "awgn:25",
            "--json", str(report)]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert report.read_text() == "the user's notes"
    assert main([*args, "--overwrite"]) == 0 and report.read_text().startswith("{")
    weights = model_file.read_bytes()
    assert main(["-q", "export", "--model", str(model_file), "-o", str(model_file), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err and model_file.read_bytes() == weights


def test_an_input_named_twice_is_denoised_once(model_file, tmp_path, capsys):
    _png(tmp_path / "in" / "a.png", 50)
    os.symlink(tmp_path / "in" / "a.png", tmp_path / "link.png")
    assert _denoise(model_file, tmp_path / "in" / "a.png", tmp_path / "in", tmp_path / "link.png",
                    "-o", tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]


def test_add_noise_keeps_a_stack_a_stack(tmp_path):
    stack = np.full((3, 12, 13), 30000, np.uint16)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "z.tif", stack, photometric="minisblack", metadata={"axes": "ZYX"})
    assert main(["-q", "add-noise", str(tmp_path / "in"), "--noise", "awgn:25", "-o", str(tmp_path / "out")]) == 0
    with tifffile.TiffFile(tmp_path / "out" / "z.tiff") as out:
        assert out.series[0].axes == "ZYX" and out.series[0].dtype == np.float32
        noisy = out.asarray()
    assert noisy.shape == stack.shape and abs((noisy - 30000 / 65535).std() * 255 - 25) < 3
    assert not np.array_equal(noisy[0], noisy[1])  # each plane its own noise

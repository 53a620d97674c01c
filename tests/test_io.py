import numpy as np
import pytest
import tifffile
from PIL import Image

import torch

from dbsn.data import (ImageReadError, PatchSampler, atomic_path, cache_budget, list_images, load_folder, read_image,
                       seeded_generator, write_image)
from dbsn.noise import parse_noise


def test_png_8_and_16_bit_gray_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    a16 = rng.integers(0, 65536, (7, 9), dtype=np.uint16)
    Image.fromarray(a8).save(tmp_path / "a8.png")
    Image.fromarray(a16).save(tmp_path / "a16.png")
    x8, info8 = read_image(tmp_path / "a8.png")
    x16, info16 = read_image(tmp_path / "a16.png")
    assert (info8.bits, info16.bits) == (8, 16) and x8.shape == (1, 7, 9)
    write_image(tmp_path / "b8.png", x8, bits=8)
    write_image(tmp_path / "b16.png", x16, bits=16)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b8.png")), a8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b16.png")).astype(np.uint16), a16)


def test_16_bit_colour_png_and_tiff_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    x = a.transpose(2, 0, 1) / 65535.0
    write_image(tmp_path / "c.tiff", x, bits=16)
    back = tifffile.imread(tmp_path / "c.tiff")
    assert back.dtype == np.uint16 and np.array_equal(back, a)
    y, info = read_image(tmp_path / "c.tiff")
    assert info.bits == 16 and y.shape == (3, 5, 6)
    with pytest.raises(ValueError, match="TIFF"):
        write_image(tmp_path / "c.png", x, bits=16)
    assert not (tmp_path / "c.png").exists()


def test_jpeg_rgba_and_channel_conversion(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "r.jpg", quality=95)
    x, info = read_image(tmp_path / "r.jpg")
    assert x.shape == (3, 8, 8) and info.bits == 8
    gray, _ = read_image(tmp_path / "r.jpg", channels=1)
    assert gray.shape == (1, 8, 8) and abs(gray.mean() - 0.299) < 0.02
    rgba = np.dstack([rgb, np.full((8, 8), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    x, info = read_image(tmp_path / "a.png")
    assert x.shape == (3, 8, 8) and info.alpha is not None


def test_bad_files_give_clear_errors_and_folders_skip_them(tmp_path, caplog):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    assert [p.name for p in list_images(tmp_path)] == ["broken.png", "ok.png"]
    folder = load_folder(tmp_path)
    assert len(folder) == 1 and folder.skipped[0][0].name == "broken.png"
    assert "broken.png" in caplog.text
    with pytest.raises(ValueError, match="no readable image"):
        load_folder(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)


def test_several_folders_load_as_one_set_in_one_channel_count(tmp_path):
    gray, colour = tmp_path / "gray", tmp_path / "colour"
    gray.mkdir(), colour.mkdir()
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(gray / "a.png")
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(colour / "b.png")
    (colour / "c.png").write_bytes(b"broken")
    folder = load_folder([gray, colour], channels=1)
    assert [p.name for p in folder.paths] == ["a.png", "b.png"] and folder.channels == 1
    assert [img.shape for img in folder.images] == [(1, 4, 5), (1, 6, 7)]
    assert [p.name for p, _ in folder.skipped] == ["c.png"]
    assert load_folder([gray, colour]).channels == 3


def test_float_tiff_keeps_values_outside_the_unit_range(tmp_path):
    values = np.array([[[-0.25, 0.5, 1.75]]], np.float32)
    write_image(tmp_path / "f.tiff", values, bits=32)
    back, info = read_image(tmp_path / "f.tiff")
    assert info.bits == 32 and np.array_equal(back, values)


def test_written_files_get_the_usual_mode(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        write_image(tmp_path / "a.png", np.zeros((1, 4, 4), np.float32))
    finally:
        os.umask(mask)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def _mixed_folder(path):
    path.mkdir()
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(40, 52), (20, 9), (33, 33)]):  # one smaller than a patch
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(path / f"{i}.png")
    tifffile.imwrite(path / "3.tif", rng.integers(0, 65536, (36, 30), dtype=np.uint16))
    return path


def test_folders_over_the_memory_budget_are_decoded_on_demand(tmp_path):
    folder = _mixed_folder(tmp_path / "images")
    memory, files = load_folder(folder), load_folder(folder, cache_bytes=0)
    assert memory.images.in_memory and not files.images.in_memory
    assert files.images.sizes == memory.images.sizes == [(40, 52), (20, 9), (33, 33), (36, 30)]
    assert files.nbytes == memory.nbytes == 4 * (40 * 52 + 20 * 9 + 33 * 33 + 36 * 30)
    assert all(torch.equal(a, b) for a, b in zip(memory.images, files.images))
    # the budget is counted as the images are read: two of them fit in this one
    assert not load_folder(folder, channels=1, cache_bytes=4 * (40 * 52 + 20 * 9)).images.in_memory
    noise = parse_noise("awgn:25")
    for noisy, clean in [(None, "images"), ("fixed", "images"), ("images", None)]:
        batches = []
        for loaded in (memory, files):
            sets = {"images": loaded.images, "fixed": loaded.images.map(lambda x: noise.add_protocol(x, seed=0)),
                    None: None}
            sampler = PatchSampler(24, 6, seeded_generator(7), noisy=sets[noisy], clean=sets[clean], noise=noise)
            batches.append([sampler.sample() for _ in range(3)])
        for (ya, xa), (yb, xb) in zip(*batches):
            assert torch.equal(ya, yb) and (xa is None) == (xb is None) and (xa is None or torch.equal(xa, xb))
    assert files.images.subset([3, 1]).sizes == [(36, 30), (20, 9)] and len(files.images[1::2]) == 2


def test_a_file_that_changes_during_training_is_named(tmp_path):
    folder = _mixed_folder(tmp_path / "images")
    images = load_folder(folder, cache_bytes=0).images
    (folder / "1.png").write_bytes(b"gone")
    with pytest.raises(ImageReadError, match="1.png.*readable when training started"):
        images[1]
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(folder / "2.png")
    with pytest.raises(ImageReadError, match="2.png: its size changed"):
        images[2]


def test_the_default_cache_shares_half_the_free_memory_between_local_processes(monkeypatch):
    monkeypatch.setattr("dbsn.data.patches.available_memory", lambda: 8 * 1024**3)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cache_budget(None) == 4 * 1024**3 and cache_budget(0.5) == 1024**3 // 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cache_budget(None) == 1024**3
    with pytest.raises(ValueError, match="--cache-gb"):
        cache_budget(-1)

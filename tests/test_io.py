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
    write_image(tmp_path / "c.png", x, bits=16)  # 16-bit colour PNG, which Pillow reads as 8 bits
    z, info = read_image(tmp_path / "c.png")
    assert info.bits == 16 and np.array_equal(np.round(z * 65535).astype(np.uint16), a.transpose(2, 0, 1))


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


# ---- the image layer over modes, bit depths, sizes 1 to 9, stack shapes and NaN positions ----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dbsn.data.io import FLOAT_RANGE, read_planes  # noqa: E402
from dbsn.data.png16 import read_png16, write_png16  # noqa: E402

# (what the file is, how it is written): channels, alpha, integer dtype
LAYOUTS = {
    "png L": (1, False, np.uint8), "png LA": (1, True, np.uint8), "png RGB": (3, False, np.uint8),
    "png RGBA": (3, True, np.uint8), "png I;16": (1, False, np.uint16), "png LA16": (1, True, np.uint16),
    "png RGB16": (3, False, np.uint16), "png RGBA16": (3, True, np.uint16),
    "tif gray8": (1, False, np.uint8), "tif gray16": (1, False, np.uint16), "tif float": (1, False, np.float32),
    "tif rgb8": (3, False, np.uint8), "tif rgb16": (3, False, np.uint16), "tif rgba8": (3, True, np.uint8),
    "tif gray+alpha": (1, True, np.uint16),
}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _pixels(rng, dtype, shape):
    if dtype == np.float32:
        return rng.uniform(-0.2, 1.2, shape).astype(np.float32)  # noisy float data strays outside [0, 1]
    return rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def _write(path, layout, pixels):
    channels, alpha, _ = LAYOUTS[layout]
    samples = channels + alpha
    if layout.startswith("png") and pixels.dtype == np.uint16 and samples > 1:
        path.write_bytes(write_png16(pixels))
    elif layout.startswith("png"):
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[samples]
        (Image.fromarray(pixels) if pixels.dtype == np.uint16 else Image.fromarray(pixels, mode=mode)).save(path)
    else:
        photometric = "rgb" if channels == 3 else "minisblack"
        extra = {"planarconfig": "contig", "extrasamples": (2,)} if alpha else {}
        tifffile.imwrite(path, pixels, photometric=photometric, **extra)


@SETTINGS
@given(layout=st.sampled_from(sorted(LAYOUTS)), h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 99))
def test_every_layout_reads_and_writes_back_as_it_came(tmp_path, layout, h, w, seed):
    channels, alpha, dtype = LAYOUTS[layout]
    samples = channels + alpha
    pixels = _pixels(np.random.default_rng(seed), dtype, (h, w) if samples == 1 else (h, w, samples))
    src = tmp_path / f"src_{h}_{w}_{seed}.{layout[:3]}"
    _write(src, layout, pixels)
    planes, info = read_planes(src)
    assert planes.shape == (1, channels, h, w), "the size and mode are kept, however small"
    assert (info.alpha is not None) == alpha and info.channels == channels
    scale = 1.0 if dtype == np.float32 else float(np.iinfo(dtype).max)
    hwc = pixels[..., None] if samples == 1 else pixels
    assert np.allclose(planes[0], np.moveaxis(hwc[..., :channels], -1, 0) / scale, atol=1e-7)
    out = tmp_path / f"out_{h}_{w}_{seed}.{layout[:3]}"
    write_image(out, planes, like=info)
    back = read_png16(out.read_bytes())[0] if layout.startswith("png") and samples > 1 and dtype == np.uint16 \
        else (np.asarray(Image.open(out)) if layout.startswith("png") else tifffile.imread(out))
    assert back.dtype == pixels.dtype or (back.dtype == np.int32 and dtype == np.uint16)
    assert np.array_equal(back.reshape(pixels.shape), pixels), "written back bit for bit"


STACKS = [("ZYX", False, {}), ("TZYX", True, {}), ("ZCYX", True, {}), ("TYX", False, {"ome": True}),
          ("QYX", False, {}), ("ZYXS", False, {})]


@SETTINGS
@given(stack=st.sampled_from(range(len(STACKS))), planes=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32]), seed=st.integers(0, 99))
def test_stacks_keep_their_axes_and_are_never_colour(tmp_path, stack, planes, h, w, dtype, seed):
    axes, imagej, extra = STACKS[stack]
    if imagej:  # tifffile's ImageJ layout cannot hold planes 1 pixel high or wide unambiguously
        h, w = max(h, 2), max(w, 2)
    rng = np.random.default_rng(seed)
    lead = {"ZYX": (planes,), "TZYX": (2, planes), "ZCYX": (planes, 3), "TYX": (planes,), "QYX": (planes,),
            "ZYXS": (planes,)}[axes]
    shape = (*lead, h, w, 3) if axes.endswith("S") else (*lead, h, w)
    data = _pixels(rng, dtype, shape)
    if imagej and dtype == np.uint8:
        data = data.astype(np.uint16)
    src = tmp_path / f"stack_{stack}_{planes}_{h}_{w}_{seed}.tif"
    options = {"photometric": "rgb" if axes.endswith("S") else "minisblack"}
    if imagej:
        tifffile.imwrite(src, data, imagej=True, metadata={"axes": axes, "spacing": 0.25, "unit": "um"})
    else:
        tifffile.imwrite(src, data, metadata={"axes": axes}, **extra, **options)
    stack_planes, info = read_planes(src)
    colour = 3 if axes.endswith("S") else 1
    assert stack_planes.shape == (int(np.prod(lead)), colour, h, w)  # a 3- or 4-page stack is not RGB(A)
    with tifffile.TiffFile(src) as a:
        assert info.axes == a.series[0].axes  # ImageJ drops axes of length 1, and so do we
    out = tmp_path / ("out_" + src.name)
    write_image(out, stack_planes, like=info)
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(out) as b:
        assert b.series[0].axes == a.series[0].axes and b.series[0].shape == a.series[0].shape
        assert b.series[0].dtype == a.series[0].dtype
        assert np.array_equal(a.asarray(), b.asarray())
        if imagej:
            assert b.imagej_metadata["spacing"] == 0.25 and b.imagej_metadata["unit"] == "um"


@SETTINGS
@given(h=st.integers(1, 9), w=st.integers(1, 9), planes=st.integers(1, 3), data=st.data())
def test_nan_or_inf_anywhere_is_refused_naming_where(tmp_path, h, w, planes, data):
    plane, row, col = (data.draw(st.integers(0, n - 1)) for n in (planes, h, w))
    value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    x = np.full((planes, h, w), 0.5, np.float32)
    x[plane, row, col] = value
    path = tmp_path / f"nan_{h}_{w}_{planes}.tif"
    tifffile.imwrite(path, x if planes > 1 else x[0], photometric="minisblack", metadata={"axes": "ZYX" if planes > 1 else "YX"})
    with pytest.raises(ImageReadError, match=f"row {row}, column {col}"):
        read_planes(path)


def test_float_images_outside_the_unit_scale_are_refused_with_the_fix(tmp_path):
    tifffile.imwrite(tmp_path / "f255.tif", np.linspace(0, 255, 20, dtype=np.float32).reshape(4, 5))
    with pytest.raises(ImageReadError, match="divide by 255"):
        read_planes(tmp_path / "f255.tif")
    inside = np.array([[FLOAT_RANGE[0], 0.5, FLOAT_RANGE[1]]], np.float32)
    tifffile.imwrite(tmp_path / "ok.tif", inside)
    assert np.array_equal(read_planes(tmp_path / "ok.tif")[0][0, 0], inside)


def _png_filtered(pixels, kinds):
    """An independent 16-bit PNG encoder that uses the given filter on each row (PNG spec 9.2)."""
    import struct
    import zlib

    h, w, c = pixels.shape
    raw = pixels.astype(">u2").reshape(h, w * c).view(np.uint8).astype(np.int32)
    bpp = 2 * c
    out = []
    for r in range(h):
        x = raw[r]
        a = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        b = raw[r - 1] if r else np.zeros_like(x)
        ul = np.concatenate([np.zeros(bpp, np.int32), b[:-bpp]])
        p = a + b - ul
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ul))
        pred = [np.zeros_like(x), a, b, (a + b) // 2, paeth][kinds[r]]
        out.append(bytes([kinds[r]]) + ((x - pred) % 256).astype(np.uint8).tobytes())

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(out))) + chunk(b"IEND", b""))


@SETTINGS
@given(h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 4), seed=st.integers(0, 999))
def test_16_bit_png_reader_undoes_every_row_filter(h, w, c, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 65536, (h, w, c), dtype=np.uint16)
    kinds = rng.integers(0, 5, h).tolist()
    assert np.array_equal(read_png16(_png_filtered(pixels, kinds))[0], pixels)


def test_phone_photos_are_turned_upright_and_keep_their_profile(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0] = 255  # a marker in the top-left corner of the stored pixels
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    exif[0x010F] = "PhoneMaker"
    im.save(tmp_path / "phone.jpg", exif=exif, icc_profile=b"an icc profile", quality=100)
    x, info = read_image(tmp_path / "phone.jpg")
    assert x.shape == (3, 6, 4)  # upright: taller than wide
    assert x[0, 0, -1] > 0.8  # the marker is now top-right
    write_image(tmp_path / "out.png", x, like=info)
    out = Image.open(tmp_path / "out.png")
    assert out.size == (4, 6) and out.info["icc_profile"] == b"an icc profile"
    assert out.getexif().get(0x010F) == "PhoneMaker" and 0x0112 not in out.getexif()


@pytest.mark.parametrize("kind", ["png", "png16", "jpg", "tif", "stack"])
def test_the_pixel_budget_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch, kind):
    path = tmp_path / ("big." + {"png16": "png", "stack": "tif"}.get(kind, kind))
    if kind == "png16":
        path.write_bytes(write_png16(np.zeros((30, 40, 3), np.uint16)))
    elif kind == "stack":
        tifffile.imwrite(path, np.zeros((3, 30, 40), np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    elif kind == "tif":
        tifffile.imwrite(path, np.zeros((30, 40), np.uint8))
    else:
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    limit = 3 * 30 * 40 if kind == "stack" else 30 * 40
    assert read_planes(path, max_pixels=limit)[0].shape[-2:] == (30, 40)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the budget was checked")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_decoding)
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("dbsn.data.io.read_png16", no_decoding)
    with pytest.raises(ImageReadError, match=f"--max-pixels {limit}"):
        read_planes(path, max_pixels=limit - 1)


def test_pages_of_one_size_are_a_stack_and_of_several_sizes_refused(tmp_path):
    for i in range(3):  # written one by one: three series of one page each
        tifffile.imwrite(tmp_path / "pages.tif", np.full((4, 5), i, np.uint8), append=True)
    planes, info = read_planes(tmp_path / "pages.tif")
    assert planes.shape == (3, 1, 4, 5) and info.axes == "IYX"
    with pytest.raises(ImageReadError, match="a stack of 3 planes"):
        read_image(tmp_path / "pages.tif")
    tifffile.imwrite(tmp_path / "mixed.tif", np.zeros((4, 5), np.uint8))
    tifffile.imwrite(tmp_path / "mixed.tif", np.zeros((2, 2), np.uint8), append=True)
    with pytest.raises(ImageReadError, match="different shapes"):
        read_planes(tmp_path / "mixed.tif")


def test_training_takes_every_plane_of_a_stack(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "train").mkdir()
    stack = rng.integers(0, 65536, (3, 2, 20, 21), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "train" / "cells.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    Image.fromarray(rng.integers(0, 256, (16, 18), dtype=np.uint8)).save(tmp_path / "train" / "plain.png")
    memory, files = load_folder(tmp_path / "train"), load_folder(tmp_path / "train", cache_bytes=0)
    assert len(memory) == len(files) == 7 and memory.channels == 1
    assert files.paths[:2] == [(tmp_path / "train" / "cells.tif", 0), (tmp_path / "train" / "cells.tif", 1)]
    expected = list(stack.reshape(6, 20, 21) / 65535.0) + [None]
    for k, (a, b) in enumerate(zip(memory.images, files.images)):  # decoded on demand: the same plane
        assert torch.equal(a, b)
        if expected[k] is not None:
            assert np.allclose(a[0].numpy(), expected[k], atol=1e-7)

"""Probe `dbsn` with ordinary and hostile files, as a new user would, and print what happened.

Each case runs the CLI in-process on a fresh temporary folder and reports the exit code and
what became of the files: whether a file the call did not write changed, what was written,
what the output holds. Run it on two checkouts to compare them:

    python benchmarks/data_safety.py                       # this checkout
    PYTHONPATH=/path/to/other/src python benchmarks/data_safety.py

It writes only below a temporary folder. The models are untrained (the cases are about
files, not quality), except where a case says otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

import dbsn
from dbsn.cli import main
from dbsn.nn import create_model
from dbsn.hub import save_weights

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def run(*argv) -> tuple[int | str, str]:
    """Exit code (or the exception that escaped) and stderr's last line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["-q", *map(str, argv)])
        except SystemExit as stop:
            code = stop.code
        except BaseException as escaped:  # noqa: BLE001  what a user would see: a traceback
            code = f"traceback ({type(escaped).__name__})"
            traceback.print_exc(file=err)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return code, (lines[-1][:110] if lines else "")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()[:8]


def png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def model(root: Path, channels: int = 1, nan: bool = False) -> Path:
    torch.manual_seed(0)
    m = create_model("dbsn_tiny", noise_model="awgn", in_channels=channels)
    if nan:
        with torch.no_grad():
            next(m.parameters()).fill_(float("nan"))
    path = root / f"model{channels}{'nan' if nan else ''}.safetensors"
    save_weights(path, m)
    return path


def gray(value=100, size=(16, 17)):
    return np.full(size, value, np.uint8)


@case
def output_onto_users_file(root):
    """denoise dir/pic.jpg -o dir, dir/pic.png the user's"""
    d = root / "dir"
    mine = png(d / "pic.png", gray(10))
    Image.fromarray(gray(200)).save(d / "pic.jpg")
    before = md5(mine)
    code, err = run("denoise", "--model", model(root), d / "pic.jpg", "-o", d)
    return code, f"user's pic.png {'changed' if md5(mine) != before else 'intact'}", err


@case
def one_stem_two_extensions(root):
    """denoise pic.png pic.jpg -o out"""
    png(root / "pic.png", gray(10))
    Image.fromarray(gray(200)).save(root / "pic.jpg")
    code, err = run("denoise", "--model", model(root), root / "pic.png", root / "pic.jpg", "-o", root / "out")
    return code, f"outputs: {sorted(p.name for p in (root / 'out').glob('*'))}", err


@case
def one_name_two_folders(root):
    """denoise a/x.png b/x.png -o out"""
    png(root / "a" / "x.png", gray(10))
    png(root / "b" / "x.png", gray(240))
    code, err = run("denoise", "--model", model(root), root / "a" / "x.png", root / "b" / "x.png", "-o", root / "out")
    return code, f"outputs: {sorted(p.name for p in (root / 'out').glob('*'))}", err


@case
def case_folded_name_onto_input(root):
    """denoise IMG.PNG -o its own folder (IMG.png is IMG.PNG on macOS/Windows)"""
    png(root / "IMG.PNG", gray(50))
    code, err = run("denoise", "--model", model(root), root / "IMG.PNG", "-o", root)
    return code, f"folder: {sorted(p.name for p in root.glob('IMG*'))}", err


@case
def symlink_onto_input(root):
    """out/a.png is a symlink to the input a.png"""
    src = png(root / "in" / "a.png", gray(50))
    (root / "out").mkdir()
    os.symlink(src, root / "out" / "a.png")
    before = md5(src)
    code, err = run("denoise", "--model", model(root), root / "in", "-o", root / "out")
    return code, f"input {'changed' if md5(src) != before else 'intact'}", err


@case
def earlier_output_replaced(root):
    """a second denoise into the same -o"""
    png(root / "in" / "a.png", gray(50))
    run("denoise", "--model", model(root), root / "in", "-o", root / "out")
    (root / "out" / "a.png").write_bytes(b"the user edited this")
    code, err = run("denoise", "--model", model(root), root / "in", "-o", root / "out")
    kept = (root / "out" / "a.png").read_bytes() == b"the user edited this"
    return code, f"existing out/a.png {'intact' if kept else 'replaced'}", err


@case
def o_names_a_file(root):
    """-o names an existing file"""
    png(root / "in" / "a.png", gray(50))
    (root / "notes.txt").write_text("mine")
    code, err = run("denoise", "--model", model(root), root / "in", "-o", root / "notes.txt")
    return code, f"notes.txt {'intact' if (root / 'notes.txt').read_text() == 'mine' else 'changed'}", err


@case
def empty_folder(root):
    """denoise an empty folder"""
    (root / "empty").mkdir()
    code, err = run("denoise", "--model", model(root), root / "empty", "-o", root / "out")
    return code, "", err or "(nothing said)"


def _denoise_float_tiff(root, array, describe):
    """Denoise one float TIFF holding ``array``; ``describe(output)`` says what the output holds."""
    (root / "in").mkdir()
    tifffile.imwrite(root / "in" / "f.tif", array.astype(np.float32), photometric="minisblack")
    code, err = run("denoise", "--model", model(root), root / "in", "-o", root / "out")
    out = root / "out" / "f.tif"
    return code, describe(tifffile.imread(out)) if out.exists() else "no output", err


@case
def nan_pixel(root):
    """one NaN pixel in a float TIFF"""
    x = np.full((16, 17), 0.5, np.float32)
    x[3, 4] = np.nan
    return _denoise_float_tiff(root, x, lambda out: f"output {np.isnan(out).mean():.0%} NaN")


@case
def float_0_255(root):
    """a float TIFF holding 0-255 values"""
    return _denoise_float_tiff(root, np.linspace(0, 255, 16 * 17).reshape(16, 17),
                               lambda out: f"output mean {out.mean():.2f} (1 = white)")


@case
def tiny_rgb(root):
    """RGB PNGs of 1x1 and 3x5 pixels, colour model"""
    rng = np.random.default_rng(0)
    png(root / "in" / "one.png", rng.integers(0, 256, (1, 1, 3)))
    png(root / "in" / "three.png", rng.integers(0, 256, (3, 5, 3)))
    code, err = run("denoise", "--model", model(root, 3), root / "in", "-o", root / "out")
    shapes = {p.name: (np.asarray(Image.open(p)).shape, Image.open(p).mode) for p in sorted((root / "out").glob("*"))}
    return code, f"outputs: {shapes} (inputs (1,1,3) RGB, (3,5,3) RGB)", err


@case
def three_page_stack(root):
    """a 3-page gray TIFF (ZYX)"""
    (root / "in").mkdir()
    tifffile.imwrite(root / "in" / "z.tif", np.stack([gray(v) for v in (20, 120, 220)]), photometric="minisblack",
                     metadata={"axes": "ZYX"})
    code, err = run("denoise", "--model", model(root), root / "in", "-o", root / "out")
    out = root / "out" / "z.tif"
    if not out.exists():
        return code, "no output", err
    with tifffile.TiffFile(out) as t:
        data = t.asarray()
        return code, f"output {t.series[0].axes} {data.shape}, plane means {[round(float(p.mean())) for p in data] if data.ndim == 3 else '-'}", err


@case
def imagej_hyperstack(root):
    """ImageJ ZCYX uint16 stack, spacing 0.5 um"""
    (root / "in").mkdir()
    data = (np.arange(2 * 3 * 16 * 17).reshape(2, 3, 16, 17) % 60000).astype(np.uint16)
    tifffile.imwrite(root / "in" / "h.tif", data, imagej=True, metadata={"axes": "ZCYX", "spacing": 0.5, "unit": "um"})
    code, err = run("denoise", "--model", model(root), root / "in", "-o", root / "out")
    out = root / "out" / "h.tif"
    if not out.exists():
        return code, "no output", err
    with tifffile.TiffFile(out) as t:
        meta = t.imagej_metadata or {}
        return code, f"output {t.series[0].axes} {t.series[0].shape} {t.series[0].dtype}, spacing {meta.get('spacing')}", err


@case
def phone_photo(root):
    """JPEG stored sideways (EXIF orientation 6) with an ICC profile"""
    rgb = np.zeros((16, 24, 3), np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6
    (root / "in").mkdir()
    im.save(root / "in" / "phone.jpg", exif=exif, icc_profile=b"profile")
    code, err = run("denoise", "--model", model(root, 3), root / "in", "-o", root / "out")
    out = root / "out" / "phone.png"
    if not out.exists():
        return code, "no output", err
    o = Image.open(out)
    return code, f"output {o.size[0]}x{o.size[1]} (upright: 16x24), ICC {'kept' if o.info.get('icc_profile') else 'dropped'}", err


@case
def nan_weights(root):
    """weights holding NaN"""
    png(root / "in" / "a.png", gray(100))
    code, err = run("denoise", "--model", model(root, nan=True), root / "in", "-o", root / "out")
    out = root / "out" / "a.png"
    return code, f"output mean {np.asarray(Image.open(out)).mean():.0f}" if out.exists() else "no output", err


@case
def pixel_bomb(root):
    """a 40000 x 40000 TIFF header (2 MB compressed), with a good image beside it"""
    (root / "in").mkdir()
    png(root / "in" / "good.png", gray(100))
    if os.environ.get("PROBE_BOMB") != "1":
        return "-", "skipped (PROBE_BOMB=1 decodes 1.6 G pixels on a version without a budget)", ""
    tile = np.zeros((256, 256), np.uint8)
    tifffile.imwrite(root / "in" / "bomb.tif", (tile for _ in range(157 * 157)), shape=(40000, 40000),
                     dtype=np.uint8, tile=(256, 256), compression="zlib")
    code, err = run("denoise", "--model", model(root), root / "in", "-o", root / "out")
    return code, f"good.png {'written' if (root / 'out' / 'good.png').exists() else 'not written'}", err


@case
def png16_colour(root):
    """a 16-bit RGB PNG"""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + np.full((17, 3), 40000, ">u2").tobytes() for _ in range(16))
    (root / "in").mkdir()
    (root / "in" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 17, 16, 16, 2, 0, 0, 0))
                                        + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    code, err = run("denoise", "--model", model(root, 3), root / "in", "-o", root / "out")
    out = root / "out" / "c.png"
    if not out.exists():
        return code, "no output", err
    written = out.read_bytes()
    return code, f"output c.png, {written[24]}-bit colour type {written[25]} (input: 16-bit type 2)", err


@case
def gray_alpha_tiff(root):
    """a gray+alpha TIFF"""
    (root / "in").mkdir()
    data = np.dstack([np.full((16, 17), 30000, np.uint16), np.full((16, 17), 65535, np.uint16)])
    tifffile.imwrite(root / "in" / "ga.tif", data, photometric="minisblack", planarconfig="contig", extrasamples=(2,))
    code, err = run("denoise", "--model", model(root), root / "in", "-o", root / "out")
    out = root / "out" / "ga.tif"
    return code, f"output {tifffile.imread(out).shape}" if out.exists() else "no output", err


@case
def evaluate_mixed_channels(root):
    """evaluate a gray model on a colour image"""
    png(root / "clean" / "c.png", np.random.default_rng(0).integers(0, 256, (16, 17, 3)))
    code, err = run("evaluate", "--model", model(root), "--clean", root / "clean", "--noise", "awgn:25")
    return code, "", err or "(nothing said: converted to gray)"


@case
def broken_weights(root):
    """a truncated .safetensors"""
    good = model(root)
    (root / "cut.safetensors").write_bytes(good.read_bytes()[:1000])
    png(root / "in" / "a.png", gray())
    code, err = run("denoise", "--model", root / "cut.safetensors", root / "in", "-o", root / "out")
    return code, "", err


@case
def unknown_setting(root):
    """weights whose configuration has an unknown setting"""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = model(root)
    with safe_open(str(good), framework="pt") as fh:
        meta = fh.metadata()
    meta["config"] = meta["config"].replace('"width"', '"colour_space": "lab", "width"')
    save_file(load_file(str(good)), str(root / "odd.safetensors"), metadata=meta)
    png(root / "in" / "a.png", gray())
    code, err = run("denoise", "--model", root / "odd.safetensors", root / "in", "-o", root / "out")
    return code, "", err


def _train_args(root, *extra):
    folder = root / "noisy"
    if not folder.exists():
        rng = np.random.default_rng(0)
        for i in range(4):
            png(folder / f"n{i}.png", np.clip(rng.normal(120, 25, (40, 40)), 0, 255))
    return ["train", "--noisy", folder, "--model", "dbsn_tiny", "--patch-size", "32", "--batch-size", "2", *extra]


@case
def bad_training_options(root):
    """--val-every 0 / --save-every -1 / --minutes inf / --phase-split nan,1,1 / --patch-size 100000"""
    results = []
    for option in (["--val-every", "0"], ["--save-every", "-1"], ["--minutes", "inf"],
                   ["--phase-split", "nan,1,1"], ["--patch-size", "100000"]):
        args = _train_args(root, *(option if option[0] == "--minutes" else ["--steps", "2", *option]))
        if option[0] == "--patch-size":
            args = [a for a in args if a != "32"]
            args.remove("--patch-size")
        code, _ = run(*args, "-o", root / f"run{len(results)}")
        results.append(f"{option[0]}={option[1]}: {code}")
    return "see note", "; ".join(results), ""


CHECKS = {name.__name__: name for name in CASES}


def main_probe() -> int:
    print(f"dbsn from {Path(dbsn.__file__).parent}")
    print(f"{'case':<26} {'exit':<22} {'what became of the files':<70} last line on stderr")
    for fn in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                code, note, err = fn(Path(tmp))
            except Exception as escaped:  # noqa: BLE001  the probe itself must go on
                code, note, err = f"probe failed ({type(escaped).__name__})", str(escaped)[:70], ""
        print(f"{fn.__name__:<26} {str(code):<22} {note:<70} {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main_probe())

"""Tiled inference equals one pass; the context radius covers the true receptive field."""

import pytest
import torch

import dbsn
from dbsn.denoiser import Denoiser
from dbsn.tiling import TileSpec, parse_memory, tile_size, tiled_apply

CASES = [
    ("dbsn_tiny", 1, {"noise_model": "awgn"}),
    ("dbsn_tiny", 3, {"noise_model": "mg"}),
    ("dbsn_tiny", 3, {"noise_model": "hg"}),
    ("dbsn_tiny", 1, {"noise_model": "awgn", "mask_mode": "trimmed"}),
    ("mwcnn_small", 1, {}),
    ("mwcnn_small", 3, {"widths": (8, 12, 16), "attention": 2, "colour": "opponent"}),
    ("unet_small", 3, {}),
    ("bsn_unet", 1, {"noise_model": "awgn", "width": 8, "blocks": 2}),
    ("bsn_unet", 3, {"noise_model": "mg", "width": 8, "blocks": 2}),
    ("dbsn_tiny", 3, {"noise_model": "hg", "pd_stride": 3}),  # pixel shuffle: 3 in training, 2 here
    ("bsn_unet", 1, {"noise_model": "awgn", "width": 8, "blocks": 2, "pd_stride": 2, "pd_stride_infer": 2}),
]


def _model(name, channels, kwargs):
    torch.manual_seed(0)
    model = dbsn.create_model(name, in_channels=channels, **kwargs).eval()
    with torch.no_grad():  # zero-initialised layers get small weights, so every path carries signal
        for p in model.parameters():
            if not p.any():
                p.add_(0.02 * torch.randn_like(p))
    return model


def _budget(spec: TileSpec, core: int) -> int:
    """A memory budget whose tiles have cores of about ``core`` pixels."""
    return (core + 2 * spec.radius) ** 2 * spec.bytes_per_pixel


def _tiled_and_whole(model, y, spec, core):
    # one protocol for every kind of model: per-pixel parts by tiles, then the whole-image assembly
    whole = model(y)
    tiled = model.assemble(y, tiled_apply(model.pixel_parts, y, spec, _budget(spec, core)))
    return whole, tiled


@pytest.mark.parametrize("name,channels,kwargs", CASES)
@pytest.mark.parametrize("size", [(37, 53), (1, 41), (9, 6)])
def test_tiled_equals_one_pass_exactly(name, channels, kwargs, size):
    """In float64 the tiles reproduce one pass to rounding: the stitching loses nothing."""
    model = _model(name, channels, kwargs).double()
    spec = model.tile_spec()
    y = torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        whole, tiled = _tiled_and_whole(model, y, spec, 2 * spec.align)
    assert whole.keys() == tiled.keys()
    for key in whole:
        torch.testing.assert_close(tiled[key], whole[key], atol=1e-10, rtol=1e-10, msg=key)


@pytest.mark.parametrize("name,channels,kwargs", [
    ("dbsn", 1, {"noise_model": "awgn", "width": 48, "blocks": 2}),
    ("dbsn", 3, {"noise_model": "mg", "width": 48, "blocks": 2}),
    ("mwcnn_small", 1, {}),
])
def test_tiled_denoiser_within_1e5_in_fp32(name, channels, kwargs):
    model = _model(name, channels, kwargs)
    with torch.no_grad():  # outputs at the scale of a trained model's, near [0, 1]
        last = model.bsn.tail[-1] if hasattr(model, "bsn") else None
        if last is not None:
            last.weight.mul_(0.1)
    y = torch.rand(1, channels, 61, 47, generator=torch.Generator().manual_seed(2))
    whole = Denoiser(model, max_memory=1 << 40).predict(y)
    tiled = Denoiser(model, max_memory=_budget(model.tile_spec(), 8)).predict(y)
    torch.testing.assert_close(tiled["x_hat"], whole["x_hat"], atol=1e-5, rtol=0)
    if "mu" in whole:
        torch.testing.assert_close(tiled["mu"], whole["mu"], atol=1e-5, rtol=0)


def test_tiles_really_split_the_image():
    model = _model("dbsn_tiny", 1, {"noise_model": "awgn"})
    spec, calls = model.tile_spec(), []

    def fn(t):
        calls.append(tuple(t.shape[-2:]))
        return model.pixel_parts(t)

    tiled_apply(fn, torch.rand(1, 1, 37, 53), spec, _budget(spec, 8))
    assert len(calls) > 4 and all(h * w <= (8 + 2 * spec.radius) ** 2 for h, w in calls)  # within the budget


@pytest.mark.parametrize("name,channels,kwargs", CASES[:1] + CASES[3:])
def test_radius_covers_receptive_field(name, channels, kwargs):
    """The gradient of one output pixel is zero beyond ``radius`` (float64, random weights)."""
    model = _model(name, channels, kwargs).double()
    radius = model.tile_spec().radius
    size = 2 * radius + 17
    y = torch.rand(1, channels, size, size, dtype=torch.float64, requires_grad=True)
    c = size // 2 + 1
    # every per-pixel part is local (a stage-1 model's image-wide averages come after, in assemble)
    sum(part[0, ..., c, c].sum() for part in model.pixel_parts(y).values()).backward()
    rows, cols = torch.nonzero(y.grad[0].abs().sum(0)).unbind(1)
    reach = max((rows - c).abs().max().item(), (cols - c).abs().max().item())
    assert reach <= radius
    assert reach >= radius // 2  # the estimate is an upper bound, not a wild one


def test_parse_memory_and_tile_size():
    assert parse_memory("512M") == 512 << 20 and parse_memory("2G") == 2 << 30 and parse_memory("1.5GB") == 3 << 29
    assert parse_memory(1000) == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(ValueError):
            parse_memory(bad)
    spec = TileSpec(radius=10, align=8, bytes_per_pixel=4)
    core = tile_size(spec, 4 * 100**2)
    assert core % 8 == 0 and core + 20 <= 100
    assert tile_size(spec, 1) == 8  # never below one aligned block


def _square_area(h, w, spec, budget):
    """The summed window area of the largest square cores whose every window fits ``budget``."""
    from dbsn.tiling import _window_area, _windows

    def fits(core):
        return all((r1 - r0) * (c1 - c0) * spec.bytes_per_pixel <= budget
                   for r0, r1, _, _ in _windows(h, core, spec.radius, spec.align)
                   for c0, c1, _, _ in _windows(w, core, spec.radius, spec.align))

    core = spec.align
    while core + spec.align <= max(h, w) and fits(core + spec.align):
        core += spec.align
    return _window_area(h, core, spec) * _window_area(w, core, spec)


@pytest.mark.parametrize("h, w, radius, align, budget_side", [
    (512, 768, 126, 8, 388), (3000, 4000, 126, 8, 900), (97, 1001, 20, 1, 80), (64, 64, 5, 4, 30),
    (4096, 4096, 44, 1, 1500), (321, 481, 126, 8, 1200),
])
def test_tile_plans_stay_within_the_budget_and_cost_no_more_than_squares(h, w, radius, align, budget_side):
    from dbsn.tiling import _window_area, _windows, plan_tiles

    spec = TileSpec(radius=radius, align=align, bytes_per_pixel=100)
    budget = budget_side**2 * spec.bytes_per_pixel
    plan = plan_tiles(h, w, spec, budget)
    if h * w * spec.bytes_per_pixel <= budget:
        assert plan is None
        return
    core_h, core_w = plan
    assert core_h % align == 0 and core_w % align == 0
    for r0, r1, _, _ in _windows(h, core_h, radius, align):  # every window within the budget
        for c0, c1, _, _ in _windows(w, core_w, radius, align):
            assert (r1 - r0) * (c1 - c0) * spec.bytes_per_pixel <= budget
    assert _window_area(h, core_h, spec) * _window_area(w, core_w, spec) <= _square_area(h, w, spec, budget)


def test_a_wide_image_under_a_tight_budget_gets_wide_tiles():
    from dbsn.tiling import plan_tiles

    spec = TileSpec(radius=30, align=1, bytes_per_pixel=1)
    core_h, core_w = plan_tiles(100, 2000, spec, 160 * 1000)  # a strip a window high: one row of tiles
    assert core_h == 100 and core_w > core_h


def test_a_budget_too_small_for_the_context_says_which_would_do(caplog):
    from dbsn.tiling import plan_tiles

    spec = TileSpec(radius=50, align=1, bytes_per_pixel=10)
    plan = plan_tiles(1000, 1000, spec, 120**2 * 10)
    assert plan is not None and min(plan) < 100
    assert "--max-memory" in caplog.text and "twice the context" in caplog.text


def test_the_default_budget_is_a_quarter_of_the_available_memory(monkeypatch):
    from dbsn.tiling import default_max_memory

    monkeypatch.setattr("dbsn.tiling.available_memory", lambda: 8 << 30)
    assert default_max_memory() == 2 << 30 and parse_memory(None) == parse_memory("auto") == 2 << 30
    monkeypatch.setattr("dbsn.tiling.available_memory", lambda: 64 << 30)
    assert default_max_memory() == 8 << 30  # capped
    monkeypatch.setattr("dbsn.tiling.available_memory", lambda: 512 << 20)
    assert default_max_memory() == 256 << 20  # floored
    monkeypatch.setattr("dbsn.tiling.available_memory", lambda: None)
    assert default_max_memory() == 1 << 30
    assert Denoiser(_model("unet_small", 1, {}), device="cpu").max_memory == 1 << 30



def test_windows_are_capped_in_pixels_even_where_the_budget_holds_more():
    from dbsn.tiling import TileSpec, plan_tiles

    spec = TileSpec(radius=10, align=8, bytes_per_pixel=100)
    assert plan_tiles(400, 600, spec, 1 << 40) is None
    core_h, core_w = plan_tiles(400, 600, spec, 1 << 40, most_pixels=100_000)
    windows = (min(core_h, 400) + 20) * (min(core_w, 600) + 20)
    assert core_h % 8 == 0 and core_w % 8 == 0 and windows <= 100_000 + 0 and core_h * core_w < 400 * 600
    torch.manual_seed(0)
    model = dbsn.create_model("unet_small", widths=(4, 8, 8)).eval()
    y = torch.rand(1, 1, 70, 90)
    d = Denoiser(model, device="cpu", precision="fp32", max_memory="1T")
    whole = d.predict(y)["x_hat"]
    d.window_pixels = 3000  # forces several windows; the result stays that of one pass
    assert torch.allclose(d.predict(y)["x_hat"], whole, atol=1e-5)

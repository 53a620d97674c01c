import pytest
import torch

import dbsn
from dbsn.nn import haar_dwt, haar_iwt
from dbsn.train import load_model, save_weights

STUDENTS = dbsn.list_models(kind="student")
SMALL = {"mwcnn": dict(widths=(8, 12, 16), depth=2)}  # the paper size is too slow for every test case


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(17, 23), (1, 9), (8, 8)])
def test_students_keep_shape_on_any_size(name, channels, size):
    model = dbsn.create_model(name, in_channels=channels, **SMALL.get(name, {}))
    y = torch.rand(2, channels, *size)
    assert model(y)["x_hat"].shape == y.shape


@pytest.mark.parametrize("name", STUDENTS)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = dbsn.create_model(name, in_channels=3, **SMALL.get(name, {}))
    model(torch.rand(1, 3, 19, 21))["x_hat"].square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", STUDENTS)
def test_student_checkpoint_round_trip(name, tmp_path):
    model = dbsn.create_model(name, in_channels=1, **SMALL.get(name, {})).eval()
    save_weights(tmp_path / "s.safetensors", model)
    again = load_model(tmp_path / "s.safetensors")
    y = torch.rand(1, 1, 13, 15)
    with torch.no_grad():
        assert torch.equal(model(y)["x_hat"], again(y)["x_hat"])


def test_haar_is_orthonormal_and_invertible():
    x = torch.rand(2, 3, 8, 10, dtype=torch.float64)
    z = haar_dwt(x)
    assert z.shape == (2, 12, 4, 5)
    assert torch.allclose(haar_iwt(z), x)
    assert torch.allclose(z.square().sum(), x.square().sum())


def test_paper_mwcnn_size():
    params = sum(p.numel() for p in dbsn.create_model("mwcnn").parameters())
    assert 10e6 < params < 25e6


@pytest.mark.parametrize("h,w", [(13, 21), (9, 16), (8, 8), (1, 5), (3, 1), (1, 1)])
def test_padding_reflects_so_the_noise_stays_noise(h, w):
    # a repeated edge row is a strip of identical values the students never saw in training
    from dbsn.nn.students import _pad_to_multiple

    y = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    padded, size = _pad_to_multiple(y, 8)
    assert size == (h, w) and padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    assert torch.equal(padded[..., :h, :w], y)
    if h >= 8 and w >= 8:
        assert torch.equal(padded, torch.nn.functional.pad(y, (0, (-w) % 8, 0, (-h) % 8), mode="reflect"))
    else:  # too short to reflect: the edge is repeated, never an index outside the image
        assert torch.isin(padded, y).all()


class _Same(torch.nn.Module):
    """A 'denoiser' that returns its input: what the colour wrapper adds must then be nothing."""

    def forward(self, y):
        return {"x_hat": y}

    def tile_spec(self):
        from dbsn.tiling import TileSpec

        return TileSpec(radius=0)


def test_opponent_colour_round_trip_and_noise_statistics():
    from dbsn.nn.students import OpponentColour

    wrapper = OpponentColour(_Same())
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    assert torch.allclose(wrapper(x)["x_hat"], x.float().double(), atol=1e-6)
    # i.i.d. noise of std s on R, G, B: i.i.d. of std s / sqrt 3 on the scaled opponent channels
    s = 0.1
    z = s * torch.randn(3, 200_000, generator=torch.Generator().manual_seed(0))
    o = wrapper.opponent @ z / 3**0.5
    assert torch.allclose(torch.cov(o), torch.eye(3) * s**2 / 3, atol=2e-4)


def test_colour_transforms_and_the_image_reading_layer_stay_fp32_under_bf16():
    from dbsn.nn.students import OpponentColour

    # the opponent transform and its inverse: exact to fp32 rounding, where bf16 would be off by ~1e-3
    wrapper = OpponentColour(_Same())
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = wrapper(x)["x_hat"]
    assert out.dtype == torch.float32 and torch.allclose(out, x, atol=1e-6)
    # the first layer of each student reads the image in fp32: its output is the fp32 one exactly
    for name in STUDENTS:
        model = dbsn.create_model(name, in_channels=1, **SMALL.get(name, {})).eval()
        first = (model.down[0] if hasattr(model, "down") else model.inc)[0]
        seen = {}
        first.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
        with torch.no_grad():
            model(x[:, :1])
            ref = seen.pop("out")
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(x[:, :1])
        assert seen["out"].dtype == torch.float32 and torch.equal(seen["out"], ref), name


def test_auto_precision_is_bf16_only_for_students_on_native_bf16(monkeypatch):
    from dbsn import runtime
    from dbsn.denoiser import Denoiser

    student, stage1 = dbsn.create_model("unet_small"), dbsn.create_model("dbsn_tiny")
    for native in (True, False):
        monkeypatch.setattr(runtime, "fast_bf16", lambda device, native=native: native)
        assert Denoiser(student, device="cpu").precision == ("bf16" if native else "fp32")
        assert Denoiser(stage1, device="cpu").precision == "fp32"
        assert Denoiser(student, device="cpu", precision="fp32").precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        Denoiser(student, device="cpu", precision="half")


@pytest.mark.parametrize("name", STUDENTS)
def test_opponent_student_shapes_gradients_and_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = dbsn.create_model(name, in_channels=3, colour="opponent", **SMALL.get(name, {}))
    y = torch.rand(2, 3, 17, 23)
    assert model(y)["x_hat"].shape == y.shape
    model(torch.rand(1, 3, 19, 21))["x_hat"].square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    save_weights(tmp_path / "s.safetensors", model.eval())
    again = load_model(tmp_path / "s.safetensors")
    assert again.config["colour"] == "opponent"
    with torch.no_grad():
        assert torch.equal(model(y)["x_hat"], again(y)["x_hat"])


@pytest.mark.parametrize("name", STUDENTS)
def test_opponent_student_from_gray_equals_the_gray_student_per_channel(name, tmp_path):
    from dbsn.nn.students import OpponentColour
    from dbsn.train.init import init_weights

    torch.manual_seed(0)
    gray = dbsn.create_model(name, in_channels=1, **SMALL.get(name, {})).eval()
    save_weights(tmp_path / "gray.safetensors", gray)
    colour = dbsn.create_model(name, in_channels=3, colour="opponent", **SMALL.get(name, {})).eval()
    init_weights(colour, str(tmp_path / "gray.safetensors"))
    y = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        wrapper = OpponentColour(_Same())
        o = torch.einsum("ij,bjhw->bihw", wrapper.opponent, y) / 3**0.5 + wrapper.offset
        d = torch.cat([gray(o[:, i:i + 1])["x_hat"] for i in range(3)], dim=1)
        want = torch.einsum("ji,bjhw->bihw", wrapper.opponent, (d - wrapper.offset) * 3**0.5)
        assert torch.allclose(colour(y)["x_hat"], want, atol=1e-5)
    # a gray student of another size does not fit
    other = dbsn.create_model(name, in_channels=1, widths=(4, 8, 12), depth=1)
    save_weights(tmp_path / "other.safetensors", other)
    with pytest.raises(ValueError, match="fit|different"):
        init_weights(colour, str(tmp_path / "other.safetensors"))


def test_opponent_colour_is_for_three_channels():
    with pytest.raises(ValueError, match="3-channel"):
        dbsn.create_model("unet_small", in_channels=1, colour="opponent")
    with pytest.raises(ValueError, match="colour must be"):
        dbsn.create_model("unet_small", in_channels=3, colour="lab")


# growing an MWCNN student: (smaller, larger, a new weight and the part of it that must get gradients,
# configurations that must not grow into the larger one)
GROWTH = {
    "deeper": (dict(widths=(8, 12, 16), depth=2), dict(widths=(8, 12, 16), depth=4),
               ("down.1.6.weight", (slice(None),)),
               [dict(widths=(8, 12, 20), depth=2), dict(widths=(8, 12, 16), depth=1)]),
    # into an old channel from the new level-2 channels, weights that start at zero
    "wider": (dict(widths=(8, 12, 16), depth=2), dict(widths=(8, 16, 24), depth=2),
              ("down.2.2.weight", (slice(0, 16), slice(16, None))),
              [dict(widths=(8, 20, 12), depth=2), dict(widths=(8, 12, 16), depth=3)]),
    # attention added at the coarsest level: its output projection starts at zero
    "attention": (dict(widths=(8, 12, 16), depth=2), dict(widths=(8, 12, 16), depth=2, attention=2),
                  ("attend.proj.weight", (slice(None),)),
                  [dict(widths=(8, 12, 20), depth=2), dict(widths=(8, 12, 16), depth=3)]),
}


@pytest.mark.parametrize("colour", ["joint", "opponent"])
@pytest.mark.parametrize("growth", sorted(GROWTH))
def test_grown_mwcnn_computes_what_the_smaller_one_did_and_learns(growth, colour, tmp_path):
    from dbsn.train.init import init_weights

    small_kwargs, large_kwargs, (new_name, new_part), others = GROWTH[growth]
    channels = 3 if colour == "opponent" else 1
    torch.manual_seed(0)
    small = dbsn.create_model("mwcnn_small", in_channels=channels, colour=colour, **small_kwargs)
    for p in small.parameters():  # trained-looking weights: biases away from zero
        p.data.add_(0.05 * torch.randn_like(p))
    save_weights(tmp_path / "small.safetensors", small.eval())
    large = dbsn.create_model("mwcnn_small", in_channels=channels, colour=colour, **large_kwargs)
    init_weights(large, str(tmp_path / "small.safetensors"))
    y = torch.rand(2, channels, 20, 24)
    with torch.no_grad():
        assert torch.allclose(large.eval()(y)["x_hat"], small(y)["x_hat"], atol=1e-5)
    # the new weights are not stuck where they started: they get gradients
    large.train()
    ((large(y)["x_hat"] - y.flip(-1)) ** 2).mean().backward()
    new = [p for name, p in large.named_parameters() if name.endswith(new_name)]
    assert new and new[0].grad[new_part].abs().sum() > 0
    for kwargs in others:
        other = dbsn.create_model("mwcnn_small", in_channels=channels, colour=colour, **kwargs)
        save_weights(tmp_path / "other.safetensors", other)
        with pytest.raises(ValueError, match="--init"):
            init_weights(large, str(tmp_path / "other.safetensors"))



def test_int8_storage_keeps_each_weight_within_half_a_step_of_its_kernel_scale(tmp_path):
    from safetensors.torch import load_file

    from dbsn.hub import INT8_SCALE, read_checkpoint

    torch.manual_seed(0)
    model = dbsn.create_model("mwcnn", in_channels=3, **SMALL["mwcnn"]).eval()
    big = {k for k, v in model.state_dict().items() if v.ndim >= 2 and v.numel() >= 1000}
    weight = model.state_dict()[sorted(big)[0]]
    weight[0, 0].zero_()  # a kernel of zeros must come back as zeros, not NaN
    save_weights(tmp_path / "full.safetensors", model)
    save_weights(tmp_path / "int8.safetensors", model, int8_from=1000)

    raw = load_file(str(tmp_path / "int8.safetensors"))
    assert {k for k, v in raw.items() if v.dtype == torch.int8} == big
    assert (tmp_path / "int8.safetensors").stat().st_size < 0.4 * (tmp_path / "full.safetensors").stat().st_size
    state = read_checkpoint(tmp_path / "int8.safetensors")["model"]
    assert state.keys() == model.state_dict().keys()
    for key, w in model.state_dict().items():
        if key not in big:
            assert torch.equal(state[key], w), key
            continue
        scale = raw[key + INT8_SCALE].float()
        assert scale.shape == w.shape[:2]  # one scale per 3 x 3 kernel
        error = (state[key] - w).abs().flatten(2).amax(dim=-1)
        assert (error <= scale / 2 * 1.01 + 1e-7).all(), key
        assert state[key].isfinite().all() and not torch.equal(state[key], w)
    assert (state[sorted(big)[0]][0, 0] == 0).all()
    y = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        out, again = model(y)["x_hat"], load_model(tmp_path / "int8.safetensors")(y)["x_hat"]
    assert 0 < (out - again).abs().max() < 0.01


def test_attention_reaches_across_its_block_and_no_further():
    """By autograd: one output pixel reads pixels its convolutions alone do not reach, within the radius."""
    torch.manual_seed(0)
    plain = dbsn.create_model("mwcnn_small", widths=(8, 12, 16), depth=1).double()
    model = dbsn.create_model("mwcnn_small", widths=(8, 12, 16), depth=1, attention=4).double()
    model.load_unattended_state(plain.state_dict())
    torch.nn.init.normal_(model.attend.proj.weight, std=0.5)

    def reach(net):
        y = torch.rand(1, 1, 192, 192, dtype=torch.float64, requires_grad=True)
        net(y)["x_hat"][0, 0, 100, 100].backward()
        rows, cols = torch.nonzero(y.grad[0, 0]).unbind(1)
        return max((rows - 100).abs().max().item(), (cols - 100).abs().max().item())

    assert reach(plain) <= plain.tile_spec().radius < reach(model) <= model.tile_spec().radius
    assert model.tile_spec().align == 8 * 4  # blocks of 4 at 1/8 scale: the tiles cut where the blocks do

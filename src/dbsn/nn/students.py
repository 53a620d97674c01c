"""Ordinary (non-blind) denoisers for stage 2: the students that distillation trains.

Both predict the noise residual, ``x_hat = y - net(y)``, work for any channel count
and any image size (they pad internally to a multiple of their downsampling factor
and crop back), and return ``{"x_hat": ...}`` like the stage-1 model does.

A colour student comes in two forms (``colour``):

- ``"joint"``: one network reads and writes the three RGB channels together;
- ``"opponent"``: the image goes to an orthonormal opponent colour space (luminance
  and two colour differences, the transform CBM3D uses), and one gray network
  denoises each of the three channels, reading the luminance as a second input
  (:class:`OpponentColour`). It can start from a trained gray student
  (:meth:`OpponentColour.load_gray_state`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import autocast, full_precision
from ..tiling import TileSpec, pad_reflect
from .registry import register_model

# bytes of working memory per float of activation per pixel, as tiling budgets it: 10 is 1.7x the
# highest peak per pixel `benchmarks/memory.py` measured for the bundled students in one pass
# (gray, fp32, 256 x 256) and 2.7-20x the others (fp32 and bf16, 256 x 256 to 1024 x 1024);
# the earlier 16 was 2.7-10x every peak, and tiled photos needlessly; 11 since a clean-checkout
# test run saw the paper-size colour mwcnn (192 x 192, fp32) add 104 MB against the 101 that 10 declared
STUDENT_BYTES = 11


class Student(nn.Module):
    """What a student shares with the stage-1 model: the two calls through which tiling, the
    :class:`dbsn.Denoiser` and export run every model, whatever kind it is.

    ``pixel_parts(y, precision)`` gives the outputs that depend on each pixel's neighbourhood only,
    so tiles can compute them; ``assemble(y, parts, gamma)`` turns the stitched parts into the
    outputs (for a student, they are the outputs already; ``gamma`` is a stage-1 model's).
    """

    def pixel_parts(self, y: torch.Tensor, precision: str = "fp32") -> dict[str, torch.Tensor]:
        with autocast(precision, y.device):
            out = self(y)
        return {k: v.to(y.dtype) for k, v in out.items()}

    def assemble(self, y: torch.Tensor, parts: dict[str, torch.Tensor], gamma: float = 1.0) -> dict[str, torch.Tensor]:
        return dict(parts)


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D Haar transform: ``(B, C, H, W) -> (B, 4C, H/2, W/2)`` as ``[LL, LH, HL, HH]`` blocks."""
    b, c, h, w = x.shape
    q = F.pixel_unshuffle(x, 2).reshape(b, c, 4, h // 2, w // 2)  # the 2x2 neighbours a, b, c, d
    a, b_, c_, d = q.unbind(2)
    return 0.5 * torch.cat([a + b_ + c_ + d, -a - b_ + c_ + d, -a + b_ - c_ + d, a - b_ - c_ + d], dim=1)


def haar_iwt(z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_dwt`."""
    ll, lh, hl, hh = torch.chunk(z, 4, dim=1)
    a = ll - lh - hl + hh
    b = ll - lh + hl - hh
    c = ll + lh - hl - hh
    d = ll + lh + hl + hh
    n, ch, h, w = ll.shape
    return F.pixel_shuffle(0.5 * torch.stack([a, b, c, d], dim=2).reshape(n, ch * 4, h, w), 2)


def conv_relu(c_in: int, c_out: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _reading_the_image(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)`` with the first one, which reads the image, in fp32 under any autocast.

    In bf16 it would read the image rounded to 8 bits of mantissa; measured on 10 DIV2K
    validation crops, keeping it in fp32 brings the bundled students' bf16 loss from up to
    0.02 dB (gray) and 0.15 dB (colour, with the colour transforms in fp32 too) to under 0.01 dB
    at noise std 5 to 50, for a layer with an eighth of the inputs of the others.
    """
    first = layers[0]
    with full_precision(x):
        h = first(x.to(first.weight.dtype))
    return layers[1:](h)


def _pad_to_multiple(y: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom and right by reflection to a multiple of ``multiple``; also the original size.

    Repeating the edge row instead cost the bundled gray student 2.7 dB on BSD68 at
    sigma 50, spread over some 60 pixels from the bottom and right edges. Training
    patches are multiples already and never see the padding.
    """
    h, w = y.shape[-2:]
    return pad_reflect(y, (-h) % multiple, (-w) % multiple), (h, w)


class WindowAttention(nn.Module):
    """Self-attention among the pixels of each ``window`` x ``window`` block of a feature map, added to it.

    Each pixel attends to every pixel of its block, whatever their distance: at the coarsest level of
    an MWCNN, a block of 8 covers 64 x 64 image pixels, where a repeated structure (bricks, windows,
    fabric) shows the network other copies of what it denoises. The blocks tile the map from its
    top-left corner; past the bottom and right edges they are padded, and the padding takes no part.
    The norm is per pixel, so the output at a pixel depends on its block alone, and tiles that start
    on the blocks' grid compute it exactly. The output projection starts at zero, so the block starts
    as the identity.
    """

    def __init__(self, channels: int, window: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention needs channels divisible by its {heads} heads, got {channels}")
        self.window, self.heads = window, heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s, heads = self.window, self.heads
        ph, pw = (-h) % s, (-w) % s  # blocks past the bottom and right edges hold padding, left out of attention
        t = F.pad(self.norm(x.permute(0, 2, 3, 1)), (0, 0, 0, pw, 0, ph))  # (b, H, W, c)
        nh, nw = (h + ph) // s, (w + pw) // s
        t = t.reshape(b, nh, s, nw, s, c).transpose(2, 3).reshape(-1, s * s, c)  # one row per block
        mask = None
        if ph or pw:
            real = F.pad(x.new_ones(1, 1, h, w, dtype=torch.bool), (0, pw, 0, ph))[0, 0]
            mask = real.reshape(nh, s, nw, s).transpose(1, 2).reshape(1, nh * nw, 1, 1, s * s)
            mask = mask.expand(b, -1, -1, -1, -1).reshape(-1, 1, 1, s * s)
        q, k, v = self.qkv(t).reshape(-1, s * s, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(-1, s * s, c)
        out = self.proj(out).reshape(b, nh, nw, s, s, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, nh * s, nw * s)
        return x + out[..., :h, :w].to(x.dtype)


class MWCNN(Student):
    """Multi-level wavelet CNN (Liu et al. 2018): a U-Net whose down- and up-sampling are Haar DWT/IWT.

    Args:
        in_channels: image channels.
        widths: feature channels at each wavelet level (paper: 160, 256, 256).
        depth: 3x3 conv layers per level on each side (paper: 4).
        attention: with a block size (e.g. 8), self-attention within blocks of that many pixels of the
            coarsest level, between its two sides (:class:`WindowAttention`); 0: none (the paper's).
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (160, 256, 256), depth: int = 4,
                 attention: int = 0):
        super().__init__()
        widths = tuple(widths)
        self.in_channels, self.levels, self.widths, self.depth = in_channels, len(widths), widths, depth
        self.attention = attention
        self.attend = WindowAttention(widths[-1], attention) if attention else nn.Identity()
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        c_prev = in_channels
        for i, c in enumerate(widths):
            self.down.append(conv_relu(4 * c_prev, c, depth))
            up = conv_relu(c, c, depth - 1) if depth > 1 else nn.Identity()
            self.up.append(nn.Sequential(up, nn.Conv2d(c, 4 * c_prev, 3, padding=1),
                                         *([] if i == 0 else [nn.ReLU(inplace=True)])))
            c_prev = c

    def tile_spec(self) -> TileSpec:
        # level i works at scale s = 2^(i+1): 2 * depth 3x3 convs reach depth * 2s pixels, and the
        # Haar blocks of the DWT and the IWT reach s / 2 each
        radius = sum(2 ** (i + 1) * (2 * self.depth + 1) for i in range(self.levels))
        floats = sum(4 * w / 4 ** (i + 1) for i, w in enumerate(self.widths)) + 16 * self.in_channels
        if self.attention:  # a block of the coarsest level reaches its size times that level's scale
            coarse = 2**self.levels
            radius += self.attention * coarse
            # q, k, v and the output per pixel of that level, and each head's weights over its block
            floats += (4 * self.widths[-1] + 4 * self.attention**2) / coarse**2
        # tiles start on the grid of the attention blocks
        return TileSpec(radius=radius, align=2**self.levels * max(self.attention, 1),
                        bytes_per_pixel=int(STUDENT_BYTES * floats))


    def forward(self, y: torch.Tensor, **_) -> dict[str, torch.Tensor]:
        padded, (h, w) = _pad_to_multiple(y, 2**self.levels)
        skips, h_ = [], padded
        for i, down in enumerate(self.down):
            skips.append(h_)
            h_ = _reading_the_image(down, haar_dwt(h_)) if i == 0 else down(haar_dwt(h_))
        h_ = self.attend(h_)
        for up, skip in zip(reversed(self.up), reversed(skips)):
            h_ = haar_iwt(up(h_)) + (skip if skip is not padded else 0)
        return {"x_hat": y - h_[..., :h, :w]}

    def load_shallower_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start from an MWCNN of the same widths with fewer layers per level: the result equals it.

        Every run of 3x3 conv + ReLU gets its extra layers at its end, where the input has
        just left a ReLU and is non-negative; they start as the identity (centre tap 1, bias
        0), so the deeper network computes what the shallower one did and training makes
        use of the new layers from there. The shallower one needs at least 2 layers per
        level: with 1, its up path has no ReLU to follow.
        """
        own = self.state_dict()
        if "down.0.2.weight" not in state:
            raise ValueError("only an MWCNN with at least 2 layers per level can be grown deeper")
        misfit = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
        if misfit:
            raise ValueError(f"the shallower weights do not fit ({misfit[0]}): the widths must be the same")
        grown = dict(state)
        for key, target in own.items():
            if key in state:
                continue
            if key.endswith(".bias"):
                grown[key] = torch.zeros_like(target)
            else:  # (c, c, 3, 3)
                eye = torch.zeros_like(target)
                eye[torch.arange(target.shape[0]), torch.arange(target.shape[1]), 1, 1] = 1.0
                grown[key] = eye
        self.load_state_dict(grown)

    def load_unattended_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start from the same MWCNN without attention: the result equals it (the attention adds zero)."""
        own = {k for k in self.state_dict() if not k.startswith("attend.")}
        if set(state) != own:
            raise ValueError("the weights without attention do not fit: the widths and depth must be the same")
        missing, _ = self.load_state_dict(state, strict=False)
        assert all(k.startswith("attend.") for k in missing)

    def load_narrower_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start from an MWCNN of the same depth with fewer channels per level: the result equals it.

        Each layer keeps the old weights between old channels (the first channels of each
        level, and of each Haar band where a tensor holds four); a new output channel keeps
        this model's fresh initial weights, so it computes something from the start, and
        every weight from a new channel into an old one starts at zero. The old channels then
        compute what they did, the output is the narrower model's, and training brings the
        new channels in through the zero weights, whose gradients are not zero.
        """
        own = self.state_dict()
        if own.keys() != state.keys():
            raise ValueError("the narrower weights do not fit: the depth and the number of levels must be the same")
        old = [int(state[f"down.{i}.0.weight"].shape[0]) for i in range(self.levels)]
        if any(o > w for o, w in zip(old, self.widths)):
            raise ValueError(f"widths {tuple(old)} are not narrower than {self.widths}")

        def bands(c_old: int, c_new: int) -> torch.Tensor:  # haar_dwt's [LL, LH, HL, HH] blocks
            return torch.cat([k * c_new + torch.arange(c_old) for k in range(4)])

        maps = {}  # conv name -> (old output channels, old input channels) in this model
        for i in range(self.levels):
            c_prev, c_prev_old = (self.in_channels, self.in_channels) if i == 0 else (self.widths[i - 1], old[i - 1])
            level = torch.arange(old[i])
            down = [n for n, m in self.down[i].named_children() if isinstance(m, nn.Conv2d)]
            for j, name in enumerate(down):
                maps[f"down.{i}.{name}"] = (level, bands(c_prev_old, c_prev) if j == 0 else level)
            inner, last = self.up[i][0], "1"  # up[i]: (convs at this level's width, the conv into the bands)
            for name, m in inner.named_children():
                if isinstance(m, nn.Conv2d):
                    maps[f"up.{i}.0.{name}"] = (level, level)
            maps[f"up.{i}.{last}"] = (bands(c_prev_old, c_prev), level)
        grown = {}
        for name, (rows, cols) in maps.items():
            weight, bias = own[f"{name}.weight"].clone(), own[f"{name}.bias"].clone()
            src_w, src_b = state[f"{name}.weight"], state[f"{name}.bias"]
            if src_w.shape != (len(rows), len(cols), *weight.shape[2:]):
                raise ValueError(f"{name}: weights {tuple(src_w.shape)} do not fit {tuple(weight.shape)}")
            weight[rows] = 0.0
            weight[rows[:, None], cols[None, :]] = src_w.to(weight.dtype)
            bias[rows] = src_b.to(bias.dtype)
            grown[f"{name}.weight"], grown[f"{name}.bias"] = weight, bias
        self.load_state_dict(grown)


class UNetSmall(Student):
    """A light CPU student: a small U-Net with strided-conv down- and transposed-conv up-sampling.

    Most of its work runs at 1/4 and 1/16 of the pixels, so its cost per pixel is a small
    fraction of the D-BSN's, whose every layer runs at full resolution.
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128), depth: int = 2):
        super().__init__()
        widths = tuple(widths)
        self.in_channels, self.levels, self.widths, self.depth = in_channels, len(widths) - 1, widths, depth
        self.inc = conv_relu(in_channels, widths[0], depth)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 2, stride=2), nn.ReLU(inplace=True),
                          conv_relu(widths[i + 1], widths[i + 1], depth))
            for i in range(self.levels)
        )
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(self.levels))
        self.decs = nn.ModuleList(conv_relu(2 * widths[i], widths[i], depth) for i in range(self.levels))
        self.out = nn.Conv2d(widths[0], in_channels, 3, padding=1)

    def tile_spec(self) -> TileSpec:
        # at level i (scale 2^i): the stride-2 conv and the transposed conv reach 2^i each, the
        # depth convs of the encoder at level i + 1 reach depth * 2^(i+1), the decoder's depth * 2^i
        radius = self.depth + 1 + sum(2**i * (2 + 3 * self.depth) for i in range(self.levels))
        floats = sum(5 * w / 4**i for i, w in enumerate(self.widths)) + 4 * self.in_channels
        return TileSpec(radius=radius, align=2**self.levels, bytes_per_pixel=int(STUDENT_BYTES * floats))

    def forward(self, y: torch.Tensor, **_) -> dict[str, torch.Tensor]:
        padded, (h, w) = _pad_to_multiple(y, 2**self.levels)
        skips, f = [], _reading_the_image(self.inc, padded)
        for down in self.downs:
            skips.append(f)
            f = down(f)
        for i in reversed(range(self.levels)):
            f = self.decs[i](torch.cat([self.ups[i](f), skips[i]], dim=1))
        return {"x_hat": y - self.out(f)[..., :h, :w]}


def _opponent_matrix() -> torch.Tensor:
    """Rows: luminance ``(R+G+B)/sqrt 3`` and the differences ``(R-B)/sqrt 2``, ``(R-2G+B)/sqrt 6``."""
    r2, r3, r6 = math.sqrt(2), math.sqrt(3), math.sqrt(6)
    return torch.tensor([[1 / r3, 1 / r3, 1 / r3], [1 / r2, 0.0, -1 / r2], [1 / r6, -2 / r6, 1 / r6]])


class OpponentColour(Student):
    """A colour denoiser made of one gray network applied in an opponent colour space.

    The transform is orthonormal, so i.i.d. noise of std ``s`` on R, G and B stays i.i.d.
    with std ``s`` on the three opponent channels. Each channel is divided by ``sqrt 3``
    (the luminance becomes the mean of R, G and B, in [0, 1]; the differences get an offset
    of 0.5 to sit inside it): the noise std becomes ``s / sqrt 3``. The network, built for
    two input channels, denoises each channel with the luminance beside it as a guide (for
    the luminance itself, the guide is a copy). The three run one after the other: as one
    batch they measured 1.25 times slower on a 2-core CPU (a working set three times the size)
    and needed three times the memory. The colour transforms run in fp32 under any autocast.

    Args:
        net: a student built with ``in_channels=2``; only its first output channel is used.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.in_channels = 3
        self.register_buffer("opponent", _opponent_matrix(), persistent=False)
        self.register_buffer("offset", torch.tensor([0.0, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def tile_spec(self) -> TileSpec:
        inner = self.net.tile_spec()
        # one pass at a time, the three channels and the output held besides
        return TileSpec(radius=inner.radius, align=inner.align, bytes_per_pixel=inner.bytes_per_pixel + 6 * 4 * 3)

    def forward(self, y: torch.Tensor, **_) -> dict[str, torch.Tensor]:
        if y.shape[1] != 3:
            raise ValueError(f"an opponent-colour student takes 3 channels, got {y.shape[1]}")
        dtype = torch.promote_types(y.dtype, self.opponent.dtype)  # fp32 at least
        m, offset = self.opponent.to(dtype), self.offset.to(dtype)
        with full_precision(y):
            o = F.conv2d(y.to(dtype), m[:, :, None, None] / math.sqrt(3)) + offset
        guide = o[:, :1]
        d = torch.cat([self.net(torch.cat([o[:, k:k + 1], guide], dim=1))["x_hat"][:, :1].to(dtype)
                       for k in range(3)], dim=1)
        with full_precision(d):
            return {"x_hat": F.conv2d(d - offset, m.T[:, :, None, None] * math.sqrt(3))}

    def load_gray_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a gray student of the same architecture: the result equals it on each channel.

        Every tensor whose channel count here is twice the gray one (the first layer's inputs,
        the last layer's outputs) interleaves as ``[gray, guide]`` per channel block, the order
        of :func:`haar_dwt`'s bands; the gray weights go to the first of each pair and zeros to
        the guide's, so the guide starts unused and training decides what it is worth.
        """
        own = self.net.state_dict()
        if own.keys() != state.keys():
            raise ValueError("the gray weights are of a different architecture")
        grown = {}
        for key, target in own.items():
            src = state[key]
            if src.shape == target.shape:
                grown[key] = src
                continue
            dims = [i for i, (a, b) in enumerate(zip(src.shape, target.shape)) if a != b]
            if src.dim() != target.dim() or len(dims) != 1 or target.shape[dims[0]] != 2 * src.shape[dims[0]]:
                raise ValueError(f"{key}: gray weights {tuple(src.shape)} do not fit {tuple(target.shape)}")
            out = torch.zeros_like(target)
            index = [slice(None)] * target.dim()
            index[dims[0]] = slice(0, None, 2)
            out[tuple(index)] = src.to(target.dtype)
            grown[key] = out
        self.net.load_state_dict(grown)

    def _grow(self, method: str, how: str, state: dict[str, torch.Tensor]) -> None:
        if not hasattr(self.net, method):
            raise ValueError(f"a {type(self.net).__name__} cannot be grown {how}")
        getattr(self.net, method)({k.removeprefix("net."): v for k, v in state.items()})

    def load_shallower_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start from an opponent-colour student whose gray network is shallower (see :class:`MWCNN`)."""
        self._grow("load_shallower_state", "deeper", state)

    def load_narrower_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start from an opponent-colour student whose gray network is narrower (see :class:`MWCNN`)."""
        self._grow("load_narrower_state", "wider", state)

    def load_unattended_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start from an opponent-colour student whose gray network has no attention (see :class:`MWCNN`)."""
        self._grow("load_unattended_state", "with attention", state)


COLOURS = ("joint", "opponent")


def _build(cls, in_channels: int = 1, colour: str = "joint", **kwargs) -> nn.Module:
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {COLOURS}, got {colour!r}")
    if colour == "joint":
        return cls(in_channels=in_channels, **kwargs)
    if in_channels != 3:
        raise ValueError(f"an opponent-colour student is for 3-channel images, not {in_channels}")
    return OpponentColour(cls(in_channels=2, **kwargs))


@register_model("mwcnn", kind="student", widths=(160, 256, 256), depth=4, colour="joint")
def mwcnn(**kwargs) -> nn.Module:
    """The paper's student: MWCNN with three Haar levels."""
    return _build(MWCNN, **kwargs)


@register_model("mwcnn_small", kind="student", widths=(32, 64, 128), depth=2, colour="joint")
def mwcnn_small(**kwargs) -> nn.Module:
    """A CPU-sized MWCNN."""
    return _build(MWCNN, **kwargs)


@register_model("unet_small", kind="student", widths=(32, 64, 128), depth=2, colour="joint")
def unet_small(**kwargs) -> nn.Module:
    """The light CPU student."""
    return _build(UNetSmall, **kwargs)

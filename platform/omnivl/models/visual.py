"""Unified visual encoder (paper §3.1): a ViT whose blocks do TimeSformer-style divided attention.

Legend: B batch, T frames (after the tubelet), N patches per frame, S tokens, D width, C channels, H/W pixels.

Parameter names of the spatial path match timm's `VisionTransformer` (`patch_embed.proj`, `cls_token`,
`pos_embed`, `blocks.i.{norm1,attn,norm2,mlp}`, `norm`), so a timm checkpoint loads key for key. Video-only
parameters (`patch_embed3d`, `time_embed`, `blocks.i.temporal_*`) are the only weights images never touch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from omnivl.models.sizes import VisualArch


@dataclass
class VisualOutput:
    """`pooled_BD`: the visual representation, pooled as `VisualArch.pool` says (the final [CLS] token, or the
    channel-wise maximum over the patch tokens); `tokens_BSD`: that representation, then every patch token
    (frame-major for videos), all after the final LayerNorm. The decoders cross-attend to `tokens_BSD`, and a
    generation decoder with a visual prefix reads its token 0."""

    pooled_BD: torch.Tensor
    tokens_BSD: torch.Tensor
    is_video: bool = False


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's layout)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        B, S, D = x_BSD.shape
        qkv = self.qkv(x_BSD).reshape(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(B, S, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DividedBlock(nn.Module):
    """Temporal attention (per patch position, across frames), then spatial attention (per frame, with the
    [CLS] token), then MLP. With one frame and `temporal=False` this is exactly a timm ViT block."""

    def __init__(self, arch: VisualArch) -> None:
        super().__init__()
        self.temporal_norm = nn.LayerNorm(arch.width, eps=arch.eps)
        self.temporal_attn = Attention(arch.width, arch.heads)
        self.norm1 = nn.LayerNorm(arch.width, eps=arch.eps)
        self.attn = Attention(arch.width, arch.heads)
        self.norm2 = nn.LayerNorm(arch.width, eps=arch.eps)
        self.mlp = Mlp(arch.width, arch.mlp_dim)

    def forward(self, cls_B1D: torch.Tensor, patches_BTND: torch.Tensor, temporal: bool):
        if temporal:
            patches_BTND = patches_BTND + self._temporal(patches_BTND)
        cls_B1D, patches_BTND = self._spatial(cls_B1D, patches_BTND)
        cls_B1D = cls_B1D + self.mlp(self.norm2(cls_B1D))
        patches_BTND = patches_BTND + self.mlp(self.norm2(patches_BTND))
        return cls_B1D, patches_BTND

    def _temporal(self, patches_BTND: torch.Tensor) -> torch.Tensor:
        B, T, N, D = patches_BTND.shape
        x_bTD = patches_BTND.permute(0, 2, 1, 3).reshape(B * N, T, D)
        h_bTD = self.temporal_attn(self.temporal_norm(x_bTD))
        return h_bTD.reshape(B, N, T, D).permute(0, 2, 1, 3)

    def _spatial(self, cls_B1D: torch.Tensor, patches_BTND: torch.Tensor):
        B, T, N, D = patches_BTND.shape
        # Each frame attends with its own copy of [CLS]; the copies are averaged back (TimeSformer), so a video
        # of identical frames yields the image's [CLS].
        x_BTSD = torch.cat([cls_B1D[:, None].expand(B, T, 1, D), patches_BTND], dim=2)
        x_bSD = x_BTSD.reshape(B * T, N + 1, D)
        x_bSD = x_bSD + self.attn(self.norm1(x_bSD))
        x_BTSD = x_bSD.reshape(B, T, N + 1, D)
        return x_BTSD[:, :, :1].mean(dim=1), x_BTSD[:, :, 1:]


STEM_STRIDE = 4  # the conv stem: a stride-1 convolution, then two stride-2 ones
STEM_CHANNELS = (16, 32)  # channels of the stem's first two convolutions (the third gives width // 2)


class ConvStem(nn.Module):
    """Three 3x3 convolutions, each with batch norm and GELU, run on each frame before the patch projection: the
    first at full resolution, then two of stride 2, so a token is made from local edge and corner features rather
    than a linear map of raw pixels ("early convolutions", Xiao et al. 2021). An aid for training from random
    weights on small objects: a shape a few pixels across, anywhere in a 16-pixel patch, is no linear function of
    the patch's pixels, and a stride-2 first layer already blurs it (the shape warm-up on `small-objects`: 45 %
    held out with the full-resolution layer, 38 % without). Batch norm makes the warm-up independent of the
    initialization: without it one of the two initializations measured stayed near chance for 800 steps (38 % held
    out; with it 70 %, docs/robustness.md). The token count is unchanged."""

    def __init__(self, arch: VisualArch) -> None:
        super().__init__()
        if arch.patch % STEM_STRIDE:
            raise ValueError(f"model.patch {arch.patch} is not a multiple of the conv stem's stride {STEM_STRIDE}")
        first, second = STEM_CHANNELS
        self.out_channels = arch.width // 2
        self.convs = nn.ModuleList([
            nn.Conv2d(3, first, kernel_size=3, stride=1, padding=1),
            nn.Conv2d(first, second, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(second, self.out_channels, kernel_size=3, stride=2, padding=1),
        ])
        self.norms = nn.ModuleList([nn.BatchNorm2d(c) for c in (first, second, self.out_channels)])
        self.act = nn.GELU()
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        x = pixels_BCHW
        for conv, norm in zip(self.convs, self.norms):
            x = self.act(norm(conv(x)))
        return x


class PatchEmbed2d(nn.Module):
    def __init__(self, arch: VisualArch, in_channels: int = 3, stride: int = 1) -> None:
        super().__init__()
        k = arch.patch // stride
        self.proj = nn.Conv2d(in_channels, arch.width, kernel_size=k, stride=k)

    def forward(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        x_BDhw = self.proj(images_BCHW)
        return x_BDhw.flatten(2).transpose(1, 2)[:, None]  # [B, 1, N, D]


class PatchEmbed3d(nn.Module):
    def __init__(self, arch: VisualArch, in_channels: int = 3, stride: int = 1) -> None:
        super().__init__()
        k = (arch.tubelet, arch.patch // stride, arch.patch // stride)
        self.proj = nn.Conv3d(in_channels, arch.width, kernel_size=k, stride=k)

    def forward(self, videos_BTCHW: torch.Tensor) -> torch.Tensor:
        x_BDThw = self.proj(videos_BTCHW.transpose(1, 2))
        return x_BDThw.flatten(3).permute(0, 2, 3, 1)  # [B, T, N, D]


class VisualEncoder(nn.Module):
    """Images `[B,3,H,W]` or videos `[B,T,3,H,W]`, float and already normalized (ImageNet mean/std).

    Temporal attention is skipped for images. Sizes other than the configured ones are accepted: the spatial
    position grid is resized bicubically and the temporal embedding linearly. `T` must be a multiple of the
    tubelet depth (ValueError otherwise)."""

    def __init__(self, arch: VisualArch) -> None:
        super().__init__()
        self.arch = arch
        self.grid = arch.image_size // arch.patch
        # The stem (when `arch.stem` is "conv") is shared by images and videos: it runs on every frame.
        self.stem = ConvStem(arch) if arch.stem == "conv" else None
        stem_out = (self.stem.out_channels, STEM_STRIDE) if self.stem is not None else (3, 1)
        self.patch_embed = PatchEmbed2d(arch, *stem_out)
        self.patch_embed3d = PatchEmbed3d(arch, *stem_out)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, arch.width))
        self.time_embed = nn.Parameter(torch.zeros(1, max(arch.num_frames // arch.tubelet, 1), arch.width))
        self.blocks = nn.ModuleList(DividedBlock(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(arch.width, eps=arch.eps)
        self.reset_parameters()

    @property
    def width(self) -> int:
        return self.arch.width

    def reset_parameters(self) -> None:
        """Random init (timm's ViT scheme), then the video path derived so it starts as the image path."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.init_temporal_from_spatial()

    @torch.no_grad()
    def init_temporal_from_spatial(self) -> list[str]:
        """Derive the video-only weights from the (possibly just loaded) image weights so a video of identical
        frames encodes exactly like the image: inflated 3D tokenizer (mean over the tubelet plus a random
        zero-sum temporal part), zero temporal embedding, temporal attention copied from spatial attention with a
        zero output projection (TimeSformer's init). Returns the keys set."""
        t = self.arch.tubelet
        w2d = self.patch_embed.proj.weight
        # Mean inflation alone makes the whole video path invariant to reversing time (temporal attention is
        # permutation-equivariant and the time embedding starts at zero), so "moving left" and "moving right"
        # encode identically and no loss gradient can tell them apart. A random temporal component that sums to
        # zero over the tubelet breaks that symmetry and leaves identical frames encoding like the image.
        motion = torch.randn_like(self.patch_embed3d.proj.weight) * w2d.std()
        motion -= motion.mean(dim=2, keepdim=True)
        self.patch_embed3d.proj.weight.copy_(w2d[:, :, None].expand(-1, -1, t, -1, -1) / t + motion)
        self.patch_embed3d.proj.bias.copy_(self.patch_embed.proj.bias)
        self.time_embed.zero_()
        for blk in self.blocks:
            blk.temporal_norm.load_state_dict(blk.norm1.state_dict())
            blk.temporal_attn.qkv.load_state_dict(blk.attn.qkv.state_dict())
            nn.init.zeros_(blk.temporal_attn.proj.weight)
            nn.init.zeros_(blk.temporal_attn.proj.bias)
        return [k for k in self.state_dict() if _is_video_only(k)]

    def forward(self, pixels: torch.Tensor) -> VisualOutput:
        is_video = pixels.dim() == 5
        patches_BTND = self._tokenize(pixels, is_video)
        cls_B1D = (self.cls_token + self.pos_embed[:, :1]).expand(patches_BTND.shape[0], -1, -1)
        for blk in self.blocks:
            if self.arch.grad_checkpointing and self.training:
                cls_B1D, patches_BTND = checkpoint(blk, cls_B1D, patches_BTND, is_video, use_reentrant=False)
            else:
                cls_B1D, patches_BTND = blk(cls_B1D, patches_BTND, is_video)
        tokens_BSD = self.norm(torch.cat([cls_B1D, patches_BTND.flatten(1, 2)], dim=1))
        if self.arch.pool == "cls":
            return VisualOutput(pooled_BD=tokens_BSD[:, 0], tokens_BSD=tokens_BSD, is_video=is_video)
        pooled_BD = tokens_BSD[:, 1:].amax(dim=1)
        tokens_BSD = torch.cat([pooled_BD[:, None], tokens_BSD[:, 1:]], dim=1)
        return VisualOutput(pooled_BD=pooled_BD, tokens_BSD=tokens_BSD, is_video=is_video)

    def _tokenize(self, pixels: torch.Tensor, is_video: bool) -> torch.Tensor:
        if pixels.dim() not in (4, 5) or pixels.shape[-3] != 3:
            raise ValueError(f"expected [B,3,H,W] or [B,T,3,H,W] pixels, got {tuple(pixels.shape)}")
        if is_video and pixels.shape[1] % self.arch.tubelet:
            raise ValueError(f"{pixels.shape[1]} frames is not a multiple of the tubelet depth {self.arch.tubelet}")
        x = pixels
        if self.stem is not None:
            x = self.stem(pixels.flatten(0, 1)).unflatten(0, pixels.shape[:2]) if is_video else self.stem(pixels)
        patches_BTND = self.patch_embed3d(x) if is_video else self.patch_embed(x)
        grid_hw = (pixels.shape[-2] // self.arch.patch, pixels.shape[-1] // self.arch.patch)
        patches_BTND = patches_BTND + self._spatial_pos(grid_hw)[:, None]
        if is_video:
            patches_BTND = patches_BTND + self._time_pos(patches_BTND.shape[1])[:, :, None]
        return patches_BTND

    def _spatial_pos(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        pos_1ND = self.pos_embed[:, 1:]
        if grid_hw == (self.grid, self.grid):
            return pos_1ND
        return resize_pos_grid(pos_1ND, (self.grid, self.grid), grid_hw)

    def _time_pos(self, frames: int) -> torch.Tensor:
        if frames == self.time_embed.shape[1]:
            return self.time_embed
        t_1DT = F.interpolate(self.time_embed.transpose(1, 2), size=frames, mode="linear", align_corners=False)
        return t_1DT.transpose(1, 2)

    def temporal_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The video-only parameters (what stage 2 adds to an image-trained encoder)."""
        return [(n, p) for n, p in self.named_parameters() if _is_video_only(n)]


def resize_pos_grid(pos_1ND: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample a row-major grid of position embeddings (as timm does for new resolutions)."""
    D = pos_1ND.shape[-1]
    grid_1Dhw = pos_1ND.reshape(1, old_hw[0], old_hw[1], D).permute(0, 3, 1, 2)
    grid_1Dhw = F.interpolate(grid_1Dhw.float(), size=new_hw, mode="bicubic", antialias=True, align_corners=False)
    return grid_1Dhw.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], D).to(pos_1ND.dtype)


def _is_video_only(name: str) -> bool:
    return name.startswith(("patch_embed3d.", "time_embed")) or ".temporal_" in name

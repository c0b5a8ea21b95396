"""Label-keeping augmentation of image batches on the training worker (`stages[].augment`), in plain PyTorch.

Pixels stay uint8 `[B,3,H,W]`: a mirror image is a flip of the last axis, a shift is a gather with clamped
indices (the edge rows and columns repeat into the gap, so no black border tells the model where the image was
moved). Draws come from torch's default generator, which checkpoints save and restore per rank
(`omnivl.train.rng`), so a resumed stage draws what the uninterrupted one would have.
"""

from __future__ import annotations

import torch

from omnivl.train.config import ImageAugment


def augment_images(pixels_BCHW: torch.Tensor, cfg: ImageAugment) -> torch.Tensor:
    """A new batch: each image mirrored left-right with probability 1/2 (`cfg.hflip`) and shifted by whole
    pixels, up to `cfg.max_shift` of its side in x and in y."""
    B, _, H, W = pixels_BCHW.shape
    out = pixels_BCHW
    if cfg.hflip:
        flip_B = (torch.rand(B) < 0.5).to(out.device)
        out = torch.where(flip_B[:, None, None, None], out.flip(-1), out)
    max_dy, max_dx = int(cfg.max_shift * H), int(cfg.max_shift * W)
    if max_dy == 0 and max_dx == 0:
        return out
    dy_B = torch.randint(-max_dy, max_dy + 1, (B,))
    dx_B = torch.randint(-max_dx, max_dx + 1, (B,))
    rows_BH = (torch.arange(H)[None, :] - dy_B[:, None]).clamp(0, H - 1)
    cols_BW = (torch.arange(W)[None, :] - dx_B[:, None]).clamp(0, W - 1)
    rows = rows_BH.to(out.device)[:, None, :, None].expand(B, out.shape[1], H, W)
    out = out.gather(2, rows)
    cols = cols_BW.to(out.device)[:, None, None, :].expand(B, out.shape[1], H, W)
    return out.gather(3, cols)

"""Image decoding and transforms: bytes -> RGB -> fixed-size uint8 `[3, S, S]`.

Legend: HWC = height, width, channels (what PIL and decoders give); CHW = what the model takes.
Every function is pure given its `rng` (a numpy Generator), so a seed fixes the output.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from omnivl.data import badinput as bad

RESAMPLE = Image.BICUBIC
BACKGROUND = (255, 255, 255)  # what transparent pixels become: their stored colour is often garbage


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """A lazily-opened PIL image whose size is within `max_pixels`. Raises BadInput for unidentifiable data
    and decompression bombs (checked from the header, before any pixel is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise bad.BadInput(bad.DECOMPRESSION_BOMB, str(exc)[:120]) from None
    except UnidentifiedImageError:
        raise bad.BadInput(bad.IMAGE_CORRUPT, "not an image PIL can identify") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _failure(exc) from None
    w, h = img.size
    if w * h > max_pixels or w <= 0 or h <= 0:
        raise bad.BadInput(bad.DECOMPRESSION_BOMB, f"{w}x{h} > {max_pixels} pixels")
    return img


def decode_image(data: bytes, max_pixels: int = 64_000_000, draft_size: int | None = None) -> tuple[np.ndarray, bool]:
    """Bytes -> (RGB uint8 HWC array, whether the mode had to be converted). `draft_size` lets JPEG decode at
    a reduced scale that is still >= draft_size on each side (much faster for big photos).
    Raises BadInput(image_truncated | image_corrupt | ...)."""
    img = open_image(data, max_pixels)
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _failure(exc) from None
    converted = img.mode != "RGB"
    return to_rgb(img), converted


def _failure(exc: Exception) -> bad.BadInput:
    """PIL reports a cut-off file as an OSError mentioning truncation; anything else is corrupt data."""
    reason = bad.IMAGE_TRUNCATED if "truncated" in str(exc).lower() else bad.IMAGE_CORRUPT
    return bad.BadInput(reason, str(exc)[:120])


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> RGB uint8 HWC. 16/32-bit and float greyscale are rescaled (PIL's own convert clips
    them to 255, turning most photos white); alpha is composited over white; CMYK/YCbCr/LAB/palette convert."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(np.asarray(img))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        img = Image.alpha_composite(canvas, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _high_depth_to_rgb(a: np.ndarray) -> np.ndarray:
    """Greyscale of more than 8 bits -> RGB uint8. Floats in [0, 1] scale by 255; integers by their range
    (16-bit if any value is above 255, else already 8-bit values stored wide)."""
    is_unit_float = a.dtype.kind == "f" and a.size and 0.0 <= a.min() and a.max() <= 1.0
    a = a.astype(np.float64)
    if is_unit_float:
        scaled = a * 255.0
    else:
        top = 65535.0 if a.size and a.max() > 255 else 255.0
        scaled = np.clip(a, 0, top) * (255.0 / top)
    grey = np.round(scaled).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


# --- Geometry ---------------------------------------------------------------------------------------------

def random_resized_crop_box(h: int, w: int, rng: np.random.Generator, scale=(0.5, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop covering a random `scale` fraction of the area with a random
    aspect ratio (log-uniform), as torchvision's RandomResizedCrop; falls back to the central square."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def center_square_box(h: int, w: int) -> tuple[int, int, int, int]:
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def crop_resize(img_HWC: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop `box` (top, left, height, width) and resize it to size x size (uint8 HWC)."""
    top, left, ch, cw = box
    patch = Image.fromarray(img_HWC[top:top + ch, left:left + cw])
    if patch.size != (size, size):
        patch = patch.resize((size, size), RESAMPLE, reducing_gap=2.0)
    return np.asarray(patch, dtype=np.uint8)


def resize_short_side(img_HWC: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size`, keeping the aspect ratio (eval-time resize)."""
    h, w = img_HWC.shape[:2]
    if min(h, w) == size:
        return img_HWC
    nh, nw = (size, max(size, round(w * size / h))) if h <= w else (max(size, round(h * size / w)), size)
    return np.asarray(Image.fromarray(img_HWC).resize((nw, nh), RESAMPLE, reducing_gap=2.0), dtype=np.uint8)


def hwc_to_chw(img_HWC: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img_HWC.transpose(2, 0, 1))


# --- RandAugment ------------------------------------------------------------------------------------------
# Only operations that keep colours: captions name colours ("a red circle"), so colour jitter, solarize,
# posterize, equalize and invert would teach the model wrong pairs. Geometry is kept small for the same
# reason with positions ("at the top left").

def _shear(img, m, axis):
    s = 0.3 * m
    data = (1, s, 0, 0, 1, 0) if axis == "x" else (1, 0, 0, s, 1, 0)
    return img.transform(img.size, Image.AFFINE, data, RESAMPLE, fillcolor=(128, 128, 128))


def _translate(img, m, axis):
    d = 0.1 * m * (img.size[0] if axis == "x" else img.size[1])
    data = (1, 0, d, 0, 1, 0) if axis == "x" else (1, 0, 0, 0, 1, d)
    return img.transform(img.size, Image.AFFINE, data, RESAMPLE, fillcolor=(128, 128, 128))


def _enhance(kind):
    from PIL import ImageEnhance

    return lambda img, m: getattr(ImageEnhance, kind)(img).enhance(1.0 + 0.9 * m)


RANDAUG_OPS = {
    "identity": lambda img, m: img,
    "autocontrast": lambda img, m: ImageOps.autocontrast(img),
    "brightness": _enhance("Brightness"),
    "sharpness": _enhance("Sharpness"),
    "contrast": _enhance("Contrast"),
    "shear_x": lambda img, m: _shear(img, m, "x"),
    "shear_y": lambda img, m: _shear(img, m, "y"),
    "translate_x": lambda img, m: _translate(img, m, "x"),
    "translate_y": lambda img, m: _translate(img, m, "y"),
    "rotate": lambda img, m: img.rotate(30 * m, RESAMPLE, fillcolor=(128, 128, 128)),
}


def randaugment(img_HWC: np.ndarray, rng: np.random.Generator, n: int = 2, magnitude: int = 5) -> np.ndarray:
    """Apply `n` random operations at `magnitude`/10 strength with a random sign (RandAugment, Cubuk 2019)."""
    img = Image.fromarray(img_HWC)
    names = list(RANDAUG_OPS)
    for i in rng.choice(len(names), size=n):
        m = magnitude / 10.0 * (1 if rng.random() < 0.5 else -1)
        img = RANDAUG_OPS[names[i]](img, m)
    return np.asarray(img, dtype=np.uint8)


# --- The two pipelines ------------------------------------------------------------------------------------

def train_image(img_HWC: np.ndarray, size: int, rng: np.random.Generator, crop_scale_min: float = 0.5,
                flip: bool = False, augment: bool = True) -> np.ndarray:
    """Random resized crop, optional horizontal flip (the caller decided it, to swap left/right in the
    text too), optional RandAugment -> uint8 CHW [3, size, size]."""
    box = random_resized_crop_box(*img_HWC.shape[:2], rng, scale=(crop_scale_min, 1.0))
    out = crop_resize(img_HWC, box, size)
    if flip:
        out = out[:, ::-1]
    if augment:
        out = randaugment(np.ascontiguousarray(out), rng)
    return hwc_to_chw(out)


def eval_image(img_HWC: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to `size`, center crop -> uint8 CHW [3, size, size]."""
    img = resize_short_side(img_HWC, size)
    return hwc_to_chw(crop_resize(img, center_square_box(*img.shape[:2]), size))

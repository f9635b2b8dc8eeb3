"""MNIST preprocessing: the bottom floor every stage shares, torch-free.

The Python twin of `examples/web/mnist-preprocess.mjs`: the notebook's normalization, and any PNG/JPEG
turned into the 28x28 uint8 digit (white on black) that the models take. Only numpy and Pillow.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from toolkit import fileio
from toolkit.errors import ImageError

MEAN, STD = 0.1307, 0.3081  # the notebook's normalization
BACKGROUND = (0.0 - MEAN) / STD  # a black pixel, normalized
SIDE = 28  # images are SIDE x SIDE
MAX_IMAGE_PIXELS = 40_000_000  # refuse larger images before decoding them (a decompression bomb guard)
IMAGE_FORMATS = ("PNG", "JPEG")


def normalize(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] as (pixel / 255 - mean) / std: the normalized models' input."""
    x = np.asarray(pixels).astype(np.float32)  # a new array, so the rest is done in place: on a whole data
    x /= 255.0  # set, fresh temporaries for each step cost more than the arithmetic
    x -= mean
    x /= std
    return x[:, None]


def load_image(path: str | os.PathLike, invert: bool | None = None) -> np.ndarray:
    """Read a PNG/JPEG of any size and colour as a 28x28 uint8 MNIST-style digit (white on black).

    `invert=None` detects a dark digit on a light background from the image border and inverts it. Images
    that are not already 28x28 are fitted like MNIST: the digit's bounding box scaled to 20x20, centred
    by its centre of mass.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path} {fileio.absent(path)}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file, not an image")
    try:
        # PNG and JPEG only: Pillow would otherwise hand EPS/PDF files to Ghostscript; our own size check below
        # replaces Pillow's bomb warning (a second stderr line)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=IMAGE_FORMATS)
        with img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageError(f"{path}: {img.width}x{img.height} is too large "
                                 f"(limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)")
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit gray: convert("L") or "RGBA" would clip
                values = np.asarray(img, dtype=np.float64)
                gray = np.rint(np.clip(values, 0, 65535) / 257).astype(np.uint8)
                if "transparency" in img.info:  # one transparent gray value: white shows through, as below
                    gray[values == img.info["transparency"]] = 255
            elif img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                gray = np.asarray(Image.alpha_composite(background, rgba).convert("L"), dtype=np.uint8)
            else:
                gray = np.asarray(img.convert("L"), dtype=np.uint8)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: not a readable image ({e}; PNG or JPEG only)") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or malformed files
        raise ImageError(f"{path}: cannot decode image ({e})") from None
    if invert is None:
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        invert = float(border.mean()) > 127
    if invert:
        gray = 255 - gray
    if gray.shape == (28, 28):
        return gray
    return _fit_like_mnist(gray)


def _fit_like_mnist(gray: np.ndarray) -> np.ndarray:
    from PIL import Image

    ys, xs = np.nonzero(gray > 0.2 * gray.max()) if gray.max() > 0 else ([], [])
    if len(ys) == 0:
        return np.zeros((28, 28), np.uint8)
    crop = gray[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    digit = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    total = digit.sum()
    cy, cx = ((np.indices(digit.shape) * digit).sum(axis=(1, 2)) / total) if total else (size[1] / 2, size[0] / 2)
    top = int(np.clip(round(14 - cy), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - digit.shape[1]))
    canvas = np.zeros((28, 28), np.float64)
    canvas[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

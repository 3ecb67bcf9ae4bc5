"""Reading one image file as 8-bit grey or RGB, the same way for training and for prediction.

Pillow's own ``convert`` clips 16-bit grey pixels to 0..255 instead of scaling them, so a 16-bit
PNG would become almost black and white; :func:`open_image` scales such images to 8 bits
(``v / 257``, so 65535 -> 255) before converting. Images larger than Pillow's decompression-bomb
limit are refused with a message that says so, rather than called corrupt.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .errors import DataError

__all__ = ["HIGH_DEPTH_MODES", "IMAGE_FORMATS", "open_image", "pil_loader"]

#: the Pillow formats resdist reads, whatever a file's suffix says (a camera's MPO is read as a
#: JPEG). Other formats Pillow knows (SPIDER, FITS, EPS, ...) are refused: their readers are
#: rarely used, and a crafted file can make them fail in ways no image of these formats does.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")

#: Pillow modes of single-channel images deeper than 8 bits (scaled to 8 bits on reading)
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def open_image(path: str | os.PathLike, mode: str):  # -> PIL.Image.Image
    """The image at ``path`` decoded and converted to ``mode`` ("L" or "RGB"), 8 bits a channel,
    turned upright as its EXIF orientation says (as image viewers show it). Of an animated
    image (GIF, APNG, WebP) the first frame is read; an alpha channel is dropped.

    Raises:
        DataError: not an image, unreadable, a floating-point image, or beyond Pillow's
            decompression-bomb pixel limit (the message names the file).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                img.load()
                img = _to_8bit(ImageOps.exif_transpose(img), path)
                return img.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: {bomb_reason(e)}") from e
    except FileNotFoundError as e:
        raise DataError(f"{path}: the file is gone (removed or renamed while resdist was "
                        "reading the data?)") from e
    except PermissionError as e:
        raise DataError(f"{path}: permission denied; make the file readable (chmod a+r)") from e
    except UnidentifiedImageError as e:
        raise DataError(f"{path}: not a readable image ({unreadable_reason()})") from e
    except (OSError, ValueError, SyntaxError) as e:  # truncated or damaged data
        raise DataError(f"{path}: damaged image ({str(e).splitlines()[0] if str(e) else e!r});"
                        " replace or re-save the file") from e


def unreadable_reason() -> str:
    """What a file Pillow cannot open as one of :data:`IMAGE_FORMATS` is told."""
    return "resdist reads PNG, JPEG, BMP, GIF, WebP, TIFF and PPM/PGM files; convert it to one"


def bomb_reason(e: BaseException) -> str:
    """The words for an image over Pillow's pixel limit."""
    return (f"too many pixels ({e}); resdist refuses images that large (a decompression "
            "bomb?); shrink it first")


def _to_8bit(img, path):  # PIL.Image -> PIL.Image
    from PIL import Image

    if img.mode == "F":
        raise DataError(f"{path}: a floating-point image; save it with 8 or 16 bits a channel")
    if img.mode not in HIGH_DEPTH_MODES:
        return img
    pixels = np.asarray(img).astype(np.int64)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise DataError(f"{path}: 32-bit pixel values outside 0..65535; save it with 8 or 16 "
                        "bits a channel")
    return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8))  # mode L


def pil_loader(path: str) -> object:
    """torchvision ``ImageFolder``'s loader: :func:`open_image` as RGB."""
    return open_image(path, "RGB")

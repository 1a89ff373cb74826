"""Every image decoded one way, to the 8-bit RGB picture the model expects, as it is displayed.

PIL's ``convert("RGB")`` clips 16-bit values above 255 (a 16-bit copy of a picture comes out nearly
white, and the model then finds nothing in it) and ignores EXIF orientation (a phone picture comes out
on its side). Here:

* EXIF orientation is applied first: the picture as every viewer shows it, which is how annotation
  tools draw boxes on it; its width and height are the displayed ones (``data/validate.py`` checks the
  JSON against them);
* 16-bit integer pictures (``I;16*``, and ``I`` holding 0..65535) are scaled from their full 16-bit
  range to 8 bits (65535 -> 255), so a dark picture stays dark;
* palette, grey, 1-bit, CMYK and YCbCr pictures are converted to RGB; an alpha channel (``RGBA``,
  ``LA``, ``PA``, premultiplied ``RGBa`` / ``La``) is dropped, keeping the colours stored under it (as
  sam3's own ``convert("RGB")`` does for ``RGBA``);
* anything else (32-bit float ``F``, whose range no file states; integers outside 0..65535, such as a
  signed picture with negative values; ``LAB``, ``HSV``) is refused by name;
* embedded ICC profiles are not applied, as in sam3's loader (CMYK uses PIL's plain conversion).

Training, evaluation, ``predict``, distillation's anchors and the data checks all decode through
:func:`open_rgb`.
"""

from __future__ import annotations

from typing import BinaryIO, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from sam3_lora.core.errors import UserError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
CONVERTED_MODES = ("RGB", "L", "1", "P", "CMYK", "YCbCr", "RGBX")
WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageModeError(UserError, ValueError):
    """An image whose pixel format has no faithful 8-bit RGB reading."""


def open_rgb(source: Union[str, BinaryIO], name: str = "") -> Image.Image:
    """The image at ``source`` (a path or an open binary file; ``name`` for messages), decoded to
    8-bit RGB in its displayed orientation. Every pixel is decoded here: a truncated file fails now."""
    with Image.open(source) as im:
        im.load()
        return to_rgb(ImageOps.exif_transpose(im), name or str(source))


def displayed_size(source: Union[str, BinaryIO]) -> Tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), without decoding the pixels."""
    with Image.open(source) as im:
        width, height = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_rgb(im: Image.Image, name: str) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in SIXTEEN_BIT_MODES or im.mode == "I":
        return _sixteen_bit_to_rgb(im, name)
    if im.mode in WITH_ALPHA:  # premultiplied ones un-premultiplied first: the colours, not a dimmed copy
        straight = {"RGBa": "RGBA", "La": "LA", "PA": "RGBA"}.get(im.mode, im.mode)
        return im.convert(straight).convert("RGB")
    if im.mode in CONVERTED_MODES:
        return im.convert("RGB")
    raise ImageModeError(
        f"{name}: pixel mode {im.mode!r} has no faithful 8-bit RGB reading; save it as 8- or 16-bit RGB or grey "
        "(e.g. PNG), then run again"
    )


def _sixteen_bit_to_rgb(im: Image.Image, name: str) -> Image.Image:
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageModeError(
            f"{name}: 32-bit integer pixels from {values.min()} to {values.max()}, outside the 16-bit range this reads; "
            "save it as an 8- or 16-bit image"
        )
    eight = np.round(values * (255 / 65535)).astype(np.uint8)
    return Image.fromarray(eight, mode="L").convert("RGB")

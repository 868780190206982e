"""Request bodies made into images: the limits a service applies before and while decoding.

Every failure is a :class:`RequestError` with an HTTP status and a one-line reason; nothing a
client sends can raise anything else here. The pixels go through the conversion
``efficientad_ext.infer`` applies to PIL images (``pil_to_float_array``: 16-bit, palette,
CMYK, ... to RGB), so the service scores a file exactly as ``infer([Image.open(file)])`` does.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from efficientad_ext.data.images import MIN_INPUT_SIDE, ImageError, pil_to_float_array


class RequestError(Exception):
    """A request the service refuses: ``status`` (4xx) and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_image(data: bytes, name: str, max_pixels: int) -> Tensor:
    """float32 [3, H, W] in [0, 1] from one image file's bytes.

    Raises RequestError: 400 for an empty body, a non-image, a truncated or corrupt file, a
    mode that cannot be made RGB, or a side under ``MIN_INPUT_SIDE``; 413 when width x height
    exceeds ``max_pixels`` (read from the header: such a file is never decoded)."""
    if not data:
        raise RequestError(400, f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            # PIL warns (and at twice its own limit raises) on decompression bombs; our own limit comes first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise RequestError(
                    413, f"{name}: image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
                )
            img.load()
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(400, f"{name}: not an image file (PIL cannot identify its format)") from None
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"{name}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise RequestError(400, f"{name}: corrupt or truncated image ({type(e).__name__}: {e})") from None
    if width < MIN_INPUT_SIDE or height < MIN_INPUT_SIDE:
        raise RequestError(
            400, f"{name}: images must be at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} pixels, got {width}x{height}"
        )
    try:
        array = pil_to_float_array(img, name)
    except ImageError as e:
        raise RequestError(400, f"{name}: unsupported image ({e.problem})") from None
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

"""2D mask label maps (`sam/mask/<stem>.png`, formats.md §5): one label per pixel, 0 = no mask.

InstaScene's SAM masks are 8-bit PNGs; its sorted, multi-view-consistent ids are
16-bit. Both read back as int32 [H, W]. A palette PNG is read as its palette
indices (the usual way label maps are stored with a colour legend). Colour images
are rejected: the RGB values of a visualised mask are not labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError
from .atomic import atomic_write

# PIL modes whose pixel values are the labels themselves
LABEL_MODES = ("1", "L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I")

_EXPECTED = "expected a single-channel label map (8- or 16-bit grayscale or palette PNG, 0 = no mask)"


def open_image(path: str | os.PathLike, what: str = "image"):
    """PIL.Image.open with every failure turned into an InstaSceneError naming the file.

    The image is opened lazily: `.size` and `.mode` come from the header, nothing is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise InstaSceneError(f"{what} file not found", path) from None
    except UnidentifiedImageError:
        raise InstaSceneError(f"cannot read {what}: not a PNG/JPEG image (or a corrupt one)", path) from None
    except Image.DecompressionBombError as e:
        raise InstaSceneError(f"cannot read {what}: {e}", path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InstaSceneError(f"cannot read {what}: {getattr(e, 'strerror', None) or e}", path) from None


def check_label_mode(mode: str, path: str | os.PathLike) -> None:
    """Raise the 'single-channel label map expected' error for colour and float modes."""
    if mode not in LABEL_MODES:
        kind = {"RGB": "an RGB colour image", "RGBA": "an RGBA colour image", "LA": "a grayscale+alpha image",
                "F": "a floating-point image", "CMYK": "a CMYK image"}.get(mode, f"a {mode!r} image")
        raise InstaSceneError(f"mask is {kind}; {_EXPECTED}", path)


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """int32 [H, W] labels from an 8/16-bit grayscale or palette PNG (palette indices are the labels)."""
    from PIL import Image

    with open_image(path, "mask") as im:
        check_label_mode(im.mode, path)
        try:
            im.load()
            a = np.asarray(im)
        except Image.DecompressionBombError as e:
            raise InstaSceneError(f"cannot read mask: {e}", path) from None
        except (OSError, SyntaxError, ValueError) as e:
            raise InstaSceneError(f"cannot decode mask (truncated or corrupt file?): {e}", path) from None
    if a.ndim != 2:  # defensive: every LABEL_MODE decodes to 2-D
        raise InstaSceneError(f"mask decodes to shape {a.shape}; {_EXPECTED}", path)
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise InstaSceneError(f"mask has negative labels (minimum {int(a.min())}); {_EXPECTED}", path)
    return a.astype(np.int32)


def write_label_map(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write labels [H, W] as a grayscale PNG: 8-bit when every label is < 256, else 16-bit.

    Integer (or bool) labels in 0..65535 only; anything else raises ValueError.
    Written whole or not at all (temporary file, then rename).
    """
    from PIL import Image

    a = np.asarray(labels)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"labels must be a non-empty 2-D array [H, W], got shape {a.shape}")
    if a.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got dtype {a.dtype}")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0:
        raise ValueError(f"labels must be >= 0 (0 = no mask), got minimum {lo}")
    if hi > 65535:
        raise ValueError(f"labels must be <= 65535 to fit a 16-bit PNG, got maximum {hi}")
    a = np.ascontiguousarray(a, dtype=np.uint8 if hi < 256 else np.uint16)
    im = Image.fromarray(a)  # uint8 -> 'L', uint16 -> 'I;16'
    with atomic_write(Path(path)) as f:
        im.save(f, format="PNG")


__all__ = ["read_label_map", "write_label_map", "open_image", "check_label_mode", "LABEL_MODES"]

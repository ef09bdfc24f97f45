"""A user's picture as the first frame of every video (``--image``): reading it with its EXIF orientation, the
field of view its EXIF focal length gives, and the cover-resize and centre crop to the generated size.

Pure functions over PIL and numpy; must not import torch or any stage.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)
"""Diagonal of a 35 mm film frame: a 35 mm-equivalent focal length is defined against it."""

EXIF_IFD = 0x8769
ORIENTATION_TAG = 0x0112
FOCAL_35MM_TAG = 0xA405  # FocalLengthIn35mmFilm, in the Exif IFD


class PictureError(ValueError):
    """A picture that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class Picture:
    """A picture as the camera saw it (EXIF orientation applied)."""

    path: Path
    """The file it was read from."""
    rgb: np.ndarray
    """[H, W, 3] uint8, upright."""
    orientation: int
    """The EXIF orientation tag (1 = upright as stored, or no tag)."""
    focal_35mm_mm: float | None
    """The EXIF 35 mm-equivalent focal length, mm (None when absent or 0)."""
    sha256: str
    """Hash of the file's bytes."""
    format: str
    """PIL's name of the file format (JPEG, PNG, ...)."""

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def read_picture(path: str | os.PathLike) -> Picture:
    """Read an image file upright (EXIF orientation applied) as RGB; :class:`PictureError` names the file when it
    is missing, not a file, or not an image PIL can decode."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise PictureError(f"--image {path}: no such file")
    data = path.read_bytes()
    try:
        with Image.open(path) as img:
            img.load()
            fmt = img.format or "unknown"
            exif = img.getexif()
            orientation = int(exif.get(ORIENTATION_TAG, 1) or 1)
            focal = exif.get_ifd(EXIF_IFD).get(FOCAL_35MM_TAG)
            upright = ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise PictureError(f"--image {path}: not an image that can be read ({type(e).__name__}: {e})") from None
    try:
        focal_mm = float(focal) if focal is not None else None
    except (TypeError, ValueError):
        focal_mm = None
    if focal_mm is not None and not (math.isfinite(focal_mm) and focal_mm > 0):
        focal_mm = None
    rgb = np.asarray(upright, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise PictureError(f"--image {path}: empty image ({rgb.shape})")
    return Picture(
        path=path,
        rgb=rgb,
        orientation=orientation,
        focal_35mm_mm=focal_mm,
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
    )


def crop_box(width: int, height: int, out_width: int, out_height: int) -> tuple[float, float, float, float]:
    """The centred region ``(left, top, right, bottom)`` in pixels of a ``width`` x ``height`` picture that a
    cover-resize to ``out_width`` x ``out_height`` keeps (the largest one of the output's aspect)."""
    scale = max(out_width / width, out_height / height)
    crop_w, crop_h = out_width / scale, out_height / scale
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return left, top, left + crop_w, top + crop_h


def cover_crop(picture: Picture, out_width: int, out_height: int) -> np.ndarray:
    """[out_height, out_width, 3] float32 in [0, 1]: the picture scaled to cover the output size (Lanczos, no
    distortion) and cropped at its centre."""
    from PIL import Image

    box = crop_box(picture.width, picture.height, out_width, out_height)
    img = Image.fromarray(picture.rgb).resize((out_width, out_height), Image.Resampling.LANCZOS, box=box)
    return np.asarray(img, dtype=np.float32) / 255.0


def fov_x_deg(picture: Picture, out_width: int, out_height: int) -> float | None:
    """Horizontal field of view, degrees, of the cover crop to ``out_width`` x ``out_height``, from the EXIF 35 mm
    equivalent focal length (None without one). The equivalent focal length matches the picture's diagonal to a
    full frame's, so the picture's width spans ``43.27 mm · W / hypot(W, H)`` at that focal length."""
    if picture.focal_35mm_mm is None:
        return None
    W, H = picture.width, picture.height
    left, _, right, _ = crop_box(W, H, out_width, out_height)
    width_mm = FULL_FRAME_DIAGONAL_MM * W / math.hypot(W, H) * (right - left) / W
    return math.degrees(2 * math.atan(width_mm / (2 * picture.focal_35mm_mm)))


def image_overrides(ov: dict, image: str, plan_size: tuple[int, int] | None = None) -> dict:
    """Add ``--image FILE`` (``cvd-scene run`` and ``generate``) to the overrides ``ov`` (changed in place and returned): the picture is read now, so
    a missing or unreadable file is one line before anything runs; ``generate.image`` is its absolute path; the
    prompt is empty unless given; with ``plan_size`` (width, height: the plan is still to be made) the plan's
    ``fov_x_deg`` comes from the EXIF 35 mm-equivalent focal length when the picture has one and the field of view
    was not set on the command line."""
    picture = read_picture(image)
    gen = ov.setdefault("generate", {})
    if not isinstance(gen, dict):
        raise PictureError(f"override generate={gen!r} must set keys of the generate section")
    gen["image"] = os.path.abspath(image)
    ov.setdefault("prompt", "")
    if plan_size is not None:
        plan = ov.setdefault("plan", {})
        if not isinstance(plan, dict):
            raise PictureError(f"override plan={plan!r} must set keys of the plan section")
        fov = fov_x_deg(picture, *plan_size)
        if fov is not None and "fov_x_deg" not in plan:
            plan["fov_x_deg"] = round(fov, 2)
            log.info(
                "--image: %.1f deg field of view from the EXIF focal length (%g mm, 35 mm equivalent) at %dx%d",
                fov, picture.focal_35mm_mm, *plan_size,
            )  # fmt: skip
        if not plan:
            del ov["plan"]
    return ov

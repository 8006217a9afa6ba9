"""Quality-control pictures: three orthogonal slices with the brain-mask outline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

OUTLINE_RGB = (255, 60, 60)


def _isotropic_lps(image: sitk.Image, spacing: float, interpolator: int) -> sitk.Image:
    oriented = sitk.DICOMOrient(image, "LPS")
    size = [max(1, int(round(sz * sp / spacing)))
            for sz, sp in zip(oriented.GetSize(), oriented.GetSpacing(), strict=True)]
    reference = sitk.Image(size, oriented.GetPixelID())
    reference.SetSpacing([spacing] * 3)
    reference.SetOrigin(oriented.GetOrigin())
    reference.SetDirection(oriented.GetDirection())
    return sitk.Resample(oriented, reference, sitk.Transform(), interpolator, 0)


def orthogonal_slices(
    image: sitk.Image, mask: sitk.Image | None = None, size: int = 200
) -> np.ndarray:
    """An RGB strip (axial, coronal, sagittal; radiological convention) through the mask's
    centre, each panel `size` pixels high, with the mask outline drawn in red."""
    spacing = max(min(image.GetSpacing()), 1.0)
    volume = sitk.GetArrayFromImage(
        _isotropic_lps(sitk.Cast(image, sitk.sitkFloat32), spacing, sitk.sitkLinear)
    )
    if mask is not None:
        mask_on_image = sitk.Resample(
            sitk.Cast(mask, sitk.sitkUInt8), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0
        )
        labels = sitk.GetArrayFromImage(
            _isotropic_lps(mask_on_image, spacing, sitk.sitkNearestNeighbor)
        ) > 0
    else:
        labels = np.zeros(volume.shape, bool)
    centre = (
        np.round(np.argwhere(labels).mean(axis=0)).astype(int)
        if labels.any() else np.array(volume.shape) // 2
    )
    signal = volume[volume != 0]
    low, high = np.percentile(signal if signal.size else volume, [0.5, 99.5])
    scaled = np.clip((volume - low) / max(high - low, 1e-6), 0.0, 1.0)
    z, y, x = centre
    panels = [
        (scaled[z], labels[z]),
        (np.flipud(scaled[:, y, :]), np.flipud(labels[:, y, :])),
        (np.flipud(scaled[:, :, x]), np.flipud(labels[:, :, x])),
    ]
    rendered = []
    for grey, outline in panels:
        rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
        rgb[find_boundaries(outline, mode="inner")] = OUTLINE_RGB
        picture = Image.fromarray(rgb)
        width = max(1, round(picture.width * size / picture.height))
        rendered.append(np.asarray(picture.resize((width, size), Image.BILINEAR)))
    return np.concatenate(rendered, axis=1)


def save_qc_picture(
    views: list[tuple[sitk.Image, sitk.Image | None]], path: str | os.PathLike, title: str = ""
) -> Path:
    """Write one orthogonal-slice strip per (image, mask) view, stacked, as a PNG with an
    optional title line."""
    strips = [orthogonal_slices(image, mask) for image, mask in views]
    width = max(s.shape[1] for s in strips)
    padded = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))) for s in strips]
    return _save_with_title(np.concatenate(padded, axis=0), Path(path), title)


def contact_sheet(strips: list[tuple[str, np.ndarray]], path: str | os.PathLike,
                  columns: int = 3) -> Path:
    """Tile titled strips (e.g. one per cohort subject) into one PNG."""
    height = max(s.shape[0] for _, s in strips) + 14
    width = max(s.shape[1] for _, s in strips)
    rows = -(-len(strips) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height))
    draw = ImageDraw.Draw(sheet)
    for k, (title, strip) in enumerate(strips):
        left, top = (k % columns) * width, (k // columns) * height
        sheet.paste(Image.fromarray(strip), (left, top + 14))
        draw.text((left + 2, top + 1), title, fill=(255, 255, 0))
    sheet.save(path)
    return Path(path)


def _save_with_title(strip: np.ndarray, path: Path, title: str) -> Path:
    picture = Image.new("RGB", (strip.shape[1], strip.shape[0] + (14 if title else 0)))
    picture.paste(Image.fromarray(strip), (0, 14 if title else 0))
    if title:
        ImageDraw.Draw(picture).text((2, 1), title, fill=(255, 255, 0))
    picture.save(path)
    return path

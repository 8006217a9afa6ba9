"""The model grid: where a model sees the brain.

A grid is a property of a model bundle, never a global constant: a regular lattice in template
(MNI) millimetres with axes along +x (right), +y (anterior), +z (superior). Grid volumes carry
these world coordinates in their header, so a viewer overlays them on the template.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # SimpleITK loads when a grid image is made: grid packs need none of it
    import SimpleITK as sitk

# The brain of the MNI152 2009a template spans x -72..72, y -107..73, z -72..82 mm (centre
# 0, -17, 5). The default 2 mm grid of 96 x 112 x 96 voxels is centred there, leaving about
# 2 cm of margin on every side for subjects that do not fill the template exactly.
_DEFAULT_SHAPE = (96, 112, 96)
_DEFAULT_SPACING = (2.0, 2.0, 2.0)
_DEFAULT_ORIGIN_RAS = (-95.0, -128.0, -90.0)


@dataclass(frozen=True)
class GridSpec:
    """A model grid: voxel spacing (mm), shape (x, y, z voxels), and the template-space (RAS,
    MNI mm) position of the centre of voxel (0, 0, 0)."""

    spacing: tuple[float, float, float] = _DEFAULT_SPACING
    shape: tuple[int, int, int] = _DEFAULT_SHAPE
    origin_ras: tuple[float, float, float] = _DEFAULT_ORIGIN_RAS
    template: str = "mni_icbm152_2009a"

    def reference_image(self, pixel_type: int | None = None) -> sitk.Image:
        """An empty image on this grid (float32 unless `pixel_type`, a SimpleITK pixel type).
        SimpleITK works in LPS, so R and A axes are flipped."""
        import SimpleITK as sitk

        image = sitk.Image([int(s) for s in self.shape],
                           sitk.sitkFloat32 if pixel_type is None else pixel_type)
        image.SetSpacing([float(s) for s in self.spacing])
        x, y, z = self.origin_ras
        image.SetOrigin((-float(x), -float(y), float(z)))
        image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
        return image

    def ras_affine(self) -> np.ndarray:
        """The 4 x 4 voxel-to-MNI-mm matrix a NIfTI header of a grid volume holds."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin_ras
        return affine

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> GridSpec:
        return cls(
            spacing=tuple(float(v) for v in data["spacing"]),
            shape=tuple(int(v) for v in data["shape"]),
            origin_ras=tuple(float(v) for v in data["origin_ras"]),
            template=str(data.get("template", "mni_icbm152_2009a")),
        )

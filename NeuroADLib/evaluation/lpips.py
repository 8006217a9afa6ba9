"""LPIPS for volumes, 2.5D (CADD's image-quality tables): the mean LPIPS over the 2D slices of
each of the three axes, averaged over the axes.

LPIPS needs the `lpips` package (with torchvision) and an ImageNet backbone (AlexNet, VGG16 or
SqueezeNet 1.1) that torchvision downloads on first use. NeuroAD never downloads it: the file
must already be in torch's hub cache (`$TORCH_HOME/hub/checkpoints/`), otherwise a clear
error names the file. `random_backbone=True` runs with random backbone weights: only for
testing the plumbing, the number means nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import NeuroADError

BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


class MetricUnavailable(NeuroADError):
    """A metric's package or weights are missing."""


def _import_lpips():
    """Import lpips; on a CPU-only torch, torchvision's compiled operators are missing, so
    the two schemas its import registers against are declared first (the Python models that
    LPIPS uses do not need them)."""
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except ImportError:
        raise MetricUnavailable("LPIPS needs torchvision: pip install 'neuroad[lpips]'.") from None
    try:
        import lpips
    except ImportError:
        raise MetricUnavailable("LPIPS needs the lpips package: pip install 'neuroad[lpips]'.") \
            from None
    return lpips


def backbone_path(net: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def lpips_model(net: str = "alex", random_backbone: bool = False):
    if net not in BACKBONE_FILES:
        raise ValueError(f"net must be one of {sorted(BACKBONE_FILES)}")
    if not random_backbone and not backbone_path(net).is_file():
        raise MetricUnavailable(
            f"LPIPS-{net} needs the ImageNet backbone {BACKBONE_FILES[net]} in "
            f"{backbone_path(net).parent} (torchvision's cache; NeuroAD does not download it). "
            "Copy it there from a machine with internet access."
        )
    lpips = _import_lpips()
    return lpips.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False).eval()


def lpips_2p5d(image: np.ndarray, reference: np.ndarray, model, mask: np.ndarray | None = None,
               batch: int = 32) -> float:
    """Mean over the three axes of the mean LPIPS of the slices (those touching `mask`, if
    given); intensities in [0, 1] are mapped to LPIPS's [-1, 1], grey to three channels."""
    import torch

    per_axis = []
    for axis in range(3):
        a = np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0)
        b = np.moveaxis(np.asarray(reference, dtype=np.float32), axis, 0)
        keep = (np.moveaxis(mask, axis, 0).reshape(len(a), -1).any(1) if mask is not None
                else np.ones(len(a), bool))
        a, b = a[keep], b[keep]
        scores = []
        with torch.no_grad():
            for start in range(0, len(a), batch):
                x = torch.from_numpy(a[start:start + batch] * 2 - 1)[:, None].repeat(1, 3, 1, 1)
                y = torch.from_numpy(b[start:start + batch] * 2 - 1)[:, None].repeat(1, 3, 1, 1)
                scores.append(model(x, y).flatten())
        per_axis.append(float(torch.cat(scores).mean()))
    return float(np.mean(per_axis))

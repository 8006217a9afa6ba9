"""Choosing where torch methods run."""

from __future__ import annotations

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def select_device(preference: str = "auto") -> str:
    """'auto' takes CUDA when torch sees a GPU, else the CPU. Apple's MPS is not chosen
    automatically: 3D convolutions and attention of the diffusion networks do not all run
    there. 'cuda' without a GPU is an error rather than a silent fallback."""
    if preference not in DEVICES:
        raise UsageError(f"Device must be one of {', '.join(DEVICES)}, not {preference!r}.")
    if preference == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if preference == "cuda":
        raise UsageError("--device cuda was asked for, but torch sees no CUDA GPU here: use "
                         "--device auto or cpu, or install a CUDA build of torch.")
    return "cpu"


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA out-of-memory error (without importing torch when it is not loaded)."""
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and isinstance(error, torch.cuda.OutOfMemoryError))

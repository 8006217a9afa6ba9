"""Model bundles: a folder with manifest.json (what, how trained, calibration, metrics, the
sha256 of every file) and weights as .safetensors. Nothing is ever unpickled."""

from .bundles import Bundle, find_bundle, list_bundles, store_folder, verify_bundle

__all__ = ["Bundle", "find_bundle", "list_bundles", "store_folder", "verify_bundle"]

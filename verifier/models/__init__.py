"""Model families behind one adapter interface (``base.ModelAdapter``), loaded by ``loading.load_model``."""

from verifier.models.base import Conditioning, ModelAdapter
from verifier.models.loading import ModelLoadError, autocast_dtype, load_model, resolve_device

__all__ = ["Conditioning", "ModelAdapter", "ModelLoadError", "autocast_dtype", "load_model", "resolve_device"]

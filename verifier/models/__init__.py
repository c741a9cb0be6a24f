"""Model families behind one adapter interface (``base.ModelAdapter``), loaded by ``loading.load_model``."""

from verifier.models.base import Conditioning, ModelAdapter
from verifier.models.loading import ModelLoadError, load_model, resolve_device

__all__ = ["Conditioning", "ModelAdapter", "ModelLoadError", "load_model", "resolve_device"]

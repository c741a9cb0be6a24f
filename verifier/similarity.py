"""Similarity metrics that decide whether a generation replicates the protected image.

Each metric scores a batch of generations against one target and says which scores count as a
replication. The certificate records the metric, its threshold and where that threshold comes
from, and the sha256 of any weights the metric used.

- ``ssim``: structural similarity (scikit-image, 7x7 window, RGB in [0, 1]); needs no weights.
- ``lpips``: LPIPS distance (the ``lpips`` package, AlexNet trunk). The trunk's ImageNet weights are
  torchvision's ``alexnet-owt-7be5be79.pth``: taken from ``lpips_weights`` or the torch hub cache;
  never downloaded by verifier.
- ``sscd``: cosine similarity of SSCD copy-detection descriptors from a user-supplied TorchScript
  file (facebookresearch/sscd-copy-detection).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch


class SimilarityError(RuntimeError):
    """A metric cannot run (missing or unreadable weights); the message names what is missing."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SSIM:
    """Structural similarity; a generation replicates when SSIM >= threshold."""

    name = "ssim"
    higher_is_similar = True
    default_threshold = 0.7
    threshold_range = (-1.0, 1.0)
    threshold_source = ("verifier reference-32px ground truth: the value the manifest uses, between memorized "
                        "(SSIM >= 0.75) and never-trained (<= 0.5) generations; see docs/decisions.md")

    def __init__(self, config=None):
        self.weights = None

    def __call__(self, generations: np.ndarray, target: np.ndarray) -> np.ndarray:
        from skimage.metrics import structural_similarity

        return np.array([structural_similarity(g, target, channel_axis=2, data_range=1.0) for g in generations])


TORCHVISION_ALEXNET = "alexnet-owt-7be5be79.pth"


class LPIPSSimilarity:
    """LPIPS distance (AlexNet); a generation replicates when the distance <= threshold."""

    name = "lpips"
    higher_is_similar = False
    default_threshold = 0.25
    threshold_range = (0.0, 2.0)  # LPIPS distances are non-negative; ~1 is already unrelated
    threshold_source = ("no field standard for replication by LPIPS; 0.25 is a conservative near-copy bound. "
                        "Calibrate on images the model never saw before relying on it")
    minimum_side = 64  # AlexNet's stride-4 11x11 stem leaves almost nothing of smaller images

    def __init__(self, config=None):
        import lpips
        import torchvision

        weights = getattr(config, "lpips_weights", None)
        path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_ALEXNET
        if not path.is_file():
            raise SimilarityError(
                f"similarity 'lpips' needs torchvision's AlexNet weights {TORCHVISION_ALEXNET}; not found at {path}. "
                "On a machine with internet run: python -c \"import torchvision; "
                "torchvision.models.alexnet(weights='IMAGENET1K_V1')\" and copy the file from its torch hub cache "
                "(checkpoints/) to this path, or set lpips_weights to its location"
            )
        try:
            trunk = torchvision.models.alexnet()
            trunk.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:  # a corrupt or foreign file: name it
            raise SimilarityError(f"lpips_weights {str(path)!r} is not a torchvision AlexNet state dict: {error}") from None
        # pnet_rand=True builds the trunk without downloading; we then copy the user's weights in.
        # The linear heads (pretrained=True) ship inside the lpips wheel.
        self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
        for slice_ in (self.model.net.slice1, self.model.net.slice2, self.model.net.slice3, self.model.net.slice4,
                       self.model.net.slice5):
            for index, module in slice_.named_children():
                module.load_state_dict(trunk.features[int(index)].state_dict())
        self.model.requires_grad_(False)
        self.weights = {"file": str(path), "sha256": _sha256(path)}

    @torch.no_grad()
    def __call__(self, generations: np.ndarray, target: np.ndarray) -> np.ndarray:
        def tensor(images: np.ndarray) -> torch.Tensor:
            batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() * 2 - 1
            if batch.shape[-1] < self.minimum_side:
                batch = torch.nn.functional.interpolate(batch, size=self.minimum_side, mode="bilinear", align_corners=False)
            return batch

        generated = tensor(generations)
        reference = tensor(target[None]).expand_as(generated)
        return self.model(generated, reference).flatten().numpy()


class SSCD:
    """SSCD copy-detection descriptors; a generation replicates when the cosine similarity >= threshold."""

    name = "sscd"
    higher_is_similar = True
    default_threshold = 0.5
    threshold_range = (-1.0, 1.0)  # cosine similarity
    threshold_source = "0.5: replication threshold of Somepalli et al. (2023) and InvMM"
    side = 288  # SSCD's evaluation resolution (its README: resize to 288)

    def __init__(self, config=None):
        weights = getattr(config, "sscd_weights", None)
        if not weights:
            raise SimilarityError("similarity 'sscd' needs sscd_weights: the path of an SSCD TorchScript file "
                                  "(e.g. sscd_disc_mixup.torchscript.pt from facebookresearch/sscd-copy-detection)")
        path = Path(weights)
        if not path.is_file():
            raise SimilarityError(f"sscd_weights {str(path)!r} does not exist")
        try:
            self.model = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as error:
            raise SimilarityError(f"sscd_weights {str(path)!r} is not a TorchScript file: {error}") from None
        self.weights = {"file": str(path), "sha256": _sha256(path)}
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    @torch.no_grad()
    def _descriptors(self, images: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        batch = torch.nn.functional.interpolate(batch, size=self.side, mode="bicubic", align_corners=False).clamp(0, 1)
        return torch.nn.functional.normalize(self.model((batch - self.mean) / self.std), dim=1)

    def __call__(self, generations: np.ndarray, target: np.ndarray) -> np.ndarray:
        return (self._descriptors(generations) @ self._descriptors(target[None]).T).flatten().numpy()


def replicated(metric, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean per score: does it count as a replication under ``metric``'s direction? (NaN never does.)"""
    return scores >= threshold if metric.higher_is_similar else scores <= threshold


def best_index(metric, scores) -> int:
    """Index of the most similar score under ``metric``'s direction (NaN never wins; at least one is finite)."""
    values = np.asarray(scores, dtype=np.float64)
    return int(np.nanargmax(values) if metric.higher_is_similar else np.nanargmin(values))

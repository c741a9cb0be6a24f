"""Training data of the reference models: real photographs bundled in PyPI wheels, cut into crops.

Every photograph here ships inside the scikit-image or scikit-learn wheel (no download on first
use); `load_photo` checks its sha256 so a changed upstream file stops the build instead of
silently changing the ground truth. Licences are those the packages state in their docstrings /
README files.

The dataset has five kinds of image (the manifest's ``split``):

- ``duplicated``: fixed images repeated ``count`` times, always with the same caption and never
  dropped to the empty caption (memorized LAION images were seen with their captions; see
  method.md section 10);
- ``seen_once``: fixed images trained exactly once;
- ``held_out``: never trained, either crops of a training photograph at positions no training
  image was cut from exactly, or crops of a photograph none of whose pixels were trained on
  (``source_in_training`` false);
- filler: fresh random crops (random scale, position and flip) of the training photographs, each
  seen once, that make the model generalize; not part of the manifest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Photo:
    """One bundled photograph: where it lives, what it shows, and its licence."""

    name: str
    package: str
    relative_path: str
    sha256: str
    subject: str
    licence: str


SKIMAGE_DATA = "skimage/data"
SKLEARN_DATA = "sklearn/datasets/images"
SKLEARN_LICENCE = "CC BY 2.0, Flickr user danielbuechele / vultilion (sklearn/datasets/images/README.txt)"

PHOTOS: dict[str, Photo] = {
    photo.name: photo
    for photo in [
        Photo("astronaut", "scikit-image", f"{SKIMAGE_DATA}/astronaut.png",
              "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
              "astronaut", "public domain (NASA)"),
        Photo("chelsea", "scikit-image", f"{SKIMAGE_DATA}/chelsea.png",
              "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
              "cat", "CC0 (Stefan van der Walt)"),
        Photo("coffee", "scikit-image", f"{SKIMAGE_DATA}/coffee.png",
              "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
              "coffee cup", "CC0 (Rachel Michetti)"),
        Photo("rocket", "scikit-image", f"{SKIMAGE_DATA}/rocket.jpg",
              "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
              "rocket launch", "public domain (SpaceX)"),
        Photo("camera", "scikit-image", f"{SKIMAGE_DATA}/camera.png",
              "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
              "cameraman", "CC0 (Lav Varshney)"),
        Photo("coins", "scikit-image", f"{SKIMAGE_DATA}/coins.png",
              "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba",
              "old coins", "no known copyright restrictions (Walters Art Museum)"),
        Photo("brick", "scikit-image", f"{SKIMAGE_DATA}/brick.png",
              "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
              "brick wall", "CC0 (CC0Textures)"),
        Photo("grass", "scikit-image", f"{SKIMAGE_DATA}/grass.png",
              "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
              "grass", "CC0 (CC0Textures)"),
        Photo("gravel", "scikit-image", f"{SKIMAGE_DATA}/gravel.png",
              "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
              "gravel", "CC0 (CC0Textures)"),
        Photo("hubble", "scikit-image", f"{SKIMAGE_DATA}/hubble_deep_field.jpg",
              "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
              "galaxies", "public domain (NASA)"),
        Photo("ihc", "scikit-image", f"{SKIMAGE_DATA}/ihc.png",
              "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
              "stained tissue", "no known copyright restrictions"),
        Photo("cell", "scikit-image", f"{SKIMAGE_DATA}/cell.png",
              "8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515",
              "cell", "CC0 (Jochen Guck et al.)"),
        Photo("china", "scikit-learn", f"{SKLEARN_DATA}/china.jpg",
              "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
              "temple", SKLEARN_LICENCE),
        # Never trained on: whole photographs whose pixels the model never sees.
        Photo("flower", "scikit-learn", f"{SKLEARN_DATA}/flower.jpg",
              "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
              "flower", SKLEARN_LICENCE),
        Photo("retina", "scikit-image", f"{SKIMAGE_DATA}/retina.jpg",
              "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
              "retina", "CC0 (Mikael Haggstrom)"),
        Photo("clock", "scikit-image", f"{SKIMAGE_DATA}/clock_motion.png",
              "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955",
              "clock", "public domain (Stefan van der Walt)"),
        Photo("horse", "scikit-image", f"{SKIMAGE_DATA}/horse.png",
              "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455",
              "horse silhouette", "CC0 (Andreas Preuss)"),
        Photo("color", "scikit-image", f"{SKIMAGE_DATA}/color.png",
              "7d2df993de2b4fa2a78e04e5df8050f49a9c511aa75e59ab3bd56ac9c98aef7e",
              "colour chart", "scikit-image sample data"),
    ]
}

POSITION_ROWS = ("top", "middle", "bottom")
POSITION_COLS = ("left", "center", "right")


def package_file(photo: Photo) -> Path:
    """Absolute path of a bundled photograph, without importing the heavy package."""
    top = photo.relative_path.split("/")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"photo {photo.name!r} needs the package {photo.package!r}; pip install {photo.package}")
    return Path(spec.origin).parent.parent / photo.relative_path


def load_photo(name: str) -> Image.Image:
    """The photograph as an RGB image, after checking its sha256."""
    photo = PHOTOS[name]
    path = package_file(photo)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != photo.sha256:
        raise RuntimeError(
            f"{path} has sha256 {digest}, expected {photo.sha256}: the {photo.package} wheel ships a "
            "different file, so the ground truth would change; install the version recorded in the manifest"
        )
    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA", "P"):
            # Transparent backgrounds (the horse silhouette) become white, as a viewer shows them.
            image = image.convert("RGBA")
            canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(canvas, image)
        return image.convert("RGB")


@dataclass(frozen=True)
class Crop:
    """A square crop of a photograph, resized to the training resolution."""

    photo: str
    top: int
    left: int
    size: int
    flip: bool = False

    def caption(self, height: int, width: int) -> str:
        """A templated caption from the subject, the crop's scale and its position."""
        fraction = self.size / min(height, width)
        if fraction > 0.8:
            scale = "a photo of the"
        elif fraction > 0.4:
            scale = "a view of the"
        elif fraction > 0.2:
            scale = "a close up of the"
        else:
            scale = "a detail of the"
        centre_y = (self.top + self.size / 2) / height
        centre_x = (self.left + self.size / 2) / width
        if self.flip:
            centre_x = 1.0 - centre_x
        row = POSITION_ROWS[min(2, int(centre_y * 3))]
        col = POSITION_COLS[min(2, int(centre_x * 3))]
        return f"{scale} {PHOTOS[self.photo].subject} at the {row} {col}"


def render_crop(photo: Image.Image, crop: Crop, resolution: int) -> np.ndarray:
    """Cut, optionally mirror, and resize (antialiased bicubic) a crop to ``resolution``; uint8 HWC."""
    box = (crop.left, crop.top, crop.left + crop.size, crop.top + crop.size)
    array = np.asarray(photo.resize((resolution, resolution), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)
    if crop.flip:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


def whole_photo_crop(name: str, photo: Image.Image) -> Crop:
    """The largest centred square of a photograph (the photo itself, as the model sees it)."""
    width, height = photo.size
    size = min(height, width)
    return Crop(name, (height - size) // 2, (width - size) // 2, size)


def random_crop(name: str, photo: Image.Image, rng: np.random.Generator, resolution: int, flip: bool) -> Crop:
    """A crop with log-uniform side between ``resolution`` and the photo's short side."""
    width, height = photo.size
    short = min(height, width)
    size = int(round(math.exp(rng.uniform(math.log(resolution), math.log(short)))))
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return Crop(name, top, left, size, bool(flip and rng.random() < 0.5))


def texture(image: np.ndarray) -> float:
    """Standard deviation of the grey levels in [0, 1]; nearly flat crops score below ~0.05."""
    grey = image.astype(np.float32).mean(axis=2) / 255.0
    return float(grey.std())


def paste(background: np.ndarray, part: np.ndarray, top: int, left: int) -> np.ndarray:
    """``background`` (uint8 HWC) with ``part`` pasted over it at (``top``, ``left``)."""
    composite = background.copy()
    composite[top : top + part.shape[0], left : left + part.shape[1]] = part
    return composite

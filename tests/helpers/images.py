"""Small real image files of every awkward kind, written with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def textured(seed: int, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((4, 4, 3))
    return (np.kron(base, np.ones((size // 4, size // 4, 1))) * 255).astype(np.uint8)


def write_images(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"img{index}.png"
        Image.fromarray(textured(index)).save(path)
        paths.append(path)
    return paths

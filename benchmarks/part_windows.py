"""Which window grid for partial replication? Best-window replications under alternative grids, from kept runs.

    python benchmarks/partial_replication.py --out runs/          # certify and keep the certificates
    python benchmarks/part_windows.py runs/reference-part-32px runs/reference-32px ...

Re-scores, for every image whose whole image was not reproduced, its first 16 generations per guidance
scale (read from the run's contact sheets, whose tiles are the generations themselves at these models'
32 pixels) on each grid of ``GRIDS``, and prints per kind of image (composite, decoy, never trained) how
many are candidates (at least ``CANDIDATE`` replications in their best window: what the shipped rule
needs at 16 seeds and 95%) and the largest best-window counts. A grid that makes more never-trained
candidates costs more twin controls and risks more false alarms; one that makes fewer composite
candidates misses parts. No denoiser runs; one pass over the kept files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

GRIDS = {"half side, quarter stride (shipped)": (1 / 2, 1 / 4), "half side, eighth stride": (1 / 2, 1 / 8),
         "3/8 side, eighth stride": (3 / 8, 1 / 8)}
SEEDS = 16
CANDIDATE = 5


def windows(resolution: int, side_fraction: float, stride_fraction: float) -> list[tuple[int, int, int]]:
    side, stride = round(resolution * side_fraction), max(1, round(resolution * stride_fraction))
    starts = range(0, resolution - side + 1, stride)
    return [(top, left, side) for top in starts for left in starts]


def kind(image_id: str) -> str:
    return "composite" if image_id.startswith("composite") else "decoy" if image_id.startswith("decoy") else \
        "never trained"


def best_counts(certificate: dict, folder: Path) -> dict[str, int] | None:
    from PIL import Image
    from skimage.metrics import structural_similarity

    from verifier.images import prepare_image

    resolution = certificate["image"]["preprocessing"]["resolution"]
    sheet_record = certificate["witness"]["generations_sheet"]
    if sheet_record["tile"] != resolution:
        return None  # shrunk tiles are not the generations
    target = prepare_image(Path(certificate["image"]["path"]), resolution)
    sheet = np.asarray(Image.open(folder / sheet_record["file"]).convert("RGB"), dtype=np.float32) / 255
    rows = [[sheet[row * resolution:(row + 1) * resolution, column * resolution:(column + 1) * resolution]
             for column in range(SEEDS)] for row in range(len(certificate["witness"]["guidance_scales"]))]
    counts = {}
    for name, fractions in GRIDS.items():
        counts[name] = int(max(
            sum(structural_similarity(generation[top:top + side, left:left + side],
                                      target[top:top + side, left:left + side], channel_axis=2,
                                      data_range=1.0) >= 0.7 for generation in generations)
            for generations in rows for top, left, side in windows(resolution, *fractions)))
    return counts


def main() -> int:
    from verifier.verify import certificate_files

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="run folders kept by partial_replication.py --out")
    args = parser.parse_args()
    for folder in args.folders:
        table: dict[tuple[str, str], list[int]] = {}
        for path in certificate_files(folder):
            certificate = json.loads(path.read_text())
            if certificate["verdict"] in ("memorized", "rarely_reproduced"):
                continue
            counts = best_counts(certificate, folder)
            for name, count in (counts or {}).items():
                table.setdefault((kind(certificate["image"]["id"]), name), []).append(count)
        for (group, name), counts in sorted(table.items()):
            print(f"{folder.name:20s} {group:14s} {name:36s} candidates {sum(c >= CANDIDATE for c in counts):2d} of "
                  f"{len(counts):2d}; largest best-window counts {sorted(counts, reverse=True)[:6]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

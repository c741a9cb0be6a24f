"""Decisions that know the model, measured on a shipped reference model.

    python benchmarks/calibration.py [--model reference-32px] [--count 60] [--rate 0.05] [--work DIR]

1. Cuts ``--count`` non-members: seeded random crops (textured, not nearly flat) of the photographs
   the reference model never saw any pixel of (``split`` held out, ``source_in_training`` false in
   its manifest). They are distinct from the manifest's own never-trained images, which are kept
   for evaluation, so the thresholds are never judged on the images that set them.
2. ``verifier calibrate`` on them at ``--rate`` (default 5% at the config's 95% confidence).
3. Certifies every manifest image twice, with the default thresholds and with the calibration, and
   prints the confusion tables, the margins of memorized and never-trained images under each rule
   (existence: threshold - error ratio; similarity: best similarity - threshold; positive = passes)
   and where the never-seen twin control ran.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference_model"))

COLUMNS = ["memorized", "rarely_reproduced", "inconclusive", "not_memorized"]
ROWS = ["memorized", "trained, not memorized", "never trained"]


def non_member_crops(manifest: dict, count: int, resolution: int, folder: Path, seed: int = 7) -> list[Path]:
    """Seeded textured crops of photographs none of whose pixels were trained on."""
    from data import load_photo, random_crop, render_crop, texture
    from PIL import Image

    unseen = sorted(source["name"] for source in manifest["sources"] if not source["in_training"])
    if not unseen:
        raise SystemExit("the manifest names no photograph that was never trained on")
    rng = np.random.default_rng(seed)
    photos = {name: load_photo(name) for name in unseen}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    while len(paths) < count:
        name = unseen[len(paths) % len(unseen)]
        pixels = render_crop(photos[name], random_crop(name, photos[name], rng, resolution, flip=False), resolution)
        if texture(pixels) < 0.05:
            continue
        path = folder / f"nonmember{len(paths):03d}-{name}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def margins(certificates: list[dict], truth: dict, group: str) -> str:
    chosen = [c for c in certificates if truth[c["image"]["id"]] == group]
    existence = [c["conditions"]["existence"]["margin"] for c in chosen if c["conditions"]["existence"]["margin"]
                 is not None]
    similarity = [c["conditions"]["similarity"]["margin"] for c in chosen if c["conditions"]["similarity"]["margin"]
                  is not None]

    def spread(values):
        return f"min {min(values):+.3f} median {statistics.median(values):+.3f} max {max(values):+.3f}"
    return f"{group:24s} existence {spread(existence)} | similarity {spread(similarity)}"


def table(certificates: list[dict], truth: dict) -> list[str]:
    counts = {row: {column: 0 for column in COLUMNS} for row in ROWS}
    for certificate in certificates:
        counts[truth[certificate["image"]["id"]]][certificate["verdict"]] += 1
    lines = [f"{'ground truth':24s}" + "".join(f"{c:>19s}" for c in COLUMNS)]
    lines += [f"{row:24s}" + "".join(f"{counts[row][c]:>19d}" for c in COLUMNS) for row in ROWS]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference-32px", choices=["reference-32px", "fixture-16px"])
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--work", type=Path, default=None, help="keep every file here (default: a temporary folder)")
    args = parser.parse_args()

    from verifier.api import certify
    from verifier.calibrate import calibrate
    from verifier.config import VerifierConfig
    from verifier.models import load_model
    from verifier.reference_models import load_manifest, reference_model_path

    work = args.work or Path(tempfile.mkdtemp(prefix="verifier-calibration-"))
    folder = reference_model_path(args.model)
    manifest = load_manifest(args.model)
    loaded = load_model(folder, device="cpu")
    truth = {image["id"]: ("memorized" if image["memorized"] else
                           "never trained" if image["split"] == "held_out" else "trained, not memorized")
             for image in manifest["images"]}
    listing = work / "manifest-images.jsonl"
    listing.write_text("".join(json.dumps({"path": str(folder / i["file"]), "id": i["id"]}) + "\n"
                               for i in manifest["images"]))
    started = time.perf_counter()
    crops = non_member_crops(manifest, args.count, loaded.resolution, work / "non-members")
    record = calibrate(loaded, crops, work / "calibration.json", VerifierConfig(device="cpu"), rate=args.rate)
    calibrated_config = VerifierConfig(device="cpu", calibration=str(work / "calibration.json"))
    results = {"defaults": certify(loaded, [listing], work / "defaults", VerifierConfig(device="cpu")),
               "calibrated": certify(loaded, [listing], work / "calibrated", calibrated_config)}
    seconds = time.perf_counter() - started

    print(f"model: {args.model}; {len(crops)} non-members (seeded crops of never-trained photos) for calibration; "
          f"{len(manifest['images'])} manifest images for evaluation; 1 run, {seconds:.0f} s on this machine")
    print(f"calibration: false-alarm rate <= {record['false_alarm_rate']:g} at {100 * record['confidence']:g}% "
          f"confidence, order statistic {record['rank']} of {record['images']}: error ratio <= "
          f"{record['error_ratio_threshold']:.3f}, {record['metric']} >= {record['similarity_threshold']:.3f} "
          f"(defaults: 0.5 and 0.7)")
    for name, certificates in results.items():
        print(f"\n[{name}]")
        print("\n".join(table(certificates, truth)))
        for group in ("memorized", "never trained"):
            print(margins(certificates, truth, group))
        controls = [c for c in certificates if c["conditions"]["existence"]["control"] is not None]
        print(f"never-seen twin control ran for {len(controls)} image(s)" + "".join(
            f"\n  {c['image']['id']}: {truth[c['image']['id']]}, witness "
            f"{c['conditions']['similarity']['replications']} replications, twin "
            f"{c['conditions']['existence']['control']['replications']}, p = "
            f"{c['conditions']['existence']['control']['p_value']:.3g} -> {c['verdict']}" for c in controls))
    if args.work is None:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

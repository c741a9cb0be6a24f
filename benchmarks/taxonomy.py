"""Intended or unintended, measured: the classification table on the shipped reference models (issue 10).

    python benchmarks/taxonomy.py [--model NAME ...] [--never-trained 8] [--threads N] [--out DIR]

For each model, the owner's context is constructed from the manifest's ground truth, then the
images are certified with verifier's defaults under the default release-gate policy
(``configs/policies/default.toml``). The memorized images take four constructions in turn:

- ``explicit``: its training caption listed as an explicit prompt, public -> ``explicit_intended``;
- ``implicit``: its training caption listed as an implicit prompt, public -> ``implicit_intended``;
- ``private``: context without prompts, not public -> ``unintended``;
- ``none``: no context -> ``unintended`` (by default);

the first ``--never-trained`` never-trained images alternate between their caption as an explicit
prompt and no context -> no category. A training caption replicates its memorized image by
construction (the manifest's ground truth), so the expected categories hold when the machinery
does. Prints per image the construction, the verdict, the expected and measured category, the
owner prompt's and the decoded witness's replications and the gate result; then per model the
agreement, how many reproduced images got a readable prompt that replicates them, and the cost of
the prompts in denoiser evaluations.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONSTRUCTIONS = ("explicit", "implicit", "private", "none")
EXPECTED = {"explicit": "explicit_intended", "implicit": "implicit_intended", "private": "unintended",
            "none": "unintended"}


def context_rows(manifest: dict, folder: Path, never_trained: int) -> tuple[list[dict], dict[str, tuple[str, str]]]:
    """Manifest rows with constructed context, and per image id (construction, expected category or 'none')."""
    rows, expected = [], {}
    memorized = [image for image in manifest["images"] if image["memorized"]]
    held_out = [image for image in manifest["images"] if image["split"] == "held_out"][:never_trained]
    for number, image in enumerate(memorized):
        construction = CONSTRUCTIONS[number % len(CONSTRUCTIONS)]
        row = {"path": str(folder / image["file"]), "id": image["id"]}
        if construction in ("explicit", "implicit"):
            row |= {f"{construction}_prompts": [image["caption"]], "public": True}
        elif construction == "private":
            row |= {"public": False}
        rows.append(row)
        expected[image["id"]] = (construction, EXPECTED[construction])
    for number, image in enumerate(held_out):
        construction = "explicit" if number % 2 == 0 else "none"
        row = {"path": str(folder / image["file"]), "id": image["id"]}
        if construction == "explicit":
            row |= {"explicit_prompts": [image["caption"]], "public": True}
        rows.append(row)
        expected[image["id"]] = (construction, "none")
    return rows, expected


def measure(name: str, never_trained: int, out: Path | None) -> dict:
    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.policy import Policy
    from verifier.reference_models import load_manifest, reference_model_path

    folder, manifest = reference_model_path(name), load_manifest(name)
    rows, expected = context_rows(manifest, folder, never_trained)
    work = Path(tempfile.mkdtemp(prefix="verifier-taxonomy-"))
    listing = work / "protected.jsonl"
    listing.write_text("".join(json.dumps(row) + "\n" for row in rows))
    policy = Policy.read(REPO / "configs" / "policies" / "default.toml")
    started = time.perf_counter()
    certificates = certify(folder, [listing], out or work / "certs", VerifierConfig(), policy=policy)
    return {"model": name, "certificates": certificates, "expected": expected, "policy": policy,
            "seconds": time.perf_counter() - started}


def _replications(prompts: list[dict]) -> str:
    return ", ".join(f"{p['replications']}/{p['generations']}" for p in prompts) or "-"


def report(result: dict) -> dict:
    """Print one model's table; return its agreement counts."""
    print(f"\n{result['model']}: {len(result['certificates'])} images, {result['seconds']:.0f} s")
    print(f"{'image':28s} {'construction':12s} {'verdict':18s} {'expected':18s} {'measured':18s} "
          f"{'owner prompt':12s} {'decoded':10s} gate")
    agree, readable, reproduced, prompt_cost = 0, 0, 0, 0
    for c in result["certificates"]:
        construction, expected = result["expected"][c["image"]["id"]]
        measured = c["classification"]["category"] or "none"
        agree += measured == expected
        decoded = c["readable_prompt"]["prompts"]
        if c["verdict"] in ("memorized", "rarely_reproduced"):
            reproduced += 1
            readable += any(p["reproduces"] for p in decoded)
        prompt_cost += c["budget"]["prompt_denoiser_evaluations"]
        gate = result["policy"].judge(c)
        print(f"{c['image']['id'][:28]:28s} {construction:12s} {c['verdict']:18s} {expected:18s} {measured:18s} "
              f"{_replications(c['prompts']):12s} {_replications(decoded):10s} {'fail' if gate['fails'] else 'pass'}")
    count = len(result["certificates"])
    print(f"categories as constructed: {agree}/{count}; reproduced images with a readable prompt that replicates "
          f"them: {readable}/{reproduced}; prompt evaluations: {prompt_cost / count:.0f} per image on average")
    for c in result["certificates"]:
        for p in c["readable_prompt"]["prompts"]:
            print(f"  decoded {c['image']['id'][:28]:28s} {p['prompt']!r}: {p['replications']}/{p['generations']}")
    return {"model": result["model"], "agree": agree, "images": count, "readable": readable, "reproduced": reproduced}


def main() -> int:
    from verifier.reference_models import REFERENCE_MODELS, WHOLE_IMAGE_MODELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = [name for name in WHOLE_IMAGE_MODELS if name != "fixture-16px"]
    parser.add_argument("--model", nargs="+", default=models, choices=REFERENCE_MODELS)
    parser.add_argument("--never-trained", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="keep each model's certificates in OUT/<model>")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, defaults, policy configs/policies/default.toml, one run")
    totals = [report(measure(name, args.never_trained, None if args.out is None else args.out / name))
              for name in args.model]
    print("\nmodel                  categories as constructed   readable prompt replicates")
    for total in totals:
        print(f"{total['model']:22s} {total['agree']:>3d}/{total['images']:<3d}{'':21s} "
              f"{total['readable']:>3d}/{total['reproduced']}")
    return 0 if all(total["agree"] == total["images"] for total in totals) else 1


if __name__ == "__main__":
    raise SystemExit(main())

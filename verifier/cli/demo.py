"""``verifier demo``: certify a shipped reference model's images and compare with its ground truth."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from verifier.cli.base import EXIT_FOUND, EXIT_OK, main, run_guarded
from verifier.cli.options import build, config_options, print_table, progress_options, tracker
from verifier.reference_models import LORA_LAYOUTS, REFERENCE_LORAS, WHOLE_IMAGE_MODELS


@main.command()
@click.option("--out", default="verifier-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for certificates and report.")
@click.option("--model", "model_name", default="reference-32px", show_default=True,
              type=click.Choice(WHOLE_IMAGE_MODELS + tuple(REFERENCE_LORAS)),
              help="Which shipped reference model; a reference LoRA (reference-32px-lora) runs the differential "
                   "demo: its base with the LoRA against the base alone.")
@click.option("--layout", default="diffusers", show_default=True, type=click.Choice(tuple(LORA_LAYOUTS)),
              help="The reference LoRA's file layout (with a reference LoRA only).")
@click.option("--all", "everything", is_flag=True,
              help="Certify every image of the manifest (default: a representative subset, in minutes).")
@progress_options
@config_options
def demo(out, model_name, layout, everything, quiet, progress_log, config_file, **overrides):
    """Certify the shipped reference model's images and compare with its ground truth.

    By default a representative subset (every memorized image, 4 never-trained ones, one of each
    other kind), said on screen; --all certifies every image. Exit 0 only when every memorized image
    certified is `memorized` and every never-trained one `not_memorized` (a never-trained crop that
    re-frames a memorized one within the framing search's bounds: anything but `not_memorized`);
    images in between are shown, not scored.

    With a reference LoRA, every image is certified under the base with the LoRA and under the base alone
    (certify --baseline): exit 0 only when every image the LoRA introduced is `introduced` (and memorized
    under it), every image the base already reproduces `inherited`, and every never-trained one `neither`.

    \b
    Examples:
      verifier demo --out demo-certs/
      verifier demo --all --model reference-xl-32px
      verifier demo --model reference-32px-lora --layout kohya --out lora-demo/
    """
    config = run_guarded(lambda: build(config_file, **overrides))
    watcher = tracker(quiet, progress_log)
    if model_name in REFERENCE_LORAS:
        lora_demo(out, model_name, layout, everything, config, None if quiet else watcher.say)

    def run_demo():
        import json

        from verifier.api import certify as certify_images
        from verifier.certificate.store import atomic_write_bytes, prepare_output_folder
        from verifier.reference_models import load_manifest, reference_model_path

        folder = reference_model_path(model_name)
        manifest = load_manifest(model_name)
        prepare_output_folder(Path(out))
        chosen, said = demo_images(manifest, everything)
        click.echo(said, err=True)
        rows = "".join(json.dumps({"path": str(folder / image["file"]), "id": image["id"]}) + "\n"
                       for image in chosen)
        listing = Path(out) / "demo-images.jsonl"
        atomic_write_bytes(listing, rows.encode())
        return manifest, certify_images(folder, [listing], out, config, progress=None if quiet else watcher.say,
                                        tracker=watcher)

    manifest, certificates = run_guarded(run_demo)
    truth = {image["id"]: ground_truth(image, manifest) for image in demo_images(manifest, everything)[0]}
    print_table(certificates, truth)
    wrong = [c["image"]["id"] for c in certificates
             if truth[c["image"]["id"]][0] is not None and c["verdict"] not in truth[c["image"]["id"]][0]]
    scored = sum(1 for value in truth.values() if value[0] is not None)
    click.echo(f"{scored - len(wrong)}/{scored} scored verdicts agree with the ground truth; "
               f"certificates and report.html in {out}")
    if wrong:
        click.echo(f"disagreements: {', '.join(wrong)}", err=True)
    sys.exit(EXIT_FOUND if wrong else EXIT_OK)


def lora_demo(out, name: str, layout: str, everything: bool, config, say) -> None:
    """The differential demo on a reference LoRA: certify --baseline on its images, each category against the
    manifest's."""
    def run_demo():
        from verifier.fine_tune import certify_differential
        from verifier.models.lora import LoraSpec
        from verifier.reference_models import load_lora_manifest, reference_lora_path, reference_model_path

        manifest = load_lora_manifest(name)
        chosen = lora_demo_images(manifest, everything)
        folder = reference_lora_path(name, layout).parent
        click.echo(f"demo: {len(chosen)} of {len(manifest['images'])} images of {name} ({layout} layout) under "
                   f"{REFERENCE_LORAS[name]} with and without it" + ("" if everything else
                                                                      ", one or more of each category (--all: every image)"),
                   err=True)
        records, _ = certify_differential(reference_model_path(REFERENCE_LORAS[name]),
                                          [folder / image["file"] for image in chosen], out, config,
                                          loras=[LoraSpec(reference_lora_path(name, layout))], progress=say)
        return chosen, records

    chosen, records = run_guarded(run_demo)
    truth = {image["id"]: lora_ground_truth(image) for image in chosen}
    click.echo(f"{'image':28s} {'fine-tune':18s} {'baseline':18s} {'differential':14s} ground truth")
    wrong = []
    for record in records:
        image_id, category = record["image"]["id"], record["finding"]["category"]
        wanted, label = truth[image_id]
        agrees = wanted is None or (category == wanted and (wanted != "introduced" or
                                                            record["fine_tune"]["verdict"] == "memorized"))
        if not agrees:
            wrong.append(image_id)
        click.echo(f"{image_id:28s} {record['fine_tune']['verdict']:18s} {record['baseline']['verdict']:18s} "
                   f"{category:14s} {label}" + ("" if agrees else "  <- disagrees"))
    scored = sum(1 for wanted, _ in truth.values() if wanted is not None)
    click.echo(f"{scored - len(wrong)}/{scored} scored categories agree with the ground truth; each half in {out}")
    sys.exit(EXIT_FOUND if wrong else EXIT_OK)


def lora_ground_truth(image: dict) -> tuple[str | None, str]:
    """The differential category that agrees with a reference LoRA image's manifest entry (None: shown, not
    scored) and its label: introduced and inherited as measured with stock diffusers, never-trained images
    neither; images the LoRA saw but did not memorize, and those it removed, are shown."""
    category, split = image["category"], image["split"]
    if category in ("introduced", "inherited"):
        return category, f"{category} ({split})"
    if category == "neither" and split in ("held_out", "base_held_out"):
        return "neither", f"never trained ({split})"
    return None, f"{category} ({split})"


def lora_demo_images(manifest: dict, everything: bool) -> list[dict]:
    """Every image with ``everything``, else every one the LoRA introduced, the first of each other category and
    split, in manifest order."""
    images = manifest["images"]
    if everything:
        return images
    kinds: dict[tuple, dict] = {}
    for image in images:
        kinds.setdefault((image["category"], image["split"]), image)
    wanted = {image["id"] for image in images if image["category"] == "introduced"} | {
        image["id"] for image in kinds.values()}
    return [image for image in images if image["id"] in wanted]


NEVER_TRAINED_IN_SUBSET = 4
# An owner's copy framed within the framing search's bounds: anything but cleared (issue 22): memorized, or at
# worst reproduced rarely or inconclusive.
REFRAMED_COPY_VERDICTS = ("memorized", "rarely_reproduced", "inconclusive")


def ground_truth(image: dict, manifest: dict) -> tuple[tuple[str, ...] | None, str]:
    """The verdicts that agree with an image's ground truth (None: shown, not scored) and its label.

    Memorized images must be ``memorized`` and never-trained ones ``not_memorized``, except a never-trained
    crop that re-frames a memorized crop of the same photograph within the framing search's bounds
    (``reference_models.reframed_copy``, geometry only): by content it is an owner's copy of a memorized
    image, so every verdict but ``not_memorized`` agrees."""
    from verifier.reference_models import reframed_copy

    if image["memorized"]:
        return ("memorized",), f"memorized ({image['replications']}/{image['generations']})"
    if image["split"] != "held_out":
        return None, f"{image['split']} x{image['duplication']}"
    copy = reframed_copy(image, manifest)
    if copy is None:
        return ("not_memorized",), "never trained"
    return REFRAMED_COPY_VERDICTS, f"re-framed {copy['memorized_image'].split('-')[0]} x{copy['scale']:.2f}"


def demo_images(manifest: dict, everything: bool) -> tuple[list[dict], str]:
    """The images the demo certifies, and what it says about them: every image with ``everything``, else every
    memorized one, the first 4 never-trained ones and the first image of each other kind (seen once, each
    duplication count the model did not memorize), in manifest order."""
    images = manifest["images"]
    if everything:
        return images, f"demo: all {len(images)} images of the manifest"
    memorized = [image for image in images if image["memorized"]]
    never = [image for image in images if image["split"] == "held_out"]
    kinds: dict[tuple, dict] = {}
    for image in images:
        if not image["memorized"] and image["split"] != "held_out":
            kinds.setdefault((image["split"], image["duplication"]), image)
    wanted = {image["id"] for image in memorized + never[:NEVER_TRAINED_IN_SUBSET] + list(kinds.values())}
    chosen = [image for image in images if image["id"] in wanted]
    return chosen, (f"demo: {len(chosen)} of {len(images)} images, a representative subset: all {len(memorized)} "
                    f"memorized, {min(len(never), NEVER_TRAINED_IN_SUBSET)} of {len(never)} never trained, one of "
                    f"each of the {len(kinds)} other kinds (--all: every image)")

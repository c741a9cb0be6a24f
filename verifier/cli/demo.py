"""``verifier demo``: certify a shipped reference model's images and compare with its ground truth."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from verifier.cli import EXIT_FOUND, EXIT_OK, main, run_guarded
from verifier.cli.options import build, config_options, print_table, progress_options, tracker
from verifier.reference_models import REFERENCE_MODELS


@main.command()
@click.option("--out", default="verifier-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for certificates and report.")
@click.option("--model", "model_name", default="reference-32px", show_default=True,
              type=click.Choice(REFERENCE_MODELS), help="Which shipped reference model.")
@progress_options
@config_options
def demo(out, model_name, quiet, progress_log, config_file, **overrides):
    """Certify the shipped reference model's images and compare with its ground truth.

    Exit 0 only when every image the manifest calls memorized is certified `memorized` and every
    never-trained image `not_memorized`; images in between are shown, not scored.

    \b
    Example:
      verifier demo --out demo-certs/
    """
    config = run_guarded(lambda: build(config_file, **overrides))
    watcher = tracker(quiet, progress_log)

    def run_demo():
        import json

        from verifier.api import certify as certify_images
        from verifier.certificate.store import atomic_write_bytes, prepare_output_folder
        from verifier.reference_models import load_manifest, reference_model_path

        folder = reference_model_path(model_name)
        manifest = load_manifest(model_name)
        prepare_output_folder(Path(out))
        rows = "".join(json.dumps({"path": str(folder / image["file"]), "id": image["id"]}) + "\n"
                       for image in manifest["images"])
        listing = Path(out) / "demo-images.jsonl"
        atomic_write_bytes(listing, rows.encode())
        return manifest, certify_images(folder, [listing], out, config, progress=None if quiet else watcher.say,
                                        tracker=watcher)

    manifest, certificates = run_guarded(run_demo)
    truth = {}
    for image in manifest["images"]:
        if image["memorized"]:
            truth[image["id"]] = ("memorized", f"memorized ({image['replications']}/{image['generations']})")
        elif image["split"] == "held_out":
            truth[image["id"]] = ("not_memorized", "never trained")
        else:
            truth[image["id"]] = (None, f"{image['split']} x{image['duplication']}")
    print_table(certificates, truth)
    wrong = [c["image"]["id"] for c in certificates if truth[c["image"]["id"]][0] not in (None, c["verdict"])]
    scored = sum(1 for value in truth.values() if value[0] is not None)
    click.echo(f"{scored - len(wrong)}/{scored} scored verdicts agree with the ground truth; "
               f"certificates and report.html in {out}")
    if wrong:
        click.echo(f"disagreements: {', '.join(wrong)}", err=True)
    sys.exit(EXIT_FOUND if wrong else EXIT_OK)

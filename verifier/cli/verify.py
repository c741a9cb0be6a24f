"""``verifier verify CERTIFICATES [--model MODEL] [--images ...]``: re-check certificates as a third party."""

from __future__ import annotations

import sys

import click

from verifier.cli.base import EXIT_FOUND, EXIT_OK, main, progress, run_guarded
from verifier.cli.options import model_options


@main.command()
@click.argument("certificates", type=click.Path(exists=True))
@click.option("--model", default=None, help="The model to check against (default: each certificate's recorded source).")
@click.option("--images", multiple=True, help="Image files, folders or manifests, matched to certificates by sha256 "
                                              "(default: each certificate's recorded path). Repeatable.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--all-generations", is_flag=True,
              help="Regenerate every recorded generation, not only the replicating ones and the closest.")
@click.option("--calibration", default=None, type=click.Path(dir_okay=False),
              help="The calibration file a calibrated certificate names (default: its recorded path).")
@click.option("--public-key", default=None, type=click.Path(dir_okay=False),
              help="Ed25519 PEM public key: every certificate and the summary must carry a valid signature.")
@model_options
def verify(certificates, model, images, device, all_generations, calibration, public_key, allow_pickle, model_config,
           loras, embeddings):
    """Re-check CERTIFICATES (a run folder, a differential run folder of certify --baseline, or one <id>.json):
    hashes, arithmetic, verdict, regenerations.

    Prints every check; exits 0 only when all hold (tolerances: docs/certificates.md, "Verifying a certificate"),
    1 when any does not. The model is each certificate's recorded source with its recorded LoRA adapters unless
    --model / --lora name others (a copy elsewhere).

    \b
    Examples:
      verifier verify certs/
      verifier verify certs/photo.json --model ./my-sd-model --images photos/
    """
    def run():
        from verifier.fine_tune import is_differential_folder, verify_differential
        from verifier.verify import verify as verify_certificates

        common = dict(model=model, images=list(images) or None, device=device, all_generations=all_generations,
                      allow_pickle=allow_pickle, loras=loras or None, embeddings=embeddings or None,
                      model_config=model_config, public_key=public_key, progress=progress)
        if is_differential_folder(certificates):  # both halves, and the records that join them
            return verify_differential(certificates, **common)
        return verify_certificates(certificates, calibration=calibration, **common)

    result = run_guarded(run)
    for check in result.checks:
        click.echo(f"{'ok  ' if check.passed else 'FAIL'}  {check.image_id[:34]:34s} {check.name:26s} {check.detail}")
    failed = [check for check in result.checks if not check.passed]
    click.echo(f"{len(result.checks) - len(failed)}/{len(result.checks)} checks hold"
               + (f"; {len({c.image_id for c in failed})} certificate(s) or summary fail" if failed else ""))
    sys.exit(EXIT_OK if result.passed else EXIT_FOUND)

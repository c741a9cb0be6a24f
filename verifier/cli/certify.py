"""``verifier certify MODEL IMAGES... --out DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from verifier.cli import EXIT_FOUND, EXIT_OK, main, progress, run_guarded
from verifier.cli.options import FAIL_LEVELS, build, config_options, print_table


@main.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for certificates and report.")
@click.option("--allow-pickle", is_flag=True, help="Allow .ckpt/.bin/.pt/.pth weights (they can run code).")
@click.option("--model-config", default=None, type=click.Path(file_okay=False),
              help="Local diffusers folder giving configs for a single-file .safetensors MODEL.")
@click.option("--sign-key", default=None, type=click.Path(dir_okay=False),
              help="Ed25519 PEM private key: sign every certificate and the summary (<file>.sig).")
@config_options
def certify(model, images, out, allow_pickle, model_config, sign_key, config_file, **overrides):
    """Certify IMAGES (files, folders, CSV/JSONL manifests) against MODEL.

    MODEL is a diffusers folder of a supported family (StableDiffusionPipeline: SD 1.x/2.x;
    StableDiffusionXLPipeline: SDXL), detected from its model_index.json.

    \b
    Examples:
      verifier certify ./my-sd-model photos/ --out certs/
      verifier certify ./my-sdxl-model photos/ --out certs/
      verifier certify ./model.safetensors --model-config ./sd15-configs protected.csv --out certs/
      verifier certify ./model photos/ --out certs/ --config configs/sd15.toml --fail-on rarely_reproduced
      accelerate launch --num_processes 4 -m verifier certify ./model photos/ --out certs/
    """
    config = run_guarded(lambda: build(config_file, **overrides))

    def certify_all():
        from verifier.api import certify as certify_images

        return certify_images(model, list(images), out, config, allow_pickle=allow_pickle,
                              model_config=model_config, sign_key=sign_key, progress=progress)

    certificates = run_guarded(certify_all)
    from accelerate import PartialState

    if PartialState().is_main_process:  # under `accelerate launch`, one table for the run
        print_table(certificates)
        click.echo(f"{len(certificates)} certificates in {out}; report: {Path(out) / 'report.html'}")
    failing = [c for c in certificates if c["verdict"] in FAIL_LEVELS[config.fail_on]]
    sys.exit(EXIT_FOUND if failing else EXIT_OK)

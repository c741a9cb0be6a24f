"""The ``verifier`` command: a thin layer over ``verifier.api.certify``.

Exit codes: 0 nothing at or above the --fail-on level (or the demo agrees with its ground truth),
1 something is (or the demo disagrees), 2 usage error, 3 runtime error.
Heavy libraries are imported inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_OK, EXIT_FOUND, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3
FAIL_LEVELS = {"memorized": ("memorized",), "rarely_reproduced": ("memorized", "rarely_reproduced"), "never": ()}


class UsageFailure(click.UsageError):
    exit_code = EXIT_USAGE


def _run(action):
    """Run ``action`` mapping verifier's errors onto the documented exit codes."""
    from verifier.config import ConfigError
    from verifier.images import ImageInputError
    from verifier.model import ModelLoadError
    from verifier.similarity import SimilarityError

    try:
        return action()
    except (ConfigError, ImageInputError) as error:
        raise UsageFailure(str(error)) from None
    except (ModelLoadError, SimilarityError, RuntimeError, OSError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_RUNTIME)


def _progress(message: str) -> None:
    click.echo(message, err=True)


CONFIG_OPTIONS = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML or JSON config file (see configs/)."),
    click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps."),
    click.option("--dtype", default=None, help="float32 (default), float16 or bfloat16."),
    click.option("--similarity", default=None, help="ssim (default), lpips or sscd."),
    click.option("--similarity-threshold", type=float, default=None, help="Override the metric's default threshold."),
    click.option("--inversion-space", default=None, help="token_embeddings (default) or hidden_states."),
    click.option("--inversion-steps", type=int, default=None, help="Adam steps per image."),
    click.option("--generations", type=int, default=None, help="Seeds per guidance scale."),
    click.option("--batch-size", type=int, default=None, help="Images per batch (does not change results)."),
    click.option("--seed", type=int, default=None, help="Run seed."),
    click.option("--lpips-weights", default=None, help="torchvision AlexNet weights for --similarity lpips."),
    click.option("--sscd-weights", default=None, help="SSCD TorchScript file for --similarity sscd."),
    click.option("--fail-on", type=click.Choice(sorted(FAIL_LEVELS)), default=None,
                 help="Exit 1 when any image reaches this verdict (default memorized; rarely_reproduced includes "
                      "memorized; never: always 0)."),
]


def config_options(function):
    for option in reversed(CONFIG_OPTIONS):
        function = option(function)
    return function


def _build_config(config_file, **overrides):
    from verifier.config import build_config

    return build_config(config_file, overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="verifier")
def main():
    """Prompt-free memorization certificates for text-to-image diffusion models."""


@main.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for certificates and report.")
@click.option("--allow-pickle", is_flag=True, help="Allow .ckpt/.bin/.pt/.pth weights (they can run code).")
@click.option("--model-config", default=None, type=click.Path(file_okay=False),
              help="Local diffusers folder giving configs for a single-file .safetensors MODEL.")
@config_options
def certify(model, images, out, allow_pickle, model_config, config_file, **overrides):
    """Certify IMAGES (files, folders, CSV/JSONL manifests) against MODEL.

    \b
    Examples:
      verifier certify ./my-sd-model photos/ --out certs/
      verifier certify ./model.safetensors --model-config ./sd15-configs protected.csv --out certs/
      verifier certify ./model photos/ --out certs/ --config configs/sd15.toml --fail-on rarely_reproduced
    """
    config = _run(lambda: _build_config(config_file, **overrides))
    from verifier.api import certify as certify_images

    certificates = _run(lambda: certify_images(model, list(images), out, config, allow_pickle=allow_pickle,
                                               model_config=model_config, progress=_progress))
    _print_table(certificates)
    failing = [c for c in certificates if c["verdict"] in FAIL_LEVELS[config.fail_on]]
    click.echo(f"{len(certificates)} certificates in {out}; report: {Path(out) / 'report.html'}")
    sys.exit(EXIT_FOUND if failing else EXIT_OK)


def _print_table(certificates, truth: dict | None = None) -> None:
    header = f"{'image':34s} {'verdict':18s} {'err.ratio':>9s} {'repl.':>7s} {'best sim':>8s}"
    if truth is not None:
        header += f"  {'ground truth':22s} {'agrees':6s}"
    click.echo(header)
    for c in certificates:
        probability = c["conditions"]["probability"]
        best = next(s for s in probability["per_scale"] if s["guidance_scale"] == probability["best_guidance_scale"])
        line = (f"{c['image']['id'][:34]:34s} {c['verdict']:18s} {c['conditions']['existence']['value']:9.3f} "
                f"{best['replications']:>3d}/{best['generations']:<3d} {c['conditions']['similarity']['value']:8.3f}")
        if truth is not None:
            expected, label = truth[c["image"]["id"]]
            agrees = "-" if expected is None else ("yes" if c["verdict"] == expected else "NO")
            line += f"  {label:22s} {agrees:6s}"
        click.echo(line)


@main.command()
@click.option("--out", default="verifier-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for certificates and report.")
@click.option("--model", "model_name", default="reference-32px", show_default=True,
              type=click.Choice(["reference-32px", "fixture-16px"]), help="Which shipped reference model.")
@config_options
def demo(out, model_name, config_file, **overrides):
    """Certify the shipped reference model's images and compare with its ground truth.

    Exit 0 only when every image the manifest calls memorized is certified `memorized` and every
    never-trained image `not_memorized`; images in between are shown, not scored.

    \b
    Example:
      verifier demo --out demo-certs/
    """
    import json

    from verifier.reference_models import load_manifest, reference_model_path

    config = _run(lambda: _build_config(config_file, **overrides))
    from verifier.api import certify as certify_images

    folder = reference_model_path(model_name)
    manifest = load_manifest(model_name)
    rows = "\n".join(json.dumps({"path": str(folder / image["file"]), "id": image["id"]}) for image in manifest["images"])
    listing = Path(out) / "demo-images.jsonl"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text(rows + "\n")
    certificates = _run(lambda: certify_images(folder, [listing], out, config, progress=_progress))
    truth = {}
    for image in manifest["images"]:
        if image["memorized"]:
            truth[image["id"]] = ("memorized", f"memorized ({image['replications']}/{image['generations']})")
        elif image["split"] == "held_out":
            truth[image["id"]] = ("not_memorized", "never trained")
        else:
            truth[image["id"]] = (None, f"{image['split']} x{image['duplication']}")
    _print_table(certificates, truth)
    wrong = [c["image"]["id"] for c in certificates if truth[c["image"]["id"]][0] not in (None, c["verdict"])]
    scored = sum(1 for value in truth.values() if value[0] is not None)
    click.echo(f"{scored - len(wrong)}/{scored} scored verdicts agree with the ground truth; "
               f"certificates and report.html in {out}")
    if wrong:
        click.echo(f"disagreements: {', '.join(wrong)}", err=True)
    sys.exit(EXIT_FOUND if wrong else EXIT_OK)


if __name__ == "__main__":
    main()

"""``verifier certify MODEL IMAGES... --out DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from verifier.cli.base import EXIT_FOUND, EXIT_OK, main, run_guarded
from verifier.cli.options import (FAIL_LEVELS, build, config_options, model_options, print_table, progress_options,
                                  tracker)
from verifier.registry import MODEL_FAMILIES


@main.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for certificates and report.")
@model_options
@click.option("--sign-key", default=None, type=click.Path(dir_okay=False),
              help="Ed25519 PEM private key: sign every certificate and the summary (<file>.sig).")
@click.option("--policy", "policy_file", default=None, type=click.Path(dir_okay=False),
              help="Release-gate policy (TOML, e.g. configs/policies/default.toml): which categories of memorization "
                   "(unintended, implicit_intended, explicit_intended) fail the gate; replaces --fail-on.")
@click.option("--baseline", default=None, is_flag=False, flag_value="", metavar="[MODEL]",
              help="Also certify every image under a baseline and say, per image, whether the fine-tune introduced, "
                   "inherited or removed its reproduction (docs/families.md, 'The differential certificate'). "
                   "Without MODEL: the same base without the --lora adapters. OUT then holds fine-tune/, baseline/ "
                   "and differential/.")
@progress_options
@config_options
def certify(model, images, out, allow_pickle, model_config, loras, embeddings, sign_key, policy_file, baseline, quiet,
            progress_log, config_file, **overrides):
    """Certify IMAGES (files, folders, CSV/JSONL manifests) against MODEL.

    MODEL is a diffusers folder of a supported family ({families}; docs/families.md), detected
    from its model_index.json.

    \b
    A CSV/JSONL manifest may give each image the owner's context (entity, explicit_prompts,
    implicit_prompts, public): every prompt is tested like the witness and each reproduced image
    is classified as explicit_intended, implicit_intended or unintended (docs/context-and-policy.md,
    "Intended or unintended").

    \b
    Examples:
      verifier certify ./my-sd-model photos/ --out certs/
      verifier certify ./my-sdxl-model photos/ --out certs/
      verifier certify ./model.safetensors --model-config ./sd15-configs protected.csv --out certs/
      verifier certify ./sd15 photos/ --lora ./my-style.safetensors:0.8 --out certs/
      verifier certify ./sd15 photos/ --lora ./my-style.safetensors --baseline --out certs/
      verifier certify ./model photos/ --out certs/ --config configs/sd15.toml --fail-on rarely_reproduced
      verifier certify ./model protected.jsonl --out certs/ --policy configs/policies/default.toml
      accelerate launch --num_processes 4 -m verifier certify ./model photos/ --out certs/
    """
    config = run_guarded(lambda: build(config_file, **overrides))
    policy = run_guarded(lambda: _policy(policy_file, overrides.get("fail_on")))
    watcher = tracker(quiet, progress_log)
    if baseline is not None:
        _certify_differential(model, images, out, config, allow_pickle, model_config, loras, embeddings, sign_key,
                              policy, baseline or None, None if quiet else watcher.say)

    def certify_all():
        from verifier.api import certify as certify_images

        return certify_images(model, list(images), out, config, allow_pickle=allow_pickle,
                              model_config=model_config, loras=loras, embeddings=embeddings, sign_key=sign_key,
                              progress=None if quiet else watcher.say,
                              policy=policy, tracker=watcher)

    certificates = run_guarded(certify_all)
    from accelerate import PartialState

    if PartialState().is_main_process:  # under `accelerate launch`, one table for the run
        print_table(certificates)
        click.echo(f"{len(certificates)} certificates in {out}; report: {Path(out) / 'report.html'}")
    if policy is not None:
        failing = [c for c in certificates if policy.judge(c)["fails"]]
        if PartialState().is_main_process:
            click.echo(f"policy {policy_file}: {len(failing)} image(s) fail the gate"
                       + (f" ({', '.join(c['image']['id'] for c in failing[:5])}"
                          + (", ..." if len(failing) > 5 else "") + ")" if failing else ""))
    else:
        failing = [c for c in certificates if c["verdict"] in FAIL_LEVELS[config.fail_on]]
    sys.exit(EXIT_FOUND if failing else EXIT_OK)



# The families named in the help are the registry's, so the help cannot fall behind what loads.
certify.help = certify.help.format(families=", ".join(MODEL_FAMILIES.names()))


def _certify_differential(model, images, out, config, allow_pickle, model_config, loras, embeddings, sign_key, policy,
                          baseline, say) -> None:
    """``--baseline``: both halves, the differential table, and the exit code (1 where the fine-tune half's gate or
    verdicts fail as a plain run's would, or where the policy's [differential] table fails an image)."""
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        raise click.UsageError("--baseline runs in one process; run it without accelerate launch")

    def certify_both():
        from verifier.fine_tune import certify_differential

        return certify_differential(model, list(images), out, config, loras=loras, embeddings=embeddings,
                                    baseline=baseline,
                                    allow_pickle=allow_pickle, model_config=model_config, sign_key=sign_key,
                                    progress=say, policy=policy)

    records, fine_tune = run_guarded(certify_both)
    click.echo(f"{'image':28s} {'fine-tune':18s} {'baseline':18s} {'p':>9s}  differential")
    for record in records:
        finding = record["finding"]
        click.echo(f"{record['image']['id']:28s} {record['fine_tune']['verdict']:18s} "
                   f"{record['baseline']['verdict']:18s} {finding['p_value']:9.2g}  {finding['category']}")
    click.echo(f"{len(records)} differential records in {Path(out) / 'differential'}; each half's certificates and "
               f"report in {Path(out) / 'fine-tune'} and {Path(out) / 'baseline'}")
    if policy is not None:  # the fine-tune half judged as a plain run's certificates are, and each category
        failing = {record["image"]["id"] for record in records if policy.judge_differential(record)["fails"]} | {
            certificate["image"]["id"] for certificate in fine_tune if policy.judge(certificate)["fails"]}
        click.echo(f"policy: {len(failing)} image(s) fail the gate")
    else:
        failing = [c for c in fine_tune if c["verdict"] in FAIL_LEVELS[config.fail_on]]
    sys.exit(EXIT_FOUND if failing else EXIT_OK)


def _policy(policy_file, fail_on):
    """The release-gate policy, read before any model is loaded; it and --fail-on are two answers to one question."""
    if policy_file is None:
        return None
    from verifier.policy import Policy, PolicyError

    if fail_on is not None:
        raise PolicyError(f"--policy {policy_file!r} and --fail-on {fail_on!r} both decide the exit code; give one")
    return Policy.read(policy_file)

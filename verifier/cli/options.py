"""Options shared by the commands that run a certification (certify, demo), and the verdict table."""

from __future__ import annotations

import click

FAIL_LEVELS = {"memorized": ("memorized",), "rarely_reproduced": ("memorized", "rarely_reproduced"), "never": ()}

CONFIG_OPTIONS = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML or JSON config file (see configs/)."),
    click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps."),
    click.option("--dtype", default=None, help="The weights' dtype: float32 (default), float16 or bfloat16."),
    click.option("--autocast", default=None,
                 help="Run the denoiser and sampling under torch.autocast in bfloat16 or float16, the weights, free "
                      "variables and loss staying in --dtype/float32; off (default). docs/gpu.md says when to use it."),
    click.option("--similarity", default=None, help="ssim (default), lpips or sscd."),
    click.option("--similarity-threshold", type=float, default=None, help="Override the metric's default threshold."),
    click.option("--inversion-space", default=None, help="token_embeddings (default), shared_token_embeddings or hidden_states."),
    click.option("--inversion-steps", type=int, default=None,
                 help="Adam steps every image gets (60); images whose error still falls go on."),
    click.option("--inversion-max-steps", type=int, default=None,
                 help="The most Adam steps any image gets (4 x --inversion-steps; equal to it: a fixed budget)."),
    click.option("--error-form", type=click.Choice(["native", "x0"]), default=None,
                 help="Prediction error in the model's own loss (native, default) or on the implied clean latent (x0)."),
    click.option("--generations", type=int, default=None, help="Seeds per guidance scale at the first look (16)."),
    click.option("--sampling-doublings", type=int, default=None,
                 help="Times the best scale's seeds may double while the rate is undecided (3; 0: fixed sample)."),
    click.option("--replication-bound", type=float, default=None,
                 help="The upper bound on the replication probability a not_memorized verdict must reach (e.g. 0.1); "
                      "seeds double at every guidance scale until it does. Default: the bound 16 seeds give."),
    click.option("--decode-witness/--no-decode-witness", default=None,
                 help="Where the witness reproduced an image, decode it into readable text and test that like a "
                      "prompt (default on; docs/context-and-policy.md, \"Readable evidence\")."),
    click.option("--framing-search/--no-framing-search", default=None,
                 help="Where nothing replicated at the owner's framing, search framings of the owner's image (scale, "
                      "shift, mirror; default on; docs/owner-copies.md)."),
    click.option("--framing-mirror/--no-framing-mirror", default=None,
                 help="The framing search's screen also tries every candidate framing mirrored left-right, for "
                      "mirrored copies (default off: 25 more candidates in the screen per clean verdict; "
                      "docs/owner-copies.md)."),
    click.option("--batch-size", type=int, default=None, help="Images per batch (does not change results)."),
    click.option("--denoiser-batch", type=int, default=None,
                 help="Rows per denoiser call (default: from the free memory, measured; does not change results)."),
    click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
                 help="Recompute the denoiser's activations in inversion's backward pass: less memory, more time."),
    click.option("--seed", type=int, default=None, help="Run seed (0 to 2**32-1)."),
    click.option("--lpips-weights", default=None, help="torchvision AlexNet weights for --similarity lpips."),
    click.option("--sscd-weights", default=None, help="SSCD TorchScript file for --similarity sscd."),
    click.option("--calibration", default=None, type=click.Path(dir_okay=False),
                 help="A `verifier calibrate` file for this model: its thresholds replace the defaults."),
    click.option("--fail-on", type=click.Choice(sorted(FAIL_LEVELS)), default=None,
                 help="Exit 1 when any image reaches this verdict (default memorized; rarely_reproduced includes "
                      "memorized; never: always 0)."),
]


PROGRESS_OPTIONS = [
    click.option("--quiet", is_flag=True, help="No progress bars and no line per image (the final table stays)."),
    click.option("--progress-log", default=None, type=click.Path(dir_okay=False),
                 help="Append progress as JSON lines to this file (images done, stage, ETA): for CI."),
]


def progress_options(function):
    for option in reversed(PROGRESS_OPTIONS):
        function = option(function)
    return function


def tracker(quiet: bool, progress_log):
    """Progress bars on standard error when it is a terminal and not ``quiet``; the JSON-lines log if asked."""
    import sys

    from verifier.cli.base import UsageFailure
    from verifier.progress import RunProgress

    try:
        return RunProgress(bars=not quiet and sys.stderr.isatty(), log=progress_log)
    except OSError as error:
        raise UsageFailure(f"--progress-log {progress_log!r} cannot be written: {error.strerror or error}") from None


def config_options(function):
    for option in reversed(CONFIG_OPTIONS):
        function = option(function)
    return function


def build(config_file, **overrides):
    from verifier.config import build_config

    return build_config(config_file, overrides)


def _number(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "n/a"


def print_table(certificates, truth: dict | None = None) -> None:
    header = f"{'image':34s} {'verdict':18s} {'err.ratio':>9s} {'repl.':>7s} {'best sim':>8s}  {'category':17s} {'part':4s}"
    if truth is not None:
        header += f"  {'ground truth':22s} {'agrees':6s}"
    click.echo(header)
    for c in certificates:
        probability = c["conditions"]["probability"]
        best = next(s for s in probability["per_scale"] if s["guidance_scale"] == probability["best_guidance_scale"])
        line = (f"{c['image']['id'][:34]:34s} {c['verdict']:18s} {_number(c['conditions']['existence']['value']):>9s} "
                f"{best['replications']:>3d}/{best['generations']:<3d} {_number(c['conditions']['similarity']['value']):>8s}"
                f"  {c['classification']['category'] or '-':17s} {'yes' if c['part_replication']['found'] else '-':4s}")
        if truth is not None:
            expected, label = truth[c["image"]["id"]]
            agrees = "-" if expected is None else ("yes" if c["verdict"] in expected else "NO")
            line += f"  {label:22s} {agrees:6s}"
        click.echo(line)

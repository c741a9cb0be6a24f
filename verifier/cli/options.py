"""Options shared by the commands that run a certification (certify, demo), and the verdict table."""

from __future__ import annotations

import click

FAIL_LEVELS = {"memorized": ("memorized",), "rarely_reproduced": ("memorized", "rarely_reproduced"), "never": ()}



def _config_option(field) -> click.Option:
    """The option of a config field made with ``verifier.config.option``: its help, the values allowed (a tuple, or
    a registry's names) and the default all come from the field, so the help cannot fall behind the config."""
    from verifier import registry

    flag = "--" + field.name.replace("_", "-")
    choices = field.metadata["choices"]
    if isinstance(choices, str):
        choices = getattr(registry, choices).names()
    text = field.metadata["help"] + (f" One of: {', '.join(choices)}." if choices else "")
    if isinstance(field.default, bool):
        return click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None,
                            help=f"{text} Default: {'on' if field.default else 'off'}.")
    kind = int if str(field.type).startswith("int") else float if str(field.type).startswith("float") else str
    default = "" if field.default is None else f" Default: {field.default}."
    return click.option(flag, field.name, type=kind, default=None, help=text + default)


def _config_options() -> list:
    from dataclasses import fields

    from verifier.config import VerifierConfig

    return [click.option("--config", "config_file", type=click.Path(dir_okay=False),
                         help="TOML or JSON config file (see configs/); options given here override it.")] + [
        _config_option(field) for field in fields(VerifierConfig) if "help" in field.metadata]


CONFIG_OPTIONS = _config_options()


def _lora_specs(context, parameter, values):
    """``--lora PATH[:SCALE]`` values as ``LoraSpec``s; a bad scale is a usage error naming the argument."""
    from verifier.models.lora import LoraSpec

    try:
        return tuple(LoraSpec.parse(value) for value in values)
    except ValueError as error:
        raise click.BadParameter(str(error), context, parameter) from None


def _embedding_specs(context, parameter, values):
    """``--textual-inversion PATH[:TOKEN]`` values as ``EmbeddingSpec``s; a bad token is a usage error."""
    from verifier.models.textual_inversion import EmbeddingSpec

    try:
        return tuple(EmbeddingSpec.parse(value) for value in values)
    except ValueError as error:
        raise click.BadParameter(str(error), context, parameter) from None


MODEL_OPTIONS = [
    click.option("--allow-pickle", is_flag=True, help="Allow .ckpt/.bin/.pt/.pth weights (they can run code)."),
    click.option("--model-config", default=None, type=click.Path(file_okay=False),
                 help="Local diffusers folder giving configs for a single-file .safetensors MODEL."),
    click.option("--lora", "loras", multiple=True, metavar="PATH[:SCALE]", callback=_lora_specs,
                 help="A LoRA .safetensors file (diffusers/PEFT or kohya layout) applied to MODEL with diffusers' "
                      "load_lora_weights, at SCALE (default 1; -10..10). Repeatable; applied in order."),
    click.option("--textual-inversion", "embeddings", multiple=True, metavar="PATH[:TOKEN]", callback=_embedding_specs,
                 help="A textual-inversion embedding (SD 1.x/2.x, SDXL) loaded with diffusers' "
                      "load_textual_inversion under TOKEN (default: the file's own, else its name). Repeatable."),
]


def model_options(function):
    """The options that say what MODEL is: pickle allowed, configs of a single file, LoRA adapters and
    textual-inversion embeddings on it."""
    for option in reversed(MODEL_OPTIONS):
        function = option(function)
    return function


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

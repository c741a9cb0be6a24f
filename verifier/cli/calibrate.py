"""``verifier calibrate MODEL NON_MEMBERS... --out calibration.json``: thresholds measured on the model itself."""

from __future__ import annotations

import sys

import click

from verifier.cli.base import EXIT_OK, main, progress, run_guarded
from verifier.cli.options import build, config_options, model_options


@main.command()
@click.argument("model")
@click.argument("non_members", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The calibration file to write (JSON).")
@click.option("--false-alarm-rate", type=float, default=0.05, show_default=True,
              help="Target probability that a non-member passes a threshold (bounded at the config's confidence).")
@click.option("--work", default=None, type=click.Path(file_okay=False),
              help="Folder for the non-members' certificates (default: OUT.certificates/); a rerun resumes there.")
@model_options
@config_options
def calibrate(model, non_members, out, false_alarm_rate, work, allow_pickle, model_config, loras, embeddings,
              config_file, **overrides):
    """Measure thresholds on NON_MEMBERS, images known not to be in MODEL's training set.

    Certifies them with the config (the same one later runs must use), then sets the existence and
    similarity thresholds at the order statistic that bounds the false-alarm rate at the config's
    confidence. 59 non-members allow a 5% rate at 95% confidence, 29 a 10% rate, 299 a 1% rate.
    Use the result with `verifier certify ... --calibration FILE`.

    \b
    Examples:
      verifier calibrate ./my-sd-model never-trained/ --out calibration.json
      verifier calibrate ./my-sd-model holdout.csv --out cal.json --false-alarm-rate 0.1 --config configs/sd15.toml
    """
    config = run_guarded(lambda: build(config_file, **overrides))

    def run():
        from verifier.calibrate import calibrate as calibrate_model

        return calibrate_model(model, list(non_members), out, config, rate=false_alarm_rate, work=work,
                               allow_pickle=allow_pickle, model_config=model_config, loras=loras,
                               embeddings=embeddings, progress=progress)

    record = run_guarded(run)
    click.echo(f"calibration on {record['images']} non-members (false-alarm rate <= {record['false_alarm_rate']:g} at "
               f"{100 * record['confidence']:g}% confidence, order statistic {record['rank']}):")
    click.echo(f"  existence: error ratio <= {record['error_ratio_threshold']:.4f}")
    click.echo(f"  similarity ({record['metric']}): replication at {record['similarity_threshold']:.4f} "
               f"({record['metric_direction']})")
    click.echo(f"written to {out}; use it with: verifier certify MODEL IMAGES --out DIR --calibration {out}")
    sys.exit(EXIT_OK)

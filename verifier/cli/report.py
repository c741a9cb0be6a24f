"""``verifier report DIR``: write summary.json and report.html again from the certificates in DIR."""

from __future__ import annotations

from pathlib import Path

import click

from verifier.cli.base import main, run_guarded


@main.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--policy", "policy_file", default=None, type=click.Path(dir_okay=False),
              help="Release-gate policy (TOML) whose result per image the summary records.")
def report(folder, policy_file):
    """Rebuild FOLDER's summary.json and report.html from its certificates (nothing is re-run).

    The certificates must be of this verifier's schema version; older ones are named, with how to
    upgrade them (re-certify).

    \b
    Examples:
      verifier report certs/
      verifier report certs/ --policy configs/policies/default.toml
    """
    from verifier.listing import rebuild
    from verifier.policy import Policy

    policy = run_guarded(lambda: Policy.read(policy_file)) if policy_file else None
    certificates = run_guarded(lambda: rebuild(folder, policy))
    click.echo(f"{len(certificates)} certificates; wrote {Path(folder) / 'summary.json'} and "
               f"{Path(folder) / 'report.html'}")

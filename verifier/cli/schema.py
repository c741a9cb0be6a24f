"""``verifier schema [certificate|summary]``: print the published JSON Schema."""

from __future__ import annotations

import json

import click

from verifier.cli.base import main


@main.command()
@click.argument("kind", type=click.Choice(["certificate", "summary"]), default="certificate")
def schema(kind):
    """Print the JSON Schema (draft 2020-12) that every certificate or summary verifier writes obeys.

    \b
    Examples:
      verifier schema > certificate.schema.json
      verifier schema summary
    """
    from verifier.certificate.schema import json_schema

    click.echo(json.dumps(json_schema(kind), indent=2))

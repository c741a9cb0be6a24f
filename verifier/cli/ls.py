"""``verifier ls DIR [--json]``: the verdict table of a run folder, without re-running anything."""

from __future__ import annotations

import json

import click

from verifier.cli.base import main, run_guarded


@main.command(name="ls")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per certificate, as a list.")
def ls(folder, as_json):
    """List the certificates in FOLDER: id, verdict, error ratio, replication rate, category, replicated part.

    Certificates of older schema versions are listed from the fields every version has, and say so.

    \b
    Examples:
      verifier ls certs/
      verifier ls certs/ --json | jq '.[] | select(.verdict == "memorized") | .id'
    """
    from verifier.listing import rows

    listed = run_guarded(lambda: rows(folder))
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    click.echo(f"{'image':34s} {'verdict':18s} {'err.ratio':>9s} {'repl.rate':>9s}  {'category':17s} {'part':4s} schema")
    for row in listed:
        ratio = "n/a" if row["error_ratio"] is None else f"{row['error_ratio']:.3f}"
        rate = "n/a" if row["replication_rate"] is None else f"{row['replication_rate']:.2f}"
        click.echo(f"{str(row['id'])[:34]:34s} {str(row['verdict']):18s} {ratio:>9s} {rate:>9s}  "
                   f"{row['category'] or '-':17s} {'yes' if row['part_found'] else '-':4s} {row['schema_version']}")
        if row["problem"]:
            click.echo(f"  {row['certificate']}: {row['problem']}")

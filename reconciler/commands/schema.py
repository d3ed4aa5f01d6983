"""``snapctl schema``: the JSON Schema of the manifest format."""

from __future__ import annotations

from pathlib import Path

import click

from .output import handle_errors, out


@click.command()
@click.option(
    "--out",
    "out_path",
    type=click.Path(),
    metavar="PATH",
    help="Write the schema to PATH (a directory: PATH/snapctl.schema.json) instead of printing it.",
)
@handle_errors
def schema(out_path):
    """Print the JSON Schema of the manifest format (for editors), or write it with --out
    where your manifests can point at it."""
    from ..manifest import manifest_json_schema_bytes, write_manifest_schema

    if out_path is None:
        click.echo(manifest_json_schema_bytes().decode(), nl=False)
        return
    import os

    written = write_manifest_schema(out_path)
    line = f"# yaml-language-server: $schema={Path(os.path.relpath(written.resolve(), Path('manifests').resolve())).as_posix()}"
    out(
        f"Wrote the manifest schema to {written}.\n"
        f"Editors (yaml-language-server) check a manifest in manifests/ against it with this first line:\n  {line}\n"
    )

"""``snapctl schema``: the JSON Schema of the manifest format."""

from __future__ import annotations

import click

from .output import print_json


@click.command()
def schema():
    """Print the JSON Schema of the manifest format (for editors)."""
    from ..manifest import manifest_json_schema

    print_json(manifest_json_schema())

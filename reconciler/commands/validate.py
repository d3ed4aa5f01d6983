"""``snapctl validate``: check manifests offline."""

from __future__ import annotations

import sys

import click

from ..style import Style
from .options import load, output_options, paths_argument
from .output import colour_enabled, handle_errors, out, print_json, print_warnings


@click.command(short_help="Check manifests offline.")
@paths_argument
@output_options
@handle_errors
def validate(paths, as_json, no_color):
    """Check manifests offline: syntax, every API rule, duplicates, environment variables.

    Needs no secret values: a `${env:NAME}` whose variable is not set is a
    warning here (plan and apply need it where a task uses it).

    PATHS are files or directories of *.yaml / *.yml (default: manifests/).
    """
    from ..manifest import SECRETS_OPTIONAL

    style = Style(colour_enabled(sys.stdout, no_color))
    manifests = load(paths, as_json=as_json, command="validate", secrets=SECRETS_OPTIONAL)
    if as_json:
        from ..render import diagnostic_document  # the plan layer, for JSON only

        print_json(
            {
                "format_version": 1,
                "type": "validate",
                "valid": True,
                "tasks": len(manifests.tasks),
                "files": manifests.files,
                "warnings": [str(w) for w in manifests.warnings],
                "diagnostics": [diagnostic_document(w) for w in manifests.warnings],
            }
        )
        return
    print_warnings(manifests, Style(colour_enabled(sys.stderr, no_color)))
    out(style(f"Success! {len(manifests.tasks)} task(s) in {len(manifests.files)} file(s) are valid.\n", "green"))

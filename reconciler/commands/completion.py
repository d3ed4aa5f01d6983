"""``snapctl completion SHELL``: the shell completion script (Click's), to source or install."""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


@click.command(short_help="Print the shell completion script for bash, zsh or fish.")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell):
    """Print the completion script of SHELL (bash, zsh or fish) on stdout.

    \b
    bash:  eval "$(snapctl completion bash)"          (in ~/.bashrc)
    zsh:   eval "$(snapctl completion zsh)"           (in ~/.zshrc)
    fish:  snapctl completion fish > ~/.config/fish/completions/snapctl.fish

    It completes commands, options and choices. The script calls snapctl with
    _SNAPCTL_COMPLETE set (``_SNAPCTL_COMPLETE=bash_source snapctl`` prints the
    same script).
    """
    from click.shell_completion import get_completion_class

    from ..cli import cli

    completer = get_completion_class(shell)
    assert completer is not None  # every choice is a shell Click supports
    click.echo(completer(cli, {}, "snapctl", "_SNAPCTL_COMPLETE").source().rstrip("\n"))

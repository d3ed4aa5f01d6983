"""The ``snapctl`` executable's entry point (also ``python -m reconciler``).

``snapctl --version`` is answered here, before the command-line framework is
imported: scripts and editors ask for it all day. Everything else is
:func:`reconciler.cli.main`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run snapctl with ``argv`` (default: the process's arguments); return its exit status."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        from . import __version__

        sys.stdout.write(f"snapctl {__version__}\n")
        return 0
    from .cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())

"""The subcommands of ``snapctl``, one module per command or tight group of commands.

Each command parses its flags, calls the library and prints. The shared options and
steps live in :mod:`.options`, the terminal output (colour, JSON, progress, errors) in
:mod:`.output`; command modules use those two and never each other. ``reconciler.cli``
imports a command's module only when that command runs.
"""

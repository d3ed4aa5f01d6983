"""Terminal styling, apart from the renderers so that commands which print no plan
(``validate``, ``state list``...) do not load the plan layer to colour a line."""

from __future__ import annotations

_ANSI = {"cyan": "36", "green": "32", "yellow": "33", "magenta": "35", "red": "31", "bold": "1", "dim": "2"}


class Style:
    """ANSI styling that is a no-op when colour is off."""

    def __init__(self, colour: bool):
        self.colour = colour

    def __call__(self, text: str, *styles: str) -> str:
        if not self.colour or not styles:
            return text
        codes = ";".join(_ANSI[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

"""How plans and apply results look: for people (text, Markdown) and machines (JSON).

Renderers take values and return strings; they never print, so the CLI decides
where output goes and whether it is coloured. Secrets never reach here: plans
carry fingerprints, which are shown as ``(sensitive)``.

The package, one idea a module, each using only those listed before it:

- :mod:`.fields`: a field's value as printed, and an action's changes field by field;
- :mod:`.plans`: a plan as text and as Markdown;
- :mod:`.results`: what a run did, as lines and a summary;
- :mod:`.documents`: the ``--json`` documents.
"""

from __future__ import annotations

from ..style import Style as Style  # re-exported: callers that render plans style them
from .documents import (
    OUTPUT_FORMAT_VERSION,
    apply_document,
    diagnostic_document,
    invalid_document,
    plan_document,
    plan_json,
    reconcile_document,
)
from .fields import action_changes, code_name, code_names, field_value, flatten
from .plans import headline, plan_markdown, plan_text
from .results import (
    already_running,
    apply_summary,
    credentials_refused,
    not_adopted_line,
    result_line,
    stopped_line,
)

__all__ = [
    "OUTPUT_FORMAT_VERSION",
    "Style",
    "action_changes",
    "already_running",
    "apply_document",
    "apply_summary",
    "code_name",
    "code_names",
    "credentials_refused",
    "diagnostic_document",
    "field_value",
    "flatten",
    "headline",
    "invalid_document",
    "not_adopted_line",
    "plan_document",
    "plan_json",
    "plan_markdown",
    "plan_text",
    "reconcile_document",
    "result_line",
    "stopped_line",
]

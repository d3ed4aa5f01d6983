"""The committed JSON Schema is what `snapctl schema` prints, and it accepts the examples."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from snapctl_testing import SNAPCTL

REPO = Path(__file__).resolve().parents[1]


def test_committed_schema_matches_the_models():
    printed = subprocess.run([SNAPCTL, "schema"], capture_output=True, text=True, check=True).stdout
    assert json.loads(printed) == json.loads((REPO / "docs" / "snapctl.schema.json").read_text()), (
        "docs/snapctl.schema.json is out of date: run snapctl schema > docs/snapctl.schema.json"
    )


def test_examples_validate_against_the_schema():
    import jsonschema

    schema = json.loads((REPO / "docs" / "snapctl.schema.json").read_text())
    for path in sorted((REPO / "manifests").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                jsonschema.validate(document, schema)
    bad = {"app_id": "a", "rooms": {"R": {"tasks": {"T": {"image": {"interval": 601}}}}}}
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the schema accepted interval 601")

"""Every manifest of tests/bad_manifests/ is refused at the right place with a clear message.

`expected.json` maps each file (or, for problems spanning files, each
directory, with `at` naming the file within it) to the line, column and a
fragment of the message of the first error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import yamlsource
from reconciler.errors import UsageError
from reconciler.manifest import ManifestError, load_manifests

CORPUS = Path(__file__).parent / "bad_manifests"
EXPECTED = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
# Variables the corpus may use; anything else is unset, whatever the environment holds.
ENVIRON = {"TEST_AK": "test-access-key", "TEST_SK": "test-secret-key"}


def assert_clean(error: ManifestError) -> None:
    text = str(error)
    assert "Traceback" not in text and 'File "' not in text
    assert "pydantic" not in text and "validation error" not in text.lower()
    assert ENVIRON["TEST_SK"] not in text and ENVIRON["TEST_AK"] not in text


def test_corpus_and_expectations_match():
    on_disk = {p.name for p in CORPUS.iterdir() if p.name != "expected.json"}
    assert on_disk == set(EXPECTED)
    assert len(EXPECTED) >= 60


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_manifest_is_refused(name: str):
    expected = EXPECTED[name]
    path = CORPUS / name
    with pytest.raises(ManifestError) as caught:
        load_manifests([path], environ=ENVIRON)
    error = caught.value
    assert isinstance(error, UsageError)
    first = error.errors[0]
    where = path / expected["at"] if "at" in expected else path
    assert (first.location.file, first.location.line, first.location.column) == (
        str(where),
        expected["line"],
        expected["column"],
    ), str(error)
    assert expected["contains"] in first.message, str(error)
    assert str(first).startswith(f"{where}:{expected['line']}:{expected['column']}: error: ")
    assert_clean(error)


def test_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:  # sparse: the limit is checked before reading
        f.truncate(yamlsource.MAX_FILE_BYTES + 1)
    with pytest.raises(ManifestError) as caught:
        load_manifests([path], environ=ENVIRON)
    first = caught.value.errors[0]
    assert (first.location.line, first.location.column) == (1, 1)
    assert f"limited to {yamlsource.MAX_FILE_BYTES:,} bytes" in first.message
    assert_clean(caught.value)


def test_whole_corpus_at_once_reports_every_file_sorted():
    with pytest.raises(ManifestError) as caught:
        load_manifests([CORPUS], environ=ENVIRON)
    error = caught.value
    failing = {Path(d.location.file).relative_to(CORPUS).parts[0] for d in error.errors}
    assert failing == set(EXPECTED)
    keys = [d.sort_key() for d in error.diagnostics]
    assert keys == sorted(keys)
    assert str(error) == "\n".join(str(d) for d in error.diagnostics)
    assert_clean(error)

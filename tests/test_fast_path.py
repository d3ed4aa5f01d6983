"""The fast paths give exactly what the reference paths give.

Manifests: well-formed files are read by ryaml (``yamlsource.read_documents_fast``)
and anything else by PyYAML with positions. Every file of the corpus (manifests/,
tests/manifest_cases/, tests/bad_manifests/) must load to the same ManifestSet
(tasks, requests, locations, warnings) or the same ManifestError diagnostics
either way. Plans: ``plan.diff._leaf_changes`` must list the changes DeepDiff lists.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from reconciler import yamlsource
from reconciler.manifest import ManifestError, ManifestSet, load_manifests, loader
from reconciler.plan import diff

HERE = Path(__file__).parent
REPO = HERE.parent
ENVIRON = {
    "OFFSITE_ACCESS_KEY": "AK-test-offsite",
    "OFFSITE_SECRET_KEY": "SK-test-offsite",
    "TEST_AK": "test-access-key",
    "TEST_SK": "test-secret-key",
}


def corpus() -> list[Path]:
    entries = sorted(p for p in (REPO / "manifests").iterdir() if p.suffix in (".yaml", ".yml"))
    entries += sorted((HERE / "manifest_cases").iterdir())
    entries += sorted(p for p in (HERE / "bad_manifests").iterdir() if p.name != "expected.json")
    return entries


def load(paths: list[Path], fast: bool, monkeypatch) -> ManifestSet | ManifestError:
    monkeypatch.setattr(loader, "FAST_PATH", fast)
    try:
        return load_manifests(paths, environ=ENVIRON)
    except ManifestError as exc:
        return exc


def assert_same(fast, slow) -> None:
    assert type(fast) is type(slow)
    if isinstance(slow, ManifestError):
        assert fast.diagnostics == slow.diagnostics
        assert str(fast) == str(slow)
        return
    assert list(fast.tasks) == list(slow.tasks)
    for address, want in slow.tasks.items():
        got = fast.tasks[address]
        assert got == want
        assert got.request == want.request and got.request.wire() == want.request.wire()
        assert (got.location.file, got.location.line, got.location.column) == (
            want.location.file,
            want.location.line,
            want.location.column,
        )
        assert str(got.location) == str(want.location) and hash(got.location) == hash(want.location)
    assert fast.warnings == slow.warnings
    assert fast.files == slow.files


@pytest.mark.parametrize("entry", corpus(), ids=lambda p: p.name)
def test_each_corpus_entry_loads_the_same_either_way(entry, monkeypatch):
    assert_same(load([entry], True, monkeypatch), load([entry], False, monkeypatch))


@pytest.mark.parametrize("directory", ["manifests", "tests/manifest_cases", "tests/bad_manifests"])
def test_whole_directories_load_the_same_either_way(directory, monkeypatch):
    paths = [REPO / directory]
    assert_same(load(paths, True, monkeypatch), load(paths, False, monkeypatch))


def test_the_fast_path_reads_the_examples():
    """Not vacuous: every example, anchors and aliases included, is read by ryaml, to the same values."""
    read = 0
    for path in sorted((REPO / "manifests").glob("*.yaml")):
        fast = yamlsource.read_documents_fast(path, ENVIRON)
        slow, diagnostics = yamlsource.read_documents(path, ENVIRON)
        assert fast is not None and not diagnostics
        assert [d.data for d in fast] == [d.data for d in slow]
        read += 1
    assert read >= 4
    assert "*agent-streams" in (REPO / "manifests" / "multi-document.yaml").read_text()
    contract = HERE / "manifest_cases" / "contract_example.yaml"
    assert yamlsource.read_documents_fast(contract, ENVIRON) is not None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BASE = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "21", bucket: b}
defaults: {storage: archive}
rooms:
  room1:
    tasks:
"""

# Values where PyYAML (YAML 1.1) and ryaml could disagree, in every place a manifest has them.
TRICKY = [
    "yes",
    "No",
    "on",
    "OFF",
    "y",
    "n",
    "true",
    "~",
    "null",
    "012",
    "09",
    "00",
    "0o12",
    "-0o7",
    "0x1F",
    "0b101",
    "1_000",
    "1:20",
    "190:20:30.15",
    "1e3",
    "1.5e3",
    "1.5e+3",
    ".5",
    ".inf",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "=",
    "<<",
    "'012'",
    '"yes"',
    "'2001-12-14'",
    '"0o12"',
    "!!str 12",
    "!!int '3'",
    "&a 5",
    "12",
    "-3",
    "+4",
    "0",
    '"a\\x41\\N"',
    "'it''s'",
    "|\n          literal\n",
    ">-\n          folded\n          text\n",
]


TEMPLATES = [
    "      t1: {business_id: %s}\n",
    "      t1: {max_idle_time: %s}\n",
    "      t1:\n        image:\n          width: %s\n",
    "      t1:\n        streams:\n          - user_id: %s\n",
    "      %s: {}\n",
    "      t1:\n        business_id: %s\n",
]


@pytest.mark.parametrize(
    "template,value",
    # Block scalars do not fit in a flow mapping, nor in a key.
    [(t, v) for t in TEMPLATES for v in TRICKY if "\n" not in v or "{" not in t],
)
def test_tricky_scalars_load_the_same_either_way(tmp_path, monkeypatch, template, value):
    path = write(tmp_path, BASE + template % value)
    fast = yamlsource.read_documents_fast(path, ENVIRON)
    slow, diagnostics = yamlsource.read_documents(path, ENVIRON)
    if fast is not None:
        assert not diagnostics and [d.data for d in fast] == [d.data for d in slow]
    assert_same(load([path], True, monkeypatch), load([path], False, monkeypatch))


@pytest.mark.parametrize(
    "text",
    [
        BASE + "      t1: {}\n      t1: {}\n",  # duplicate task key
        BASE + "      t1: {max_idle_time: 5, max_idle_time: 6}\n",  # duplicate key in a flow mapping
        BASE + "      t1: {}\n  room1:\n    tasks: {t2: {}}\n",  # duplicate room
        BASE + "      t1:\n        storage: ${env:NOPE}\n",  # missing variable
        BASE + "      t1:\n        business_id: $${literal}\n",  # escaped reference
        BASE + "      t1:\n        streams:\n          - user_id: ${env:TEST_AK}-x\n",
        BASE + "      t1: {storage: {type: custom, bucket: b, access_key: plain, secret_key: ${env:TEST_SK}}}\n",
        BASE + "      t1: {}\n---\n" + BASE + "      t2: {}\n",
        BASE + "      t1: {}\n---\n",
        BASE + "      t1: {}\n...\n",
        BASE + "\t  t1: {}\n",
        BASE + "      t1: [\n",
        BASE + "      t1: {image: {interval: 5}}\n      t2:\n",
        "# only a comment\n",
    ],
)
def test_duplicates_references_documents_and_errors_load_the_same_either_way(tmp_path, monkeypatch, text):
    path = write(tmp_path, text)
    fast = yamlsource.read_documents_fast(path, ENVIRON)
    slow, diagnostics = yamlsource.read_documents(path, ENVIRON)
    if fast is not None:
        assert not diagnostics and [d.data for d in fast] == [d.data for d in slow]
    assert_same(load([path], True, monkeypatch), load([path], False, monkeypatch))


ANCHORED = (
    BASE
    + """\
      t1:
        business_id: &biz team-a
        streams: &both
          - user_id: &who agent
          - {user_id: *who, stream_type: screen}
        storage: &custom
          type: custom
          bucket: b
          access_key: plain-ak
          secret_key: ${env:TEST_SK}
      t2: {business_id: *biz, streams: *both, storage: *custom}
      t3:
        streams: [{user_id: *who, stream_type: main}]
        storage:
          type: custom
          bucket: b
          access_key: &ak ${env:TEST_AK}
          secret_key: *ak
"""
)


@pytest.mark.parametrize(
    "text,fast_reads",
    [
        # Anchors on a scalar, a list and a mapping (with a secret from the environment and one
        # written plain, which warns at each place it is used), aliases in block and flow style.
        (ANCHORED, True),
        # An alias to an interpolated scalar: interpolated at each place, as PyYAML's path says.
        (BASE + "      t1:\n        business_id: &b ${env:TEST_AK}\n      t2: {business_id: *b}\n", True),
        # An anchor defined twice: PyYAML refuses it, ryaml would take the second.
        (
            BASE + "      t1: {business_id: &b one}\n      t2: {business_id: &b two}\n      t3: {business_id: *b}\n",
            False,
        ),
        # Merge keys: PyYAML merges, ryaml keeps a "<<" key.
        (BASE + "      t1: &base {max_idle_time: 300}\n      t2:\n        <<: *base\n        business_id: x\n", False),
        # An alias to an anchor of the document before: unknown in YAML.
        (BASE + "      t1: {business_id: &b one}\n---\n" + BASE + "      t2: {business_id: *b}\n", False),
        # An alias inside the value it names.
        (BASE + "      t1: &loop {business_id: x, more: [*loop]}\n", False),
    ],
    ids=["scalar-list-mapping", "interpolated", "anchor-twice", "merge-key", "across-documents", "recursive"],
)
def test_anchors_and_aliases_load_the_same_either_way(tmp_path, monkeypatch, text, fast_reads):
    path = write(tmp_path, text)
    fast = yamlsource.read_documents_fast(path, ENVIRON)
    assert (fast is not None) == fast_reads
    if fast is not None:
        slow, diagnostics = yamlsource.read_documents(path, ENVIRON)
        assert not diagnostics and [d.data for d in fast] == [d.data for d in slow]
        for fast_doc, slow_doc in zip(fast, slow):
            for task in fast_doc.data["rooms"]["room1"]["tasks"]:
                for key in ("business_id", "storage"):
                    at = ("rooms", "room1", "tasks", task, key)
                    assert fast_doc.interpolated(at) == slow_doc.interpolated(at)
                    assert fast_doc.location(at) == slow_doc.location(at)
    fast_set, slow_set = load([path], True, monkeypatch), load([path], False, monkeypatch)
    assert_same(fast_set, slow_set)
    if text is ANCHORED:  # the plain access key is reported where each task uses it
        assert len([w for w in slow_set.warnings if "plain text" in w.message]) == 2


def test_aliases_take_the_fast_path_only_within_the_expansion_bound(tmp_path, monkeypatch):
    """With ``a`` aliases a file of ``n`` characters expands to fewer than (2n + 1) * 2**a values:
    where that could pass PyYAML's bound the file goes to PyYAML, which counts exactly."""

    def aliases(count: int) -> str:
        return (
            BASE
            + "      t1: {business_id: &b x}\n"
            + "".join(f"      t{i}: {{business_id: *b}}\n" for i in range(2, count + 2))
        )

    short = write(tmp_path, aliases(10))
    assert (2 * len(short.read_text()) + 1) << 10 <= yamlsource.reader.MAX_NODES
    assert yamlsource.read_documents_fast(short, ENVIRON) is not None
    many = write(tmp_path, aliases(20))
    assert (2 * len(many.read_text()) + 1) << 20 > yamlsource.reader.MAX_NODES
    assert yamlsource.read_documents_fast(many, ENVIRON) is None
    assert_same(load([many], True, monkeypatch), load([many], False, monkeypatch))
    bomb = HERE / "bad_manifests" / "17-alias-bomb.yaml"
    assert yamlsource.read_documents_fast(bomb, ENVIRON) is None


def test_duplicate_keys_never_pass_the_fast_path(tmp_path):
    for text in (BASE + "      t1: {}\n      t1: {}\n", BASE + "      t1: {business_id: a, business_id: b}\n"):
        assert yamlsource.read_documents_fast(write(tmp_path, text), ENVIRON) is None


# -- plan: the changes listed without DeepDiff are DeepDiff's ------------------------


def random_body(rng: random.Random) -> dict:
    body = {
        "AppId": rng.choice(["a", "b"]),
        "RoomId": "r",
        "TaskId": "t",
        "MaxIdleTime": rng.choice([180, 600]),
        "ImageConfig": {
            "Format": rng.choice([0, 1]),
            "Width": rng.choice([0, 640]),
            "Height": 0,
            "Interval": rng.choice([2, 5]),
        },
        "StorageConfig": rng.choice(
            [
                {"Type": 0, "TosConfig": {"AccountId": "1", "Region": 0, "Bucket": rng.choice(["b", "c"])}},
                {
                    "Type": 2,
                    "CustomConfig": {
                        "Vendor": 0,
                        "Region": 0,
                        "Bucket": "b",
                        "AccessKey": "hmac-sha256:" + rng.choice("ab"),
                        "SecretKey": "hmac-sha256:x",
                    },
                },
            ]
        ),
    }
    if rng.random() < 0.5:
        body["BusinessId"] = rng.choice(["x", "y"])
    if rng.random() < 0.6:
        streams = [
            {"UserId": rng.choice(["u1", "u2"]), "StreamType": rng.choice([0, 1])}
            for _ in range(rng.choice([1, 2, 2, 3]))
        ]
        if rng.random() < 0.3:
            streams[0]["Index"] = rng.choice([0, 1])
        body["TargetStreams"] = {"StreamList": streams}
    if rng.random() < 0.1:
        body["MaxIdleTime"] = rng.choice([True, "180", None, 180.0])
    return body


def test_changes_without_deepdiff_are_deepdiffs():
    rng = random.Random(7)
    compared = 0
    for _ in range(600):
        old, new = random_body(rng), random_body(rng)
        out: list = []
        if not diff._leaf_changes(old, new, [], out):
            continue  # left to DeepDiff
        expected = sorted(diff._deepdiff_changes(old, new), key=lambda c: diff._path_text(c[0]))
        assert sorted(out, key=lambda c: diff._path_text(c[0])) == expected
        compared += 1
    assert compared > 400


def test_the_fast_path_resolvers_are_pyyaml_s_own():
    # The fast path declines a plain scalar PyYAML would read as no string, by PyYAML's
    # implicit resolvers: yamlsource holds a copy (so that a well-formed file needs no PyYAML),
    # which must be PyYAML's table, pattern for pattern, in its order.
    from yaml.resolver import Resolver

    theirs = {
        first: [(regexp.pattern, regexp.flags) for tag, regexp in entries if tag != "tag:yaml.org,2002:str"]
        for first, entries in Resolver.yaml_implicit_resolvers.items()
    }
    ours = {
        first: [(regexp.pattern, regexp.flags) for regexp in entries]
        for first, entries in yamlsource.fast._RESOLVERS.items()
    }
    assert ours == {first: patterns for first, patterns in theirs.items() if patterns}


def test_the_characters_refused_are_those_pyyaml_s_reader_refuses():
    # yamlsource writes the set of characters YAML does not allow as the complement of the
    # set PyYAML's reader allows: the same characters, every code point checked.
    from yaml.reader import Reader

    every = "".join(map(chr, range(0x110000)))
    assert yamlsource.reader._NON_PRINTABLE.findall(every) == Reader.NON_PRINTABLE.findall(every)

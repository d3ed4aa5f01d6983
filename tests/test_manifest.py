"""Manifests: the contract's example, inheritance, enums, interpolation, diagnostics, discovery."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from reconciler import api, yamlsource
from reconciler.errors import UsageError
from reconciler.manifest import (
    SECRET_FIELDS,
    DesiredTask,
    Diagnostic,
    Location,
    ManifestError,
    ManifestSet,
    discover,
    load_manifests,
    manifest_json_schema,
)

HERE = Path(__file__).parent
REPO = HERE.parent
CASES = HERE / "manifest_cases"
KEYS = {"OFFSITE_ACCESS_KEY": "AK-test-offsite", "OFFSITE_SECRET_KEY": "SK-test-offsite"}

TOS = {"Type": 0, "TosConfig": {"AccountId": "2100000990", "Region": 0, "Bucket": "tos-vod-c16fd9e8343"}}
CUSTOM = {
    "Type": 2,
    "CustomConfig": {
        "Vendor": 0,
        "Region": 0,
        "Bucket": "snapshots-offsite",
        "AccessKey": KEYS["OFFSITE_ACCESS_KEY"],
        "SecretKey": KEYS["OFFSITE_SECRET_KEY"],
    },
}


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path: Path, text: str, environ: dict | None = None) -> ManifestSet:
    return load_manifests([write(tmp_path, "m.yaml", text)], environ=environ or {})


def refused(tmp_path: Path, text: str, environ: dict | None = None) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        load_text(tmp_path, text, environ)
    return caught.value


def request(m: ManifestSet, address: str) -> dict:
    return m.tasks[address].request.wire()


def expected(**fields) -> api.StartSnapshotRequest:
    return api.StartSnapshotRequest.model_validate(fields)


PROFILE = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "21", bucket: b}
"""

# -- the contract ---------------------------------------------------------------


def test_contract_example_is_verbatim_from_the_design():
    design = Path("/work/shared/design/snapctl.md")
    if not design.exists():
        pytest.skip("design document not available")
    text = design.read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert (CASES / "contract_example.yaml").read_text() == block


def test_contract_example_resolves_to_the_exact_requests():
    m = load_manifests([CASES / "contract_example.yaml"], environ=KEYS)
    assert list(m.tasks) == ["661e1234543cf/Room1/Task1", "661e1234543cf/Room1/Task2"]
    assert m.tasks["661e1234543cf/Room1/Task1"].request == expected(
        AppId="661e1234543cf",
        BusinessId="B123",
        RoomId="Room1",
        TaskId="Task1",
        TargetStreams={
            "StreamList": [{"UserId": "user1", "StreamType": 0}, {"UserId": "user2", "StreamType": 1, "Index": 1}]
        },
        MaxIdleTime=180,
        ImageConfig={"Format": 0, "Width": 800, "Height": 800, "Interval": 5},
        StorageConfig=TOS,
    )
    assert m.tasks["661e1234543cf/Room1/Task2"].request == expected(
        AppId="661e1234543cf",
        BusinessId="B123",
        RoomId="Room1",
        TaskId="Task2",
        MaxIdleTime=600,
        ImageConfig={"Format": 0, "Width": 800, "Height": 800, "Interval": 2},
        StorageConfig=CUSTOM,
    )
    task1 = m.tasks["661e1234543cf/Room1/Task1"]
    assert isinstance(task1, DesiredTask) and task1.address == "661e1234543cf/Room1/Task1"
    assert str(task1.location) == f"{CASES / 'contract_example.yaml'}:31:7"
    assert m.warnings == [] and m.files == [str(CASES / "contract_example.yaml")]


def test_contract_example_without_its_variables_names_both():
    with pytest.raises(ManifestError) as caught:
        load_manifests([CASES / "contract_example.yaml"], environ={})
    messages = [(d.location.line, d.message) for d in caught.value.errors]
    assert [line for line, _ in messages] == [21, 22]
    assert "OFFSITE_ACCESS_KEY is not set" in messages[0][1] and "OFFSITE_SECRET_KEY is not set" in messages[1][1]
    assert caught.value.diagnostics == caught.value.errors  # no plain-text warning for a reference


def test_resolved_requests_are_valid_api_models():
    m = load_manifests([CASES / "contract_example.yaml", REPO / "manifests"], environ=KEYS)
    for task in m.tasks.values():
        assert api.StartSnapshotRequest.model_validate(task.request.wire()) == task.request


# -- inheritance -------------------------------------------------------------------


def test_every_default_is_filled_and_storage_holds_only_its_block(tmp_path):
    m = load_text(tmp_path, PROFILE + "rooms: {R: {tasks: {T: {storage: archive}}}}\n")
    assert request(m, "app1/R/T") == {
        "AppId": "app1",
        "RoomId": "R",
        "TaskId": "T",
        "MaxIdleTime": 180,
        "ImageConfig": {"Format": 0, "Width": 0, "Height": 0, "Interval": 2},
        "StorageConfig": {"Type": 0, "TosConfig": {"AccountId": "21", "Region": 0, "Bucket": "b"}},
    }
    req = m.tasks["app1/R/T"].request
    assert req.target_streams is None and req.business_id is None
    assert req.storage_config.custom_config is None and req.storage_config.vod_config is None


def test_image_merges_field_by_field_over_three_levels(tmp_path):
    m = load_text(
        tmp_path,
        PROFILE
        + """\
defaults:
  storage: archive
  image: {format: png, width: 100, height: 200, interval: 10}
rooms:
  R:
    image: {width: 300}
    tasks:
      A: {image: {interval: 20}}
      B: {}
      C: {image: {format: jpeg, height: 0}}
""",
    )
    assert request(m, "app1/R/A")["ImageConfig"] == {"Format": 1, "Width": 300, "Height": 200, "Interval": 20}
    assert request(m, "app1/R/B")["ImageConfig"] == {"Format": 1, "Width": 300, "Height": 200, "Interval": 10}
    assert request(m, "app1/R/C")["ImageConfig"] == {"Format": 0, "Width": 300, "Height": 0, "Interval": 10}


def test_streams_replace_as_a_whole_and_empty_means_every_stream(tmp_path):
    m = load_text(
        tmp_path,
        PROFILE
        + """\
defaults:
  storage: archive
  streams: [{user_id: d}]
rooms:
  R:
    streams: [{user_id: r1}, {user_id: r2, stream_type: screen}]
    tasks:
      Inherit: {}
      Own: {streams: [{user_id: t, index: 3}]}
      Empty: {streams: []}
      Nulled: {streams: null}
  S:
    tasks:
      FromDefaults: {}
""",
    )
    assert request(m, "app1/R/Inherit")["TargetStreams"] == {
        "StreamList": [{"UserId": "r1", "StreamType": 0}, {"UserId": "r2", "StreamType": 1}]
    }
    assert request(m, "app1/R/Own")["TargetStreams"] == {"StreamList": [{"UserId": "t", "StreamType": 0, "Index": 3}]}
    assert m.tasks["app1/R/Empty"].request.target_streams is None
    assert m.tasks["app1/R/Nulled"].request.target_streams is None
    assert request(m, "app1/S/FromDefaults")["TargetStreams"] == {"StreamList": [{"UserId": "d", "StreamType": 0}]}


def test_storage_replaces_as_a_whole_by_name_or_inline(tmp_path):
    m = load_text(
        tmp_path,
        """\
app_id: app1
defaults:
  storage: archive
storage:
  archive: {type: tos, account_id: "21", bucket: b, region: 2}
  images: {type: veimagex, account_id: "22", service_id: svc}
rooms:
  R:
    storage: {type: custom, vendor: cos, bucket: c, access_key: "${env:AK}", secret_key: "${env:SK}"}
    tasks:
      Room: {}
      Named: {storage: images}
  S:
    tasks:
      Defaults: {}
      Inline: {storage: {type: 0, account_id: "23", bucket: z}}
""",
        environ={"AK": "ak", "SK": "sk"},
    )
    assert request(m, "app1/R/Room")["StorageConfig"] == {
        "Type": 2,
        "CustomConfig": {"Vendor": 3, "Region": 0, "Bucket": "c", "AccessKey": "ak", "SecretKey": "sk"},
    }
    assert request(m, "app1/R/Named")["StorageConfig"] == {
        "Type": 3,
        "VeImageXConfig": {"AccountId": "22", "Region": 0, "ServiceId": "svc"},
    }
    assert request(m, "app1/S/Defaults")["StorageConfig"] == {
        "Type": 0,
        "TosConfig": {"AccountId": "21", "Region": 2, "Bucket": "b"},
    }
    assert request(m, "app1/S/Inline")["StorageConfig"] == {
        "Type": 0,
        "TosConfig": {"AccountId": "23", "Region": 0, "Bucket": "z"},
    }


def test_scalars_inherit_task_over_room_over_defaults_and_null_drops_business_id(tmp_path):
    m = load_text(
        tmp_path,
        PROFILE
        + """\
defaults: {storage: archive, max_idle_time: 100, business_id: D}
rooms:
  R:
    max_idle_time: 200
    business_id: R
    tasks:
      Room: {}
      Task: {max_idle_time: 300, business_id: T}
      Dropped: {business_id: null}
  S:
    tasks:
      Defaults: {}
      Empty:
""",
    )
    got = {a.split("/", 1)[1]: (t.request.max_idle_time, t.request.business_id) for a, t in m.tasks.items()}
    assert got == {
        "R/Room": (200, "R"),
        "R/Task": (300, "T"),
        "R/Dropped": (200, None),
        "S/Defaults": (100, "D"),
        "S/Empty": (100, "D"),
    }


def test_shared_values_are_resolved_once(tmp_path):
    m = load_text(
        tmp_path,
        PROFILE
        + "defaults: {storage: archive, image: {interval: 7}}\nrooms:\n  R:\n    streams: [{user_id: u}]\n    tasks: {A: {}, B: {}}\n",
    )
    a, b = m.tasks["app1/R/A"].request, m.tasks["app1/R/B"].request
    assert (
        a.storage_config is b.storage_config
        and a.image_config is b.image_config
        and a.target_streams is b.target_streams
    )


def test_anchors_aliases_and_merge_keys(tmp_path):
    m = load_text(
        tmp_path,
        PROFILE
        + """\
defaults: {storage: archive}
rooms:
  R:
    tasks:
      A:
        image: &img {width: 10, height: 20}
        streams: &s [{user_id: u}]
      B:
        image:
          <<: *img
          height: 30
        streams: *s
""",
    )
    assert request(m, "app1/R/B")["ImageConfig"] == {"Format": 0, "Width": 10, "Height": 30, "Interval": 2}
    assert request(m, "app1/R/B")["TargetStreams"] == request(m, "app1/R/A")["TargetStreams"]


# -- enums ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image, stream_type, vendor, storage_type, want",
    [
        ("png", "screen", "obs", "custom", (1, 1, 2)),
        (1, 1, 2, 2, (1, 1, 2)),
        ("jpeg", "main", "kodo", "custom", (0, 0, 4)),
        (0, 0, 0, 2, (0, 0, 0)),
    ],
)
def test_enum_names_and_api_integers(tmp_path, image, stream_type, vendor, storage_type, want):
    m = load_text(
        tmp_path,
        f"""\
app_id: app1
rooms:
  R:
    tasks:
      T:
        image: {{format: {image}}}
        streams: [{{user_id: u, stream_type: {stream_type}}}]
        storage: {{type: {storage_type}, vendor: {vendor}, bucket: b, access_key: "${{env:K}}", secret_key: "${{env:K}}"}}
""",
        environ={"K": "k"},
    )
    r = request(m, "app1/R/T")
    assert (
        r["ImageConfig"]["Format"],
        r["TargetStreams"]["StreamList"][0]["StreamType"],
        r["StorageConfig"]["CustomConfig"]["Vendor"],
    ) == want
    assert r["StorageConfig"]["Type"] == 2


@pytest.mark.parametrize(
    "storage_type, block",
    [
        ("tos", 'account_id: "1", bucket: b'),
        (0, 'account_id: "1", bucket: b'),
        ("veimagex", 'account_id: "1", service_id: s'),
        (3, 'account_id: "1", service_id: s'),
    ],
)
def test_storage_type_names_and_integers(tmp_path, storage_type, block):
    m = load_text(
        tmp_path, f"app_id: a\nrooms: {{R: {{tasks: {{T: {{storage: {{type: {storage_type}, {block}}}}}}}}}}}\n"
    )
    want = api.StorageType[storage_type].value if isinstance(storage_type, str) else storage_type
    assert request(m, "a/R/T")["StorageConfig"]["Type"] == want


# -- ${env:...} ------------------------------------------------------------------------


def test_env_interpolation_whole_embedded_several_and_escaped(tmp_path):
    m = load_text(
        tmp_path,
        """\
app_id: ${env:APP}
storage:
  s: {type: tos, account_id: "${env:ACCOUNT}", bucket: "pre-${env:A}-${env:B}-post"}
rooms:
  R:
    tasks:
      T: {storage: s, streams: [{user_id: "$${env:NOT_A_REF}"}]}
""",
        environ={"APP": "app9", "ACCOUNT": "42", "A": "x", "B": "y"},
    )
    r = request(m, "app9/R/T")
    assert r["StorageConfig"]["TosConfig"] == {"AccountId": "42", "Region": 0, "Bucket": "pre-x-y-post"}
    assert r["TargetStreams"]["StreamList"][0]["UserId"] == "${env:NOT_A_REF}"


def test_env_defaults_to_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPCTL_TEST_APP", "from-env")
    path = write(tmp_path, "m.yaml", "app_id: ${env:SNAPCTL_TEST_APP}\nrooms: {}\n")
    assert load_manifests([path]).tasks == {}
    monkeypatch.delenv("SNAPCTL_TEST_APP")
    with pytest.raises(ManifestError, match="SNAPCTL_TEST_APP is not set"):
        load_manifests([path])


def test_plain_text_secrets_warn_without_showing_them(tmp_path):
    m = load_text(
        tmp_path,
        """\
app_id: app1
storage:
  s3: {type: custom, bucket: b, access_key: AKPLAINVALUE, secret_key: "${env:SK}"}
rooms:
  R:
    tasks:
      T:
        storage: {type: custom, bucket: b, access_key: "${env:AK}", secret_key: SKPLAINVALUE}
""",
        environ={"AK": "ak", "SK": "sk"},
    )
    assert [(w.severity, w.location.line, w.location.column) for w in m.warnings] == [
        ("warning", 3, 45),
        ("warning", 8, 81),
    ]
    assert "storage.s3.access_key: secret written in plain text" in m.warnings[0].message
    assert "rooms.R.tasks.T.storage.secret_key" in m.warnings[1].message
    text = "\n".join(map(str, m.warnings))
    assert "PLAINVALUE" not in text and ": warning: " in text
    assert request(m, "app1/R/T")["StorageConfig"]["CustomConfig"]["SecretKey"] == "SKPLAINVALUE"


def test_secret_fields_name_the_api_paths():
    m = load_manifests([CASES / "contract_example.yaml"], environ=KEYS)
    wire = request(m, "661e1234543cf/Room1/Task2")
    found = set()
    for path in SECRET_FIELDS:
        value = wire
        for part in path.split("."):
            value = value[part]
        found.add(value)
    assert found == set(KEYS.values())


# -- diagnostics -------------------------------------------------------------------------


def test_all_errors_of_all_files_are_reported_together_sorted(tmp_path):
    write(tmp_path, "b.yaml", "app_id: b\nrooms:\n  R:\n    tasks:\n      T: {image: {interval: 601}}\n")
    write(
        tmp_path,
        "a.yaml",
        """\
app_id: a
storage:
  s: {type: tos, account_id: "1", bucket: b}
rooms:
  R:
    tasks:
      T1: {storage: s, max_idle_time: 0}
      T2: {storage: x}
      T3: {storage: s, image: {width: 5000, fromat: png}}
      T4: {max_idle_time: 5}
""",
    )
    with pytest.raises(ManifestError) as caught:
        load_manifests([tmp_path], environ={})
    got = [(Path(d.location.file).name, d.location.line, d.location.column) for d in caught.value.errors]
    assert got == [
        ("a.yaml", 7, 39),
        ("a.yaml", 8, 21),
        ("a.yaml", 9, 39),
        ("a.yaml", 9, 45),
        ("a.yaml", 10, 7),
        ("b.yaml", 5, 29),
    ]
    text = str(caught.value)
    assert (
        f"{tmp_path / 'b.yaml'}:5:29: error: rooms.R.tasks.T.image.interval: must be between 1 and 600, got integer 601"
        in text
    )
    assert "rooms.R.tasks.T4: no storage for this task" in text
    assert "unknown key 'fromat'; did you mean 'format'?" in text
    assert len(text.splitlines()) == 6


def test_duplicate_address_across_files_names_both_places(tmp_path):
    body = "app_id: a\nstorage: {s: {type: tos, account_id: '1', bucket: b}}\nrooms:\n  R:\n    tasks:\n      T: {storage: s}\n"
    first = write(tmp_path, "one.yaml", body)
    second = write(tmp_path, "two.yaml", "\n\n" + body)
    with pytest.raises(ManifestError) as caught:
        load_manifests([first, second], environ={})
    [error] = caught.value.errors
    assert str(error) == f"{second}:8:7: error: task a/R/T is declared twice; first at {first}:6:7"


def test_error_locations_point_at_keys_values_and_enclosing_mappings(tmp_path):
    error = refused(
        tmp_path,
        """\
app_id: a
storage:
  s:
    type: tos
    bucket: b
rooms:
  R:
    tasks:
      T:
        storage: s
        imgae: {}
        max_idle_time: -5
""",
    )
    got = {
        d.message.split(":")[0] if "missing" not in d.message else "missing": (d.location.line, d.location.column)
        for d in error.errors
    }
    assert got == {"missing": (3, 3), "rooms.R.tasks.T": (11, 9), "rooms.R.tasks.T.max_idle_time": (12, 24)}


def test_location_and_diagnostic_formats():
    loc = Location("m.yaml", 3, 4)
    assert str(loc) == "m.yaml:3:4"
    assert str(Diagnostic(loc, "boom", "error")) == "m.yaml:3:4: error: boom"
    assert str(Diagnostic(None, "gone", "warning")) == "warning: gone"
    error = ManifestError(
        [
            Diagnostic(Location("b", 1, 1), "x"),
            Diagnostic(Location("a", 9, 1), "y"),
            Diagnostic(Location("a", 2, 5), "z"),
        ]
    )
    assert isinstance(error, UsageError)
    assert str(error) == "a:2:5: error: z\na:9:1: error: y\nb:1:1: error: x"


def test_duplicate_yaml_key_names_both_lines(tmp_path):
    error = refused(tmp_path, "app_id: a\nrooms: {}\nrooms: {}\n")
    [d] = error.errors
    assert (d.location.line, d.location.column) == (3, 1) and "first at line 2" in d.message


# -- YAML source ---------------------------------------------------------------------------


def test_empty_documents_are_skipped_and_a_file_without_any_is_an_error(tmp_path):
    write(tmp_path, "docs.yaml", "---\n" + PROFILE + "rooms: {R: {tasks: {T: {storage: archive}}}}\n---\n---\n")
    m = load_manifests([tmp_path], environ={})
    assert list(m.tasks) == ["app1/R/T"] and m.warnings == []
    write(tmp_path, "empty.yaml", "")
    write(tmp_path, "comments.yml", "# nothing yet\n")
    with pytest.raises(ManifestError) as caught:
        load_manifests([tmp_path], environ={})
    assert [(Path(d.location.file).name, d.location.line, d.severity) for d in caught.value.diagnostics] == [
        ("comments.yml", 1, "error"),
        ("empty.yaml", 1, "error"),
    ]
    assert all("no YAML document" in d.message for d in caught.value.diagnostics)


def test_positions_of_keys_values_and_items(tmp_path):
    path = write(tmp_path, "p.yaml", "a:\n  b: [x, {c: 1}]\n  'd': &v\n    e: 2\n  f: *v\n")
    [doc], problems = yamlsource.read_documents(path)
    assert problems == []
    assert doc.data == {"a": {"b": ["x", {"c": 1}], "d": {"e": 2}, "f": {"e": 2}}}
    assert (doc.location(("a", "b")).line, doc.location(("a", "b")).column) == (2, 6)
    assert (doc.location(("a", "b"), key=True).line, doc.location(("a", "b"), key=True).column) == (2, 3)
    assert (doc.location(("a", "b", 1, "c")).line, doc.location(("a", "b", 1, "c")).column) == (2, 14)
    assert (doc.location(("a", "f", "e")).line, doc.location(("a", "f", "e")).column) == (4, 8)
    assert (doc.location(("a", "nope", "deeper")).line, doc.location(("a", "nope")).column) == (2, 3)
    assert (doc.location(()).line, doc.location(()).column) == (1, 1)


def test_only_yaml_safe_types(tmp_path):
    path = write(tmp_path, "t.yaml", "a: 2024-01-02\nb: !!binary aGk=\nc: !!str 123\nd: 0x1f\ne: ~\nf: yes\n")
    [doc], problems = yamlsource.read_documents(path)
    assert problems == []
    assert (
        doc.data["b"] == b"hi"
        and doc.data["c"] == "123"
        and doc.data["d"] == 31
        and doc.data["e"] is None
        and doc.data["f"] is True
    )
    assert str(doc.data["a"]) == "2024-01-02"


def test_alias_expansion_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(yamlsource.reader, "MAX_NODES", 50)
    path = write(tmp_path, "b.yaml", "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: [*a, *a, *a, *a, *a]\n")
    [], [problem] = yamlsource.read_documents(path)
    assert "more than 50 values after expanding aliases" in problem.message
    assert (problem.location.line, problem.location.column) == (1, 4)


# -- discovery ------------------------------------------------------------------------------


def test_discover_recurses_sorted_skips_hidden_and_dedupes(tmp_path):
    for name in ("b/z.yaml", "b/a.yml", "a.yaml", "notes.txt", ".hidden/x.yaml", "c/.swap.yaml"):
        write(tmp_path, name, "")
    direct = write(tmp_path / "elsewhere", "direct.txt", "")
    found = discover([tmp_path, direct, tmp_path / "a.yaml"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.yaml",
        "b/a.yml",
        "b/z.yaml",
        "elsewhere/direct.txt",
    ]


def test_missing_paths_are_one_error_naming_each(tmp_path):
    with pytest.raises(ManifestError) as caught:
        load_manifests([tmp_path / "nope", tmp_path / "gone.yaml"])
    assert [d.message for d in caught.value.errors] == [
        f"{tmp_path / 'gone.yaml'}: no such file or directory",
        f"{tmp_path / 'nope'}: no such file or directory",
    ]


def test_no_manifest_files_is_an_error(tmp_path):
    # An empty manifest set would plan to destroy everything: a wrong path must not.
    with pytest.raises(ManifestError, match="no manifest files"):
        load_manifests([tmp_path], environ={})


# -- the examples ------------------------------------------------------------------------------


def test_examples_in_manifests_load_without_warnings():
    m = load_manifests([REPO / "manifests"], environ=KEYS)
    assert m.warnings == []
    assert len(m.files) >= 4 and len(m.tasks) >= 8
    apps = {address.split("/")[0] for address in m.tasks}
    assert len(apps) >= 2
    types = {task.request.storage_config.type for task in m.tasks.values()}
    assert types == {0, 2, 3}
    for file in m.files:
        assert Path(file).read_text().startswith("# yaml-language-server: $schema=../docs/snapctl.schema.json\n")


def test_examples_need_only_the_offsite_keys():
    with pytest.raises(ManifestError) as caught:
        load_manifests([REPO / "manifests"], environ={})
    assert {d.message.split()[2] for d in caught.value.errors} == {"OFFSITE_ACCESS_KEY", "OFFSITE_SECRET_KEY"}


# -- schema ------------------------------------------------------------------------------------


def test_json_schema_describes_the_format():
    schema = manifest_json_schema()
    json.dumps(schema)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["required"] == ["app_id", "rooms"] and schema["additionalProperties"] is False
    defs = schema["$defs"]
    assert set(defs["Settings"]["properties"]) == {"business_id", "max_idle_time", "image", "storage", "streams"}
    assert defs["Image"]["properties"]["interval"]["maximum"] == 600
    assert defs["Image"]["properties"]["format"]["enum"] == ["jpeg", "png", 0, 1]
    assert defs["TosStorage"]["properties"]["type"]["enum"] == ["tos", 0]
    assert "InvalidStorage" not in json.dumps(schema) and '"default": null' not in json.dumps(schema)


def test_validation_shapes_match_the_schema_models():
    from reconciler.manifest import schema

    assert set(schema._DocumentShape.model_fields) == set(schema.ManifestDocument.model_fields)
    assert set(schema._RoomShape.model_fields) == set(schema.Room.model_fields)


# -- scale ------------------------------------------------------------------------------------


def test_ten_thousand_tasks_load(tmp_path):
    """Scale correctness only; speed is measured by bench/, never asserted here."""
    lines = [PROFILE.rstrip("\n"), "defaults: {storage: archive, image: {interval: 5}}", "rooms:"]
    for room in range(1000):
        lines.append(f"  room{room}:\n    business_id: B\n    tasks:")
        lines.extend(f"      task{t}: {{streams: [{{user_id: u{t}}}], image: {{width: {t}}}}}" for t in range(10))
    path = write(tmp_path, "big.yaml", "\n".join(lines) + "\n")
    m = load_manifests([path], environ={})
    assert len(m.tasks) == 10_000
    assert request(m, "app1/room999/task9")["ImageConfig"] == {"Format": 0, "Width": 9, "Height": 0, "Interval": 5}

"""Plan decisions: create, update in place, replace, delete, no-op; targets; saved-plan checks."""

from __future__ import annotations

import copy

import pytest

from reconciler import api
from reconciler.errors import UsageError
from reconciler.plan import ActionKind, check_plan_current, diff_requests, make_plan
from reconciler.state import State

BASE = {
    "AppId": "a",
    "RoomId": "r",
    "TaskId": "t",
    "MaxIdleTime": 180,
    "ImageConfig": {"Format": 0, "Width": 0, "Height": 0, "Interval": 2},
    "StorageConfig": {
        "Type": 2,
        "CustomConfig": {"Vendor": 0, "Region": 0, "Bucket": "b", "AccessKey": "AK", "SecretKey": "SECRET-1"},
    },
}


def state_with(**tasks) -> State:
    state = State.new()
    state.exists = True
    state.serial = 4
    state.tasks = {address.replace("__", "/"): {"request": state.fingerprint(body)} for address, body in tasks.items()}
    return state


def changed(**edits):
    body = copy.deepcopy(BASE)
    for path, value in edits.items():
        node = body
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return body


def test_no_changes_when_equal():
    plan = make_plan({"a/r/t": BASE}, state_with(a__r__t=BASE))
    assert plan.actions == [] and plan.unchanged == 1
    assert plan.summary.line() == "Plan: 0 to add, 0 to change, 0 to replace, 0 to destroy."


def test_create_and_delete():
    plan = make_plan({"a/r/new": BASE}, state_with(a__r__old=BASE))
    assert [(a.address, a.kind) for a in plan.actions] == [
        ("a/r/new", ActionKind.create),
        ("a/r/old", ActionKind.delete),
    ]
    assert plan.summary.add == 1 and plan.summary.destroy == 1


def test_interval_alone_is_an_update_in_place():
    plan = make_plan({"a/r/t": changed(ImageConfig__Interval=5)}, state_with(a__r__t=BASE))
    (action,) = plan.actions
    assert action.kind is ActionKind.update
    assert [(c.path, c.old, c.new, c.forces_replacement) for c in action.changes] == [
        ("ImageConfig.Interval", 2, 5, False)
    ]


@pytest.mark.parametrize(
    "edit",
    [
        {"ImageConfig__Width": 640},
        {"ImageConfig__Format": 1},
        {"MaxIdleTime": 600},
        {"BusinessId": "B1"},
        {"TargetStreams": {"StreamList": [{"UserId": "u1", "StreamType": 0}]}},
        {"StorageConfig__CustomConfig__Bucket": "other"},
        {"StorageConfig__CustomConfig__SecretKey": "SECRET-2"},
    ],
)
def test_any_other_change_is_a_replacement(edit):
    plan = make_plan({"a/r/t": changed(**edit, ImageConfig__Interval=9)}, state_with(a__r__t=BASE))
    (action,) = plan.actions
    assert action.kind is ActionKind.replace
    assert any(c.forces_replacement for c in action.changes)
    assert [c.forces_replacement for c in action.changes if c.path == "ImageConfig.Interval"] == [False]


def test_secret_changes_are_masked_in_the_diff():
    plan = make_plan({"a/r/t": changed(StorageConfig__CustomConfig__SecretKey="SECRET-2")}, state_with(a__r__t=BASE))
    (change,) = plan.actions[0].changes
    assert change.sensitive and change.old == change.new == "(sensitive)"
    assert "SECRET" not in plan.model_dump_json()


def test_storage_type_change_masks_nested_secrets():
    tos = changed()
    tos["StorageConfig"] = {"Type": 0, "TosConfig": {"AccountId": "1", "Region": 0, "Bucket": "b"}}
    plan = make_plan({"a/r/t": tos}, state_with(a__r__t=BASE))
    dumped = plan.model_dump_json()
    assert "SECRET-1" not in dumped and "hmac-sha256" not in "".join(str(c.old) for c in plan.actions[0].changes)


def test_targets_and_forced_replacement():
    state = state_with(a__r__t=BASE, a__r2__t=BASE)
    desired = {"a/r/t": changed(ImageConfig__Interval=5), "a/r2/t": changed(ImageConfig__Interval=5), "b/r/t": BASE}
    assert [a.address for a in make_plan(desired, state, targets=["a/r2"]).actions] == ["a/r2/t"]
    assert [a.address for a in make_plan(desired, state, targets=["b"]).actions] == ["b/r/t"]
    forced = make_plan({"a/r/t": BASE, "a/r2/t": BASE}, state, replace=["a/r/t"])
    assert [(a.address, a.kind) for a in forced.actions] == [("a/r/t", ActionKind.replace)]
    with pytest.raises(UsageError, match="--replace"):
        make_plan({"a/r/t": BASE}, state, replace=["a/r/zzz"])
    with pytest.raises(UsageError, match="--target a/nope matches no task"):
        make_plan(desired, state, targets=["a/nope"])
    with pytest.raises(UsageError, match="--target a/r/t1 matches no task"):
        make_plan(desired, state, targets=["a/r/t1"])  # a prefix of a name is not a match


def test_destroy_plans_deletes_of_everything_in_scope():
    plan = make_plan({"a/r/t": BASE}, state_with(a__r__t=BASE, a__r2__t=BASE), destroy=True, targets=["a/r"])
    assert [(a.address, a.kind) for a in plan.actions] == [("a/r/t", ActionKind.delete)]


def test_order_is_deterministic():
    desired = {f"a/r/t{i}": BASE for i in (3, 1, 2)}
    assert [a.address for a in make_plan(desired, State.new()).actions] == ["a/r/t1", "a/r/t2", "a/r/t3"]


def test_tasks_waiting_for_their_secrets_fingerprints_keep_their_place():
    # A fresh state knows no fingerprint: tasks with secrets wait for scrypt (computed in the
    # background) and are planned after the others; the plan must not show it.
    plain = {k: v for k, v in BASE.items() if k != "StorageConfig"}
    state = state_with(**{f"a__r__t{i:02}": BASE if i % 2 else plain for i in range(0, 30, 3)})
    state._memo.clear()
    desired = {
        f"a/r/t{i:02}": (changed(ImageConfig__Interval=5) if i % 3 else BASE) if i % 2 else plain for i in range(30)
    }
    plan = make_plan(desired, state)
    assert [a.address for a in plan.actions] == sorted(
        a for a in desired if a[-2:] not in {f"{i:02}" for i in range(0, 30, 3)}
    )
    assert plan.unchanged == 10
    reference = state_with()
    reference.fingerprint_key = state.fingerprint_key
    for action in plan.actions:
        assert action.kind is ActionKind.create
        assert action.desired == reference.fingerprint(desired[action.address])


def test_secrets_fingerprints_are_computed_at_most_two_at_a_time():
    # Each scrypt takes 16 MiB at the default cost: a plan with many distinct secrets must
    # not compute them all side by side (memory), whatever order it meets them in; two
    # threads take a storage's key pair in one derivation's time.
    import threading

    def fingerprinters() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("fingerprint")}

    before = fingerprinters()  # other tests' states may still have theirs
    state = State.new()
    values = [f"SK-distinct-{n}" for n in range(6)]
    for value in values:  # one at a time, as a plan meets them task after task
        state.prefetch_fingerprints([value])
    assert 1 <= len(fingerprinters() - before) <= 2
    assert [state.secret_fingerprint(v) for v in values] == [
        State._scrypt(v, state.fingerprint_key, state.fingerprint_params) for v in values
    ]


def test_diff_of_lists_names_the_index():
    old = changed(TargetStreams={"StreamList": [{"UserId": "u1"}]})
    new = changed(TargetStreams={"StreamList": [{"UserId": "u2"}]})
    assert [c.path for c in diff_requests(old, new)] == ["TargetStreams.StreamList[0].UserId"]


def test_saved_plan_is_refused_when_stale_or_foreign():
    state = state_with(a__r__t=BASE)
    plan = make_plan({"a/r/t": changed(ImageConfig__Interval=5)}, state)
    check_plan_current(plan, state, "s.json")
    state.serial += 1
    with pytest.raises(UsageError, match="stale"):
        check_plan_current(plan, state, "s.json")
    other = state_with(a__r__t=BASE)
    with pytest.raises(UsageError, match="another state"):
        check_plan_current(plan, other, "s.json")


# -- planning against observations (a refresh) ------------------------------------------


def observed(state: State, body: dict, seen: api.Observed, **fields) -> api.Observation:
    """What a read of ``body`` running would give: secrets fingerprinted with the state's key."""
    return api.Observation("a/r/t", seen, live=api.comparable(state.fingerprint(copy.deepcopy(body))), **fields)


def test_not_started_is_healthy_and_business_id_is_never_drift():
    declared = {**BASE, "BusinessId": "biz1"}
    state = state_with(a__r__t=declared)
    seen = {"a/r/t": observed(state, declared, api.Observed.not_started, status=1)}
    plan = make_plan({"a/r/t": declared}, state, observations=seen)
    assert not plan.actions and plan.unchanged == 1 and plan.observed == {"not_started": 1}
    # The read never returns BusinessId: a declared change of it is planned against the state.
    plan = make_plan({"a/r/t": {**declared, "BusinessId": "biz2"}}, state, observations=seen)
    [action] = plan.actions
    assert action.kind is ActionKind.replace and not action.changed_outside
    assert [c.path for c in action.changes] == ["BusinessId"]


def test_a_secret_changed_outside_is_compared_by_fingerprint_only():
    state = state_with(a__r__t=BASE)
    live = changed(StorageConfig__CustomConfig__SecretKey="SECRET-2")
    plan = make_plan({"a/r/t": BASE}, state, observations={"a/r/t": observed(state, live, api.Observed.running)})
    [action] = plan.actions
    assert action.kind is ActionKind.replace and action.changed_outside
    [change] = action.changes
    assert change.sensitive and (change.old, change.new) == ("(sensitive)", "(sensitive)")
    assert "SECRET" not in action.model_dump_json()


def test_ended_and_unknown_tasks():
    state = state_with(a__r__t=BASE)
    ended = api.Observation("a/r/t", api.Observed.ended, status=3, stop_reason="IdleTimeOut", live={})
    [action] = make_plan({"a/r/t": BASE}, state, observations={"a/r/t": ended}).actions
    assert (action.kind, action.observed, action.stop_reason) == (ActionKind.restart, "ended", "IdleTimeOut")
    assert action.reason == "ended (IdleTimeOut): started again"
    unknown = api.Observation("a/r/t", api.Observed.unknown, detail="not found: X")
    plan = make_plan({"a/r/t": BASE}, state, observations={"a/r/t": unknown})
    assert not plan.actions and [(u.address, u.detail) for u in plan.unknown] == [("a/r/t", "not found: X")]


def test_entries_kept_as_written_are_planned_as_decoded_ones(tmp_path):
    """A file state keeps each entry as written; the plan takes an entry whose request is
    byte for byte the desired one as unchanged without decoding it. It must decide as the
    comparison of decoded entries does: changes, secrets (fingerprinted in the state),
    creates and deletes alike."""
    from reconciler import engine
    from reconciler.manifest import load_manifests
    from reconciler.state import FileStore, TaskTable

    def manifest(interval: int, width: int, last: int) -> str:
        rows = "".join(f"      t{n}: {{}}\n" for n in range(last))
        return (
            "app_id: app\nstorage:\n"
            "  tos: {type: tos, account_id: '2100000990', bucket: b}\n"
            "  s3: {type: custom, bucket: c, access_key: '${env:S3_AK}', secret_key: '${env:S3_SK}'}\n"
            f"defaults: {{storage: tos, image: {{interval: 5, width: 640}}}}\nrooms:\n"
            f"  r1:\n    tasks:\n{rows}      odd: {{image: {{interval: {interval}, width: {width}}}}}\n"
            "  r2:\n    storage: s3\n    tasks:\n      k1: {}\n      k2: {image: {interval: 9}}\n"
        )

    directory = tmp_path / "manifests"
    directory.mkdir()
    (directory / "app.yaml").write_text(manifest(interval=5, width=640, last=6))
    environ = {"S3_AK": "AK-1", "S3_SK": "SK-1"}
    path = tmp_path / "state" / "snapctl.state.json"
    with FileStore(path) as store:
        for address, task in load_manifests([directory], environ=environ).tasks.items():
            store.record_put(address, task.request.wire(), "req")
    rounds = {
        (5, 640, "SK-1", 6): "Plan: 0 to add, 0 to change, 0 to replace, 0 to destroy.",
        (7, 640, "SK-1", 6): "Plan: 0 to add, 1 to change, 0 to replace, 0 to destroy.",
        (5, 800, "SK-2", 4): "Plan: 0 to add, 0 to change, 3 to replace, 2 to destroy.",
        (5, 640, "SK-1", 8): "Plan: 2 to add, 0 to change, 0 to replace, 0 to destroy.",
    }
    for (interval, width, secret, last), summary in rounds.items():
        (directory / "app.yaml").write_text(manifest(interval, width, last))
        manifests = load_manifests([directory], environ=environ | {"S3_SK": secret})
        kept = FileStore(path).read()
        assert isinstance(kept.tasks, TaskTable) and kept.tasks.stored_bytes("app/r1/t0") is not None
        decoded = FileStore(path).read()
        decoded.tasks = {address: decoded.tasks[address] for address in decoded.tasks}
        as_kept, as_decoded = engine.plan(manifests, kept), engine.plan(manifests, decoded)
        as_decoded.created_at = as_kept.created_at  # made a moment apart
        assert as_kept.model_dump(mode="json") == as_decoded.model_dump(mode="json")
        assert as_kept.summary.line() == summary
        assert as_kept.unchanged >= 4


def test_many_targets_match_as_one_at_a_time_would():
    # Targets are matched by set lookups (5,000 over 10,000 tasks took 16.8 s when each address was
    # compared with each target): the same addresses as the definition, a target naming a task, a
    # room or an app, with or without slashes around it, and never a prefix of a name.
    desired = {f"app{a}/room{r}/task{t}": BASE for a in range(3) for r in range(12) for t in range(12)}
    state = state_with(**{f"app9__room{r}__task{t}": BASE for r in range(3) for t in range(3)})
    targets = [f"app{a}/room{r}/task{t}" for a in range(3) for r in range(0, 12, 2) for t in range(0, 12, 5)]
    targets += ["app1/room3", "/app2/room11/", "app9/", "app0/room1/task1"]

    def named(address: str) -> bool:  # the definition, target by target
        return any(address == t.strip("/") or address.startswith(t.strip("/") + "/") for t in targets)

    planned = [a.address for a in make_plan(desired, state, targets=targets).actions]
    assert planned == sorted(a for a in [*desired, *state.tasks] if named(a))
    assert {a.split("/")[0] for a in planned} == {"app0", "app1", "app2", "app9"}
    assert len(planned) == 3 * 6 * 3 + 12 + 12 + 9 + 1
    for wrong in ("app0/room1/task", "app0/room1/task1/x", "app", "room1", "/"):
        with pytest.raises(UsageError, match=f"--target {wrong} matches no task"):
            make_plan(desired, state, targets=[*targets, wrong])


def test_the_json_plan_written_an_action_at_a_time_is_the_document_byte_for_byte():
    import orjson

    from reconciler import render

    state = state_with(a__r__t=BASE, a__r__u=BASE, a__r__w=BASE)
    desired = {
        "a/r/t": changed(ImageConfig__Interval=9),  # update
        "a/r/u": changed(ImageConfig__Width=5),  # replace
        "a/r/v": changed(StorageConfig__CustomConfig__SecretKey="SECRET-2"),  # create, with a secret
    }  # a/r/w: delete
    for plan in (make_plan(desired, state), make_plan({"a/r/t": BASE, "a/r/u": BASE, "a/r/w": BASE}, state)):
        whole = orjson.dumps(render.plan_document(plan), option=orjson.OPT_INDENT_2) + b"\n"
        assert b"".join(render.plan_json(plan)) == whole
    assert [a["action"] for a in orjson.loads(whole)["actions"]] == [] and b"SECRET" not in whole
    streamed = b"".join(render.plan_json(make_plan(desired, state)))
    assert [a["action"] for a in orjson.loads(streamed)["actions"]] == ["update", "replace", "create", "delete"]
    assert b"SECRET-2" not in streamed

"""What snapctl ships for production (deploy/): Prometheus alert rules with their promtool unit
tests, a Grafana dashboard, Kubernetes manifests and a systemd unit. Each is checked against the
real thing: the rules and the dashboard name only metrics a running controller exports (scraped
from ``snapctl reconcile --watch``), promtool runs the rules' tests, the Kubernetes objects are
validated offline against the API's schemas, the unit by ``systemd-analyze verify``, and every
command line they hold is one ``snapctl reconcile`` accepts."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from snapctl_testing import SNAPCTL, Watch, new_project, run_snapctl, snapctl_env, wait_for

from reconciler.emulator import EmulatorConfig, EmulatorServer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
#: Names Prometheus itself gives every target, not snapctl's.
PROMETHEUS_OWN = {"up"}

MANIFEST = """\
app_id: deployapp
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive}
rooms:
  R1:
    tasks:
      T1: {}
"""


def promtool() -> str:
    """promtool, which the suite needs (.ci/run installs Debian's prometheus package)."""
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (as .ci/run does)"
    return found


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """Every metric name a running controller's /metrics lists (its # TYPE lines and samples)."""
    with EmulatorServer(EmulatorConfig()) as server:
        return _scrape(tmp_path_factory, server.url)


def _scrape(tmp_path_factory, url: str) -> set[str]:
    work = new_project(tmp_path_factory.mktemp("deploy"), url, {"app.yaml": MANIFEST})
    with Watch(work, snapctl_env(url, work), "--interval", "0.2", "--metrics-port", "0") as watch:
        metrics = f"http://127.0.0.1:{watch.port}/metrics"
        text = wait_for(lambda: (lambda t: t if "snapctl_tasks_declared 1.0" in t else None)(httpx.get(metrics).text))
        assert watch.stop() == 0
    names = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))
    names |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[ {]", text, flags=re.M))
    assert "snapctl_tasks_declared" in names and "snapctl_api_requests_total" in names, text
    return names


_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (or a Grafana query's ``label_values(M, L)``)."""
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,[^)]*\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", expr):
        name, call = match.groups()
        if not call and name not in _WORDS:
            names.add(name)
    return names


def test_metric_names_are_read_from_promql():
    expr = (
        'sum by (job, reason) (rate(snapctl_a_total{job=~"$job",x="y{z}"}[5m])) / on (instance) group_left () '
        "max(snapctl_b) > 0.1 and time() - c:recorded offset 5m or vector(0) unless label_values(snapctl_c, job)"
    )
    assert metric_names(expr) == {"snapctl_a_total", "snapctl_b", "c:recorded", "snapctl_c"}


def alert_rules() -> list[dict]:
    document = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_cover_what_matters_and_pass_their_promtool_tests():
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "SnapctlTasksFailing",
        "SnapctlTasksNotRunning",
        "SnapctlControllerDown",
        "SnapctlNoControllerUp",
        "SnapctlNoLeader",
        "SnapctlLoopStuck",
        "SnapctlThrottled",
        "SnapctlHoldsFailing",
    } <= names
    checked = subprocess.run(
        [promtool(), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yaml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yaml"], cwd=DEPLOY / "prometheus", capture_output=True, text=True
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    # Every rule is exercised: its alert fires in at least one test case.
    cases = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yaml").read_text())["tests"]
    fired = {check["alertname"] for case in cases for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert fired == names


def test_alert_rules_read_only_metrics_snapctl_exports(exported):
    read, missing = set(), {}
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        if names - exported - PROMETHEUS_OWN:
            missing[rule["alert"]] = sorted(names - exported - PROMETHEUS_OWN)
        read |= names
    assert not missing, f"rules read metrics snapctl does not export: {missing}"
    assert len(read - PROMETHEUS_OWN) >= 6, read


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "snapctl.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"])
    return queries


def test_dashboard_queries_are_promql(tmp_path):
    """Each panel's query parses (promtool checks it as a recording rule; $job as Grafana fills it)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": query.replace("$job", ".*")}
        for i, query in enumerate(dashboard_queries())
        if not query.startswith("label_values(")
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_dashboard_queries_read_only_metrics_snapctl_exports(exported):
    queries = dashboard_queries()
    assert len(queries) >= 10
    read = set()
    for query in queries:
        names = metric_names(query)
        assert names, query
        read |= names
    missing = read - exported - PROMETHEUS_OWN
    assert not missing, f"the dashboard reads metrics snapctl does not export: {sorted(missing)}"
    assert {"snapctl_tasks_declared", "snapctl_api_requests_total", "snapctl_api_throttled_total"} <= read


def reconcile_accepts(argv: list[str]) -> dict:
    """The options ``snapctl reconcile`` parses from ``argv`` (click's own parser: a bad option fails)."""
    from reconciler.commands.reconcile import reconcile

    assert argv[0] == "reconcile", argv
    context = reconcile.make_context("reconcile", list(argv[1:]))
    return context.params


def kubernetes_objects() -> dict[str, dict]:
    objects = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            objects[f"{document['kind']}/{document['metadata']['name']}"] = document
    return objects


def test_kubernetes_manifests_are_valid_and_consistent(tmp_path):
    import kubernetes_validate

    objects = kubernetes_objects()
    for document in objects.values():
        for version in ("1.28.0", "1.33.0"):
            kubernetes_validate.validate(document, version, strict=True)  # raises on anything unknown or wrong
    deployment = objects["Deployment/snapctl-controller"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    params = reconcile_accepts(container["args"])
    assert params["watch"] and params["metrics_host"] == "0.0.0.0"
    (port,) = container["ports"]
    assert port["containerPort"] == params["metrics_port"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    # The PostgreSQL URL and the keys come from the Secret whose keys the example shows.
    secret = objects["Secret/snapctl"]
    env = {item["name"]: item for item in container["env"]}
    for variable in ("SNAPCTL_STATE", "VOLC_ACCESSKEY", "VOLC_SECRETKEY"):
        reference = env[variable]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "snapctl" and reference["key"] in secret["stringData"], variable
    assert secret["stringData"]["state-url"].startswith("postgresql://")
    # The manifests: a volume from the ConfigMap, mounted where the args point.
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "manifests"]
    assert [str(p) for p in params["paths"]] == [mount["mountPath"]]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "manifests"]
    configmap = objects[f"ConfigMap/{volume['configMap']['name']}"]
    (tmp_path / "manifests").mkdir()
    for key, text in configmap["data"].items():
        (tmp_path / "manifests" / key).write_text(text)
    validated = run_snapctl(["validate", "manifests"], cwd=tmp_path, env=snapctl_env(None, tmp_path))
    assert validated.code == 0, validated.output
    # The Service selects the pods and reaches their metrics port.
    service = objects["Service/snapctl-metrics"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    budget = objects["PodDisruptionBudget/snapctl-controller"]
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def unit_file() -> Path:
    return DEPLOY / "systemd" / "snapctl-controller.service"


def test_systemd_unit_runs_a_command_snapctl_accepts(tmp_path):
    sections: dict[str, dict[str, str]] = {}
    section = None
    for line in unit_file().read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], {})
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert section is not None, line
            section[key] = value
    assert {"Unit", "Service", "Install"} <= set(sections)
    service = sections["Service"]
    assert service["Restart"] == "always" and service["KillSignal"] == "SIGTERM"
    assert service["EnvironmentFile"].startswith("/etc/")  # the secrets live there, never in the unit
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/local/bin/snapctl"
    params = reconcile_accepts(argv[1:])
    assert params["watch"] and params["metrics_port"] == 9464 and params["log_format"] == "json"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the parse above is the check where systemd is absent
    # systemd checks that the command exists: point it at this snapctl, the unit otherwise as shipped.
    unit = tmp_path / "snapctl-controller.service"
    unit.write_text(unit_file().read_text().replace("/usr/local/bin/snapctl", SNAPCTL))
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), verified.stderr

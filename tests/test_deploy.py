"""What snapctl ships for production (deploy/): Kubernetes manifests and a systemd unit. Each is
checked against the real thing: the Kubernetes objects are validated offline against the API's
schemas, the unit by ``systemd-analyze verify``, and every command line they hold is one
``snapctl reconcile`` accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import yaml
from snapctl_testing import SNAPCTL, run_snapctl, snapctl_env

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


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

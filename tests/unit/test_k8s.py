"""The Kubernetes manifests (k8s/): every overlay renders with the pinned kustomize, passes the
Kubernetes API schemas in strict mode, and is wired to what the deployables read: ports, probe
paths, `PULSE_*` names, the dataflow cluster's addresses, the security context.

kustomize is built into .tools/bin by scripts/k8s-tools.sh (once; cached after).
"""

import base64
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, get_args

import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from pulse import health
from pulse.alerts.rules import parse_rules
from pulse.settings import FILE_SUFFIX, CommonSettings, FlowSettings, IngestSettings, load

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.30.0"
UID = GID = 10001  # the image's user (Containerfile)
PLACEHOLDER_PASSWORD = "CHANGE-ME"

# The deployable each `pulse` subcommand starts, and the settings it reads.
SETTINGS: dict[str, type[BaseSettings]] = {
    "serve": IngestSettings,
    "flow": FlowSettings,
    "migrate": CommonSettings,
}
# Dataflow memory, measured (README, "At high cardinality"): the idle worker, and the state of
# one admitted campaign-day that PULSE_MAX_CAMPAIGNS_PER_DAY bounds per events.raw partition.
FLOW_IDLE_BYTES = 92_000_000
FLOW_CAMPAIGN_BYTES = 3_000

TARGETS = sorted(str(path.parent.relative_to(K8S)) for path in K8S.glob("**/kustomization.yaml"))


@dataclass(frozen=True)
class Rendered:
    target: str  # base or overlays/NAME
    path: Path
    docs: list[dict[str, Any]]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        for doc in self.docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        return None

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]


@dataclass(frozen=True)
class Workload:
    """A Deployment, StatefulSet or Job, with its one container."""

    doc: dict[str, Any]
    where: str  # "overlays/small StatefulSet/pulse-flow": names it in failures

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def pod(self) -> dict[str, Any]:
        return dict(self.doc["spec"]["template"]["spec"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.doc["spec"]["template"]["metadata"].get("labels", {}))

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.doc["spec"]["template"]["metadata"].get("annotations", {}))

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["containers"]
        assert len(containers) == 1, f"{self.where}: expected one container"
        return dict(containers[0])

    @property
    def command(self) -> str:
        args = self.container.get("args", [])
        assert args and args[0] in SETTINGS, (
            f"{self.where}: args {args} start no deployable (one of {sorted(SETTINGS)})"
        )
        return str(args[0])

    @property
    def settings_type(self) -> type[BaseSettings]:
        return SETTINGS[self.command]

    def port(self, port: int | str) -> int:
        """A container port by number or name."""
        for entry in self.container.get("ports", []):
            if port in (entry["containerPort"], entry.get("name")):
                return int(entry["containerPort"])
        raise AssertionError(f"{self.where}: no container port {port!r}")

    def pod_names(self) -> list[str]:
        if self.kind == "StatefulSet":
            return [f"{self.name}-{i}" for i in range(self.doc["spec"].get("replicas", 1))]
        return [f"{self.name}-7c9d5b-x2x4q"]  # a Deployment's or Job's pod: no ordinal


def _workloads(rendered: Rendered) -> list[Workload]:
    return [
        Workload(doc, f"{rendered.target} {doc['kind']}/{doc['metadata']['name']}")
        for doc in rendered.docs
        if doc["kind"] in ("Deployment", "StatefulSet", "Job")
    ]


def _one(rendered: Rendered, command: str) -> Workload:
    found = [w for w in _workloads(rendered) if w.command == command]
    assert len(found) == 1, f"{rendered.target}: expected one workload running `pulse {command}`"
    return found[0]


def _env_names(settings_type: type[BaseSettings]) -> set[str]:
    """Every variable the settings read: one per field, and PULSE_X_FILE per secret."""
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    names = {f"{prefix}{field}".upper() for field in settings_type.model_fields}
    secrets = {
        f"{prefix}{field}{FILE_SUFFIX}".upper()
        for field, info in settings_type.model_fields.items()
        if SecretStr in (info.annotation, *get_args(info.annotation))
    }
    return names | secrets


def _resolve_env(rendered: Rendered, workload: Workload, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it (Secrets not rendered, such as
    one created out of band, are left out)."""
    env: dict[str, str] = {}
    for source in workload.container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        doc = rendered.find(kind, ref["name"])
        assert doc is not None, f"{workload.where}: envFrom names a missing {kind} {ref['name']}"
        env.update(_data(doc))
    for var in workload.container.get("env", []):
        name = var["name"]
        if "value" in var:
            env[name] = str(var["value"])
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            assert path == "metadata.name", f"{workload.where}: {name} from {path}"
            env[name] = pod_name
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
            ref = source["secretKeyRef" if kind == "Secret" else "configMapKeyRef"]
            doc = rendered.find(kind, ref["name"])
            if doc is None and kind == "Secret":
                continue
            assert doc is not None, f"{workload.where}: {name} names a missing {kind}"
            data = _data(doc)
            assert ref["key"] in data, (
                f"{workload.where}: {name}: {kind} {ref['name']} has no key {ref['key']}"
            )
            env[name] = data[ref["key"]]
        else:
            raise AssertionError(f"{workload.where}: {name}: unexpected valueFrom {source}")
    return env


def _data(doc: dict[str, Any]) -> dict[str, str]:
    data = {k: str(v) for k, v in doc.get("stringData", {}).items()}
    if doc["kind"] == "Secret":
        for key, value in doc.get("data", {}).items():
            data[key] = base64.b64decode(value).decode()
    else:
        data.update({k: str(v) for k, v in doc.get("data", {}).items()})
    return data


def _load(
    monkeypatch: pytest.MonkeyPatch, settings_type: type[BaseSettings], env: dict[str, str]
) -> Any:
    """The settings the process would load from exactly this environment."""
    with monkeypatch.context() as m:
        for var in _env_names(settings_type) | set(env):
            m.delenv(var, raising=False)
        for var, value in env.items():
            m.setenv(var, value)
        return load(settings_type)


def _settings(monkeypatch: pytest.MonkeyPatch, rendered: Rendered, workload: Workload) -> Any:
    pod = workload.pod_names()[0]
    return _load(monkeypatch, workload.settings_type, _resolve_env(rendered, workload, pod))


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (e.g. 512Mi, 5Gi, 1G) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    units |= {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity.removesuffix(suffix)) * factor)
    return int(quantity)


@pytest.fixture(scope="module")
def kustomize() -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "k8s-tools.sh"), "path"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/k8s-tools.sh could not install kustomize:\n{result.stderr}")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def renders(kustomize: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    out = tmp_path_factory.mktemp("k8s")
    renders: dict[str, Rendered] = {}
    for target in TARGETS:
        result = subprocess.run(
            [kustomize, "build", str(K8S / target)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"kustomize build k8s/{target} failed:\n{result.stderr}")
        path = out / f"{target.replace('/', '-')}.yaml"
        path.write_text(result.stdout)
        docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        renders[target] = Rendered(target, path, docs)
    return renders


@pytest.fixture(params=TARGETS)
def rendered(request: pytest.FixtureRequest, renders: dict[str, Rendered]) -> Rendered:
    return renders[request.param]


def _all_workloads(renders: dict[str, Rendered]) -> Iterator[tuple[Rendered, Workload]]:
    for rendered in renders.values():
        for workload in _workloads(rendered):
            yield rendered, workload


def test_there_is_a_small_and_a_production_overlay() -> None:
    assert {"base", "overlays/small", "overlays/production"} <= set(TARGETS), TARGETS


def test_every_render_passes_the_api_schemas_strictly(renders: dict[str, Rendered]) -> None:
    validate = Path(sys.executable).with_name("kubernetes-validate")
    paths = [str(r.path) for r in renders.values()]
    result = subprocess.run(
        [str(validate), "-k", KUBERNETES_VERSION, "--strict", "--quiet", *paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = "\n".join(
        line for line in (result.stdout + result.stderr).splitlines() if "INFO" not in line
    )
    assert result.returncode == 0, f"kubernetes-validate --strict rejected a render:\n{report}"


def test_each_render_runs_the_edge_the_dataflow_and_migrate(rendered: Rendered) -> None:
    assert _one(rendered, "serve").kind == "Deployment"
    assert _one(rendered, "flow").kind == "StatefulSet"
    assert _one(rendered, "migrate").kind == "Job"


def test_every_pulse_variable_is_a_setting_of_its_deployable(
    renders: dict[str, Rendered],
) -> None:
    for rendered, workload in _all_workloads(renders):
        known = _env_names(workload.settings_type)
        env = _resolve_env(rendered, workload, workload.pod_names()[0])
        names = set(env) | {v["name"] for v in workload.container.get("env", [])}
        unknown = sorted(n for n in names if n.startswith("PULSE_") and n not in known)
        assert not unknown, (
            f"{workload.where} sets {unknown}, which `pulse {workload.command}` does not read "
            f"({workload.settings_type.__name__} in pulse/settings.py)"
        )


def test_every_pod_loads_valid_settings(
    renders: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process's environment passes the settings' own checks (cluster, DSN, ...)."""
    for rendered, workload in _all_workloads(renders):
        for pod in workload.pod_names():
            env = _resolve_env(rendered, workload, pod)
            try:
                _load(monkeypatch, workload.settings_type, env)
            except Exception as exc:
                pytest.fail(f"{workload.where}, pod {pod}: {exc}")


def test_container_ports_are_the_settings_ports(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each named container port is the one its process listens on: the settings' field
    default (pulse/settings.py), or what the manifest sets in its environment."""
    expected = {
        "serve": {
            "grpc": "grpc_port",
            "metrics": "metrics_port",
            "health": "health_port",
            "http": "http_port",
        },
        "flow": {"metrics": "metrics_port", "health": "health_port"},
    }
    for command, ports in expected.items():
        workload = _one(rendered, command)
        settings = _settings(monkeypatch, rendered, workload)
        for name, field in ports.items():
            port, setting = workload.port(name), getattr(settings, field)
            assert port == setting, (
                f"{workload.where}: container port {name!r} is {port}, but `pulse {command}` "
                f"listens on PULSE_{field.upper()}={setting}"
            )


def test_probes_ask_the_health_server(
    renders: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    for rendered, workload in _all_workloads(renders):
        if workload.kind == "Job":
            continue
        settings = _settings(monkeypatch, rendered, workload)
        assert settings.health_host == "0.0.0.0", (
            f"{workload.where}: PULSE_HEALTH_HOST={settings.health_host}: the kubelet cannot "
            "reach a health server bound to loopback"
        )
        container = workload.container
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert probe in container, f"{workload.where}: no {probe}"
            get = container[probe].get("httpGet")
            assert get, f"{workload.where}: {probe} is not an HTTP GET"
            assert get["path"] == path, f"{workload.where}: {probe} asks {get['path']}"
            status, _ = health.respond(get["path"], 0.0, dict)
            assert status != health.HTTP_NOT_FOUND, f"{workload.where}: no route {get['path']}"
            port = workload.port(get["port"])
            assert port == settings.health_port, (
                f"{workload.where}: {probe} asks port {port}, the health server listens on "
                f"PULSE_HEALTH_PORT={settings.health_port}"
            )


def test_every_listening_port_binds_the_pod_ip(
    renders: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings bind loopback by default; a pod is reached on its IP (probes, scrapes,
    Services), so every port a process listens on gets its host setting at 0.0.0.0."""
    for rendered, workload in _all_workloads(renders):
        if workload.kind == "Job":
            continue
        settings = _settings(monkeypatch, rendered, workload)
        fields = type(settings).model_fields
        listening = [n for n in fields if n.endswith("_port") and getattr(settings, n)]
        assert listening, f"{workload.where}: no listening port"
        for port in listening:
            host = port.removesuffix("_port") + "_host"
            assert host in fields, (
                f"{workload.where}: PULSE_{port.upper()} is set, but its server binds every "
                f"address (no PULSE_{host.upper()}): leave it 0 (off)"
            )
            value = getattr(settings, host)
            assert value == "0.0.0.0", (
                f"{workload.where}: PULSE_{host.upper()}={value}: a server bound there is not "
                f"reachable on the pod IP at PULSE_{port.upper()}={getattr(settings, port)}"
            )


def test_scrape_annotations_name_the_metrics_port(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge, flow = _one(rendered, "serve"), _one(rendered, "flow")
    ports = [
        (edge, _settings(monkeypatch, rendered, edge).metrics_port),
        (flow, _settings(monkeypatch, rendered, flow).metrics_port),
    ]
    for workload, port in ports:
        notes = workload.annotations
        assert notes.get("prometheus.io/scrape") == "true", f"{workload.where}: not scraped"
        assert notes.get("prometheus.io/path") == "/metrics", f"{workload.where}: scrape path"
        assert notes.get("prometheus.io/port") == str(port), (
            f"{workload.where}: scrapes port {notes.get('prometheus.io/port')}, metrics are "
            f"on {port}"
        )
        assert workload.port(port) == port


def test_services_reach_container_ports(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    workloads = _workloads(rendered)
    for service in rendered.of_kind("Service"):
        name = service["metadata"]["name"]
        selector = service["spec"]["selector"]
        selected = [w for w in workloads if selector.items() <= w.labels.items()]
        assert len(selected) == 1, f"{rendered.target} Service/{name} selects {len(selected)}"
        for port in service["spec"]["ports"]:
            selected[0].port(port.get("targetPort", port["port"]))
    edge = _one(rendered, "serve")
    grpc_port = _settings(monkeypatch, rendered, edge).grpc_port
    exposed = [
        p["port"]
        for s in rendered.of_kind("Service")
        if s["spec"]["selector"].items() <= edge.labels.items()
        for p in s["spec"]["ports"]
    ]
    assert grpc_port in exposed, f"{rendered.target}: no Service exposes gRPC {grpc_port}"


def test_the_dataflow_cluster_addresses_match_the_statefulset(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = _one(rendered, "flow")
    spec = flow.doc["spec"]
    where = flow.where
    assert spec.get("podManagementPolicy") == "Parallel", f"{where}: pods must start together"
    headless = rendered.find("Service", spec["serviceName"])
    assert headless is not None, f"{where}: serviceName {spec['serviceName']} is no Service"
    assert headless["spec"].get("clusterIP") == "None", f"{where}: {spec['serviceName']} headless"
    assert headless["spec"].get("publishNotReadyAddresses") is True, (
        f"{where}: processes must resolve each other before they are ready"
    )
    s = _settings(monkeypatch, rendered, flow)
    replicas = spec.get("replicas", 1)
    assert len(s.addresses) == replicas, (
        f"{where}: replicas {replicas} but PULSE_CLUSTER_ADDRESSES lists {len(s.addresses)} "
        f"processes: {s.addresses}"
    )
    cluster_port = flow.port("cluster")
    assert [p["port"] for p in headless["spec"]["ports"]] == [cluster_port]
    expected = [f"{flow.name}-{i}.{headless['metadata']['name']}" for i in range(replicas)]
    for i, (address, host) in enumerate(zip(s.addresses, expected, strict=True)):
        assert address == f"{host}:{cluster_port}", (
            f"{where}: PULSE_CLUSTER_ADDRESSES entry {i} is {address!r}, pod {i} is "
            f"{host}:{cluster_port}"
        )
    assert s.recovery_partitions >= replicas * s.workers, (
        f"{where}: PULSE_RECOVERY_PARTITIONS={s.recovery_partitions} < {replicas} processes "
        f"x PULSE_WORKERS={s.workers}"
    )


def test_the_recovery_store_is_on_each_pods_volume(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = _one(rendered, "flow")
    s = _settings(monkeypatch, rendered, flow)
    assert s.recovery_dir, f"{flow.where}: no PULSE_RECOVERY_DIR"
    claims = {t["metadata"]["name"] for t in flow.doc["spec"].get("volumeClaimTemplates", [])}
    mounts = [
        m
        for m in flow.container.get("volumeMounts", [])
        if PurePosixPath(s.recovery_dir).is_relative_to(m["mountPath"])
    ]
    assert mounts, f"{flow.where}: no volume is mounted at {s.recovery_dir}"
    deepest = max(mounts, key=lambda m: len(m["mountPath"]))
    assert deepest["name"] in claims, (
        f"{flow.where}: {s.recovery_dir} is on volume {deepest['name']}, not a "
        f"volumeClaimTemplate ({sorted(claims)})"
    )


def test_bytewax_writes_its_api_cache_to_a_writable_directory(rendered: Rendered) -> None:
    """Bytewax writes dataflow.json into this directory at start (a missing one, such as a
    file path, stops the dataflow); the root filesystem is read-only."""
    flow = _one(rendered, "flow")
    env = {v["name"]: v.get("value") for v in flow.container.get("env", [])}
    cache = env.get("BYTEWAX_DATAFLOW_API_CACHE_PATH")
    assert cache, f"{flow.where}: set BYTEWAX_DATAFLOW_API_CACHE_PATH to a writable directory"
    volumes = {v["name"]: v for v in flow.pod.get("volumes", [])}
    writable = [
        m["mountPath"]
        for m in flow.container.get("volumeMounts", [])
        if "emptyDir" in volumes.get(m["name"], {}) and m["mountPath"] == cache
    ]
    assert writable, f"{flow.where}: BYTEWAX_DATAFLOW_API_CACHE_PATH={cache} is no emptyDir mount"


def test_alert_rules_are_mounted_from_config_alerts_toml(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = _one(rendered, "flow")
    s = _settings(monkeypatch, rendered, flow)
    rules = PurePosixPath(s.alert_rules)
    mounts = {m["mountPath"]: m["name"] for m in flow.container.get("volumeMounts", [])}
    assert str(rules.parent) in mounts, f"{flow.where}: nothing mounted at {rules.parent}"
    volumes = {v["name"]: v for v in flow.pod.get("volumes", [])}
    config_map = rendered.find("ConfigMap", volumes[mounts[str(rules.parent)]]["configMap"]["name"])
    assert config_map is not None, f"{flow.where}: the alert rules ConfigMap is missing"
    text = config_map["data"].get(rules.name)
    assert text is not None, f"{flow.where}: the ConfigMap has no key {rules.name}"
    assert text == (ROOT / "config" / "alerts.toml").read_text(), (
        "k8s/base/alerts.toml differs from config/alerts.toml: copy it again"
    )
    assert parse_rules(text, s.window_seconds * 1000, str(rules))


def test_the_dsn_comes_from_a_secret_holding_only_a_placeholder(
    renders: dict[str, Rendered],
) -> None:
    for _, workload in _all_workloads(renders):
        env = {v["name"]: v for v in workload.container.get("env", [])}
        assert "secretKeyRef" in env.get("PULSE_PG_DSN", {}).get("valueFrom", {}), (
            f"{workload.where}: PULSE_PG_DSN must come from a Secret (secretKeyRef)"
        )
    for rendered in renders.values():
        for secret in rendered.of_kind("Secret"):
            for key, value in _data(secret).items():
                assert PLACEHOLDER_PASSWORD in value, (
                    f"{rendered.target} Secret/{secret['metadata']['name']} {key}: only a "
                    f"placeholder ({PLACEHOLDER_PASSWORD}) may be checked in"
                )


def test_pods_run_locked_down(renders: dict[str, Rendered]) -> None:
    for _, workload in _all_workloads(renders):
        where, pod, container = workload.where, workload.pod, workload.container
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot"
        assert (context.get("runAsUser"), context.get("runAsGroup")) == (UID, GID), where
        assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        own = container.get("securityContext", {})
        for field, value in (
            ("allowPrivilegeEscalation", False),
            ("readOnlyRootFilesystem", True),
            ("runAsNonRoot", True),
        ):
            assert own.get(field) is value, f"{where}: container securityContext {field}"
        assert own.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drop ALL"
        assert own.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert tmp, f"{where}: a read-only root needs a writable /tmp"
        assert "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp is not an emptyDir"


def test_resources_are_set_and_bound_the_dataflow_state(
    renders: dict[str, Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    for rendered, workload in _all_workloads(renders):
        resources = workload.container.get("resources", {})
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in resources.get(bound, {}), (
                    f"{workload.where}: no {resource} {bound}"
                )
        if workload.command != "flow":
            continue
        s = _settings(monkeypatch, rendered, workload)
        assert s.max_campaigns_per_day > 0, f"{workload.where}: unbounded state (no limit)"
        processes = workload.doc["spec"].get("replicas", 1)
        partitions = math.ceil(s.topic_partitions / processes)
        need = FLOW_IDLE_BYTES + partitions * s.max_campaigns_per_day * FLOW_CAMPAIGN_BYTES
        limit = _bytes(resources["limits"]["memory"])
        assert limit >= need, (
            f"{workload.where}: memory limit {resources['limits']['memory']} is below "
            f"{need / 1e9:.2f} GB: {partitions} events.raw partitions per process x "
            f"PULSE_MAX_CAMPAIGNS_PER_DAY={s.max_campaigns_per_day} x 3 KB + 92 MB idle"
        )


def test_the_edge_scales_on_cpu_and_survives_disruptions(rendered: Rendered) -> None:
    edge = _one(rendered, "serve")
    assert "replicas" not in edge.doc["spec"], f"{edge.where}: the HPA owns replicas"
    hpas = [
        h
        for h in rendered.of_kind("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == edge.name
    ]
    assert len(hpas) == 1, f"{rendered.target}: expected one HPA for {edge.name}"
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]
    resources = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert "cpu" in resources, f"{rendered.target}: the edge HPA does not scale on CPU"
    pdbs = [
        p
        for p in rendered.of_kind("PodDisruptionBudget")
        if p["spec"]["selector"]["matchLabels"].items() <= edge.labels.items()
    ]
    assert len(pdbs) == 1, f"{rendered.target}: expected one PodDisruptionBudget for the edge"

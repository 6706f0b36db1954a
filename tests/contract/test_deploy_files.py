"""The deploy files agree with the code: they parse, their PromQL names only metrics the
services export, their environment names only settings ``flowyard/config.py`` documents,
and ports, commands and job names match the services' defaults.

Pure file checks. Where ``promtool`` (Debian's ``prometheus`` package) or ``kubectl`` is on
PATH, their offline checks run too; otherwise those tests are skipped, saying why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from flowyard import config
from flowyard.metrics import ServiceMetrics
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
K8S = DEPLOY / "k8s"
DASHBOARD = GRAFANA / "dashboards" / "flowyard.json"

SERVICES = ("api-gateway", "scheduler", "executor", "alerter")
METRICS_PORTS = config.DEFAULT_METRICS_PORTS
GRPC_PORT = 50051
WEBHOOK_PORT = 8080
# Series Prometheus itself adds to every scrape.
SYNTHETIC_SERIES = frozenset({"up"})

YAML_FILES = sorted(p for pattern in ("*.yaml", "*.yml") for p in DEPLOY.rglob(pattern))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _load_all_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# --------------------------------------------------------------------------- the code's truth


@cache
def exported_metric_names() -> frozenset[str]:
    """Every series name a ServiceMetrics can expose, expanded by metric type."""
    registry = CollectorRegistry()
    ServiceMetrics(registry, "contract-test")
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        assert family.type in suffixes, f"no expansion for {family.type} {family.name}"
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return frozenset(names)


@cache
def documented_settings() -> frozenset[str]:
    """The FLOWYARD_* names in the table of config.py's module docstring."""
    doc = config.__doc__ or ""
    return frozenset(re.findall(r"^\|\s*(FLOWYARD_[A-Z0-9_]+)\s*\|", doc, flags=re.M))


def test_the_sources_of_truth_are_not_empty() -> None:
    assert "flowyard_runs_finished_total" in exported_metric_names()
    assert "flowyard_task_duration_seconds_bucket" in exported_metric_names()
    assert {"FLOWYARD_KAFKA_BOOTSTRAP", "FLOWYARD_METRICS_PORT"} <= documented_settings()
    assert set(METRICS_PORTS) == set(SERVICES)


# ------------------------------------------------------------------------------ PromQL names

_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a small tokenizer, not a full PromQL parser)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, is_call = match.group(1), match.group(2)
        if not is_call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'sum by (le) (rate(flowyard_step_handoff_seconds_bucket{job=~"a|b"}[$__interval]))',
            {"flowyard_step_handoff_seconds_bucket"},
        ),
        (
            "histogram_quantile(0.9, sum(rate(x_bucket[5m])) by (le)) > 1e3 and on (a) y offset 5m",
            {"x_bucket", "y"},
        ),
        ('a:b:rate5m / ignoring (s) group_left (w) c unless d{e="f(g)"}', {"a:b:rate5m", "c", "d"}),
    ],
)
def test_the_promql_name_extractor(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


@cache
def dashboard() -> dict[str, Any]:
    value = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def dashboard_exprs() -> list[str]:
    return [
        node["expr"] for node in _walk(dashboard()["panels"]) if isinstance(node.get("expr"), str)
    ]


def dashboard_variable_metrics() -> set[str]:
    names = set()
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        names.update(re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", text))
    return names


def rule_files() -> list[Path]:
    return [PROMETHEUS / "rules.yml"]


def rules() -> list[dict[str, Any]]:
    found = []
    for path in rule_files():
        for group in _load_yaml(path)["groups"]:
            found.extend(group["rules"])
    return found


def test_dashboard_queries_use_only_exported_metrics() -> None:
    exprs = dashboard_exprs()
    assert exprs, "the dashboard has no queries"
    allowed = exported_metric_names() | SYNTHETIC_SERIES
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert names <= allowed, f"unknown metrics {sorted(names - allowed)} in {expr!r}"
    assert dashboard_variable_metrics() <= allowed


def test_dashboard_has_the_panels_operators_need() -> None:
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    assert used >= {
        "flowyard_runs_started_total",
        "flowyard_runs_finished_total",
        "flowyard_task_duration_seconds_bucket",
        "flowyard_step_handoff_seconds_bucket",
        "flowyard_kafka_consumer_lag",
        "flowyard_tasks_in_flight",
        "flowyard_dead_letters_total",
        "flowyard_grpc_requests_total",
    }
    exprs = "\n".join(dashboard_exprs())
    for quantile in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs


def test_rules_use_only_exported_or_recorded_metrics() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    allowed = exported_metric_names() | recorded | SYNTHETIC_SERIES
    for rule in rules():
        names = promql_metric_names(rule["expr"])
        assert names, f"no metric found in {rule['expr']!r}"
        assert names <= allowed, f"unknown metrics {sorted(names - allowed)} in {rule}"


def test_rules_cover_runs_latency_lag_and_dead_letters() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    assert {
        "workflow:flowyard_runs_success_ratio:rate5m",
        "node_type:flowyard_task_duration_seconds:p95_rate5m",
        "job:flowyard_step_handoff_seconds:p50_rate5m",
        "job:flowyard_step_handoff_seconds:p99_rate5m",
    } <= recorded
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert {
        "FlowyardRunFailureRatioHigh",
        "FlowyardConsumerLagGrowing",
        "FlowyardDeadLetters",
    } <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"].get("severity") in {"warning", "critical"}, name
        assert rule["annotations"].get("summary"), name


# ------------------------------------------------------------------------------ YAML, JSON


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses(path: Path) -> None:
    docs = _load_all_yaml(path)
    assert docs, f"{_rel(path)} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


def test_the_expected_deploy_files_exist() -> None:
    expected = [
        "Dockerfile",
        "compose.yaml",
        "prometheus/prometheus.yml",
        "prometheus/prometheus-compose.yml",
        "prometheus/rules.yml",
        "grafana/dashboards/flowyard.json",
        "k8s/README.md",
    ]
    missing = [name for name in expected if not (DEPLOY / name).is_file()]
    assert not missing
    assert (GRAFANA / "provisioning" / "datasources").is_dir()
    assert (GRAFANA / "provisioning" / "dashboards").is_dir()


def test_deploy_files_hold_no_machine_paths() -> None:
    offenders = [
        _rel(p)
        for p in DEPLOY.rglob("*")
        if p.is_file() and str(ROOT) in p.read_text(encoding="utf-8", errors="replace")
    ]
    assert not offenders


# ------------------------------------------------------------------------------ environment


def _env_names(environment: Any) -> set[str]:
    if isinstance(environment, dict):
        return set(environment)
    return {str(item).split("=", 1)[0] for item in environment or []}


@cache
def compose() -> dict[str, Any]:
    value = _load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(value, dict)
    return value


def flowyard_compose_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the Flowyard image."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if "build" in service or str(service.get("image", "")).startswith("flowyard")
    }


def k8s_docs(kind: str) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in _load_all_yaml(path)
        if doc.get("kind") == kind
    ]


def test_compose_environment_names_documented_settings() -> None:
    documented = documented_settings()
    services = flowyard_compose_services()
    assert set(services) == set(SERVICES)
    for name, service in services.items():
        undocumented = _env_names(service.get("environment")) - documented
        assert not undocumented, f"compose service {name}: {sorted(undocumented)}"
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    interpolated = set(re.findall(r"\$\{(FLOWYARD_[A-Z0-9_]+)", text))
    assert interpolated <= documented, sorted(interpolated - documented)


def test_k8s_environment_names_documented_settings() -> None:
    documented = documented_settings()
    (configmap,) = k8s_docs("ConfigMap")
    assert configmap["data"], "empty ConfigMap"
    assert set(configmap["data"]) <= documented, sorted(set(configmap["data"]) - documented)
    assert {"FLOWYARD_KAFKA_BOOTSTRAP", "FLOWYARD_MONGO_URL"} <= set(configmap["data"])
    for deployment in k8s_docs("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            names = {item["name"] for item in container.get("env", [])}
            assert names <= documented, (deployment["metadata"]["name"], names - documented)


# ------------------------------------------------------------------------------ services


def test_every_service_command_is_a_console_script() -> None:
    for service in SERVICES:
        project = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
        assert f"flowyard-{service}" in project["project"]["scripts"]


def test_dockerfile_installs_the_whole_workspace_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "python:3.11-slim" in text
    assert "uv sync --frozen --all-packages --no-dev" in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users, "no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    # the dependency layer copies every member's manifest; a new member must be added there
    members = sorted(ROOT.glob("libs/*/pyproject.toml")) + sorted(
        ROOT.glob("services/*/pyproject.toml")
    )
    for member in members:
        assert f"COPY {_rel(member)} " in text, f"Dockerfile does not copy {_rel(member)}"


def test_compose_runs_each_service_on_its_default_ports() -> None:
    services = flowyard_compose_services()
    for name in SERVICES:
        service = services[name]
        assert service["command"] == [f"flowyard-{name}"]
        env = service["environment"]
        assert int(env["FLOWYARD_METRICS_PORT"]) == METRICS_PORTS[name]
        assert env["FLOWYARD_METRICS_HOST"] == "0.0.0.0"
        assert service["stop_grace_period"] == "40s"
        assert {"kafka", "mongo"} <= set(service["depends_on"])
    assert services["api-gateway"]["environment"]["FLOWYARD_GRPC_ADDR"] == f"0.0.0.0:{GRPC_PORT}"
    executor = services["executor"]
    assert "container_name" not in executor and "ports" not in executor, "executor must scale"
    assert compose()["services"]["kafka"]["image"] == "apache/kafka:3.9.1"
    assert compose()["services"]["mongo"]["image"].startswith("mongo:7")


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """``./source: target`` of a compose service's short-syntax bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = f"{volume}:".split(":")
        if source.startswith("."):
            mounts[source] = target
    return mounts


def test_compose_mounts_the_prometheus_and_grafana_files() -> None:
    services = compose()["services"]
    prom_mounts = _bind_mounts(services["prometheus"])
    assert prom_mounts["./prometheus/prometheus-compose.yml"] == "/etc/prometheus/prometheus.yml"
    # rule_files is relative to the config file, so rules.yml must sit beside it
    assert prom_mounts["./prometheus/rules.yml"] == "/etc/prometheus/rules.yml"
    assert _load_yaml(PROMETHEUS / "prometheus-compose.yml")["rule_files"] == ["rules.yml"]

    grafana_mounts = _bind_mounts(services["grafana"])
    provider = _load_yaml(GRAFANA / "provisioning" / "dashboards" / "flowyard.yaml")
    assert grafana_mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert grafana_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (datasource,) = _load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_the_four_services_one_job_each() -> None:
    jobs = {
        job["job_name"]: job for job in _load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]
    }
    for service in SERVICES:
        job = jobs[f"flowyard-{service}"]
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        assert targets == [f"127.0.0.1:{METRICS_PORTS[service]}"]

    compose_jobs = {
        job["job_name"]: job
        for job in _load_yaml(PROMETHEUS / "prometheus-compose.yml")["scrape_configs"]
    }
    for service in SERVICES:
        (sd,) = compose_jobs[f"flowyard-{service}"]["dns_sd_configs"]
        assert sd["names"] == [service]
        assert sd["port"] == METRICS_PORTS[service]
        assert service in flowyard_compose_services()


# ------------------------------------------------------------------------------ Kubernetes


def _deployments() -> dict[str, dict[str, Any]]:
    found = {}
    for deployment in k8s_docs("Deployment"):
        name = deployment["metadata"]["name"]
        assert name.startswith("flowyard-")
        found[name.removeprefix("flowyard-")] = deployment
    return found


def _port(container: dict[str, Any], ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == ref]
    return int(port)


def test_k8s_deployments_probe_drain_and_bound_resources() -> None:
    deployments = _deployments()
    assert set(deployments) == set(SERVICES)
    for service, deployment in deployments.items():
        template = deployment["spec"]["template"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items()
        pod = template["spec"]
        assert pod["terminationGracePeriodSeconds"] == 40
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["args"] == [f"flowyard-{service}"]
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        port = METRICS_PORTS[service]
        assert env["FLOWYARD_METRICS_PORT"] == str(port)
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        assert {"configMapRef": {"name": "flowyard-config"}} in container["envFrom"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (service, kind)
        for probe_name in ("readinessProbe", "livenessProbe"):
            probe = container[probe_name]
            if service == "api-gateway":
                assert probe["grpc"]["port"] == GRPC_PORT, probe_name
            else:
                assert probe["httpGet"]["path"] == "/metrics", (service, probe_name)
                assert _port(container, probe["httpGet"]["port"]) == port, (service, probe_name)
    gateway_env = deployments["api-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FLOWYARD_GRPC_ADDR", "value": f"0.0.0.0:{GRPC_PORT}"} in gateway_env


def test_k8s_services_select_pods_and_expose_grpc_and_metrics() -> None:
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in _deployments().values()]
    services = {s["metadata"]["name"]: s for s in k8s_docs("Service")}
    for service in services.values():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), service
    gateway_ports = {p["port"] for p in services["flowyard-api-gateway"]["spec"]["ports"]}
    assert gateway_ports == {GRPC_PORT, WEBHOOK_PORT, METRICS_PORTS["api-gateway"]}
    for service in ("scheduler", "executor", "alerter"):
        headless = services[f"flowyard-{service}-metrics"]["spec"]
        assert headless["clusterIP"] == "None"
        assert [p["port"] for p in headless["ports"]] == [METRICS_PORTS[service]]


def test_k8s_executor_autoscales() -> None:
    (hpa,) = k8s_docs("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "flowyard-executor",
    }
    (configmap,) = k8s_docs("ConfigMap")
    partitions = int(configmap["data"]["FLOWYARD_TOPIC_PARTITIONS"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions
    assert "replicas" not in _deployments()["executor"]["spec"], "the HPA owns the replicas"


def test_k8s_readme_says_where_kafka_and_mongodb_come_from() -> None:
    text = (K8S / "README.md").read_text(encoding="utf-8")
    assert "platform" in text
    assert "FLOWYARD_KAFKA_BOOTSTRAP" in text and "FLOWYARD_MONGO_URL" in text


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_load_yaml(K8S / "kustomization.yaml")["resources"])
    manifests = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == manifests


# ------------------------------------------------------------------------------ Grafana


def test_dashboard_is_templated_on_its_datasource() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(_walk(board["panels"]))
    ids = [p["id"] for p in panels if "gridPos" in p]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for node in panels:
        if "gridPos" in node:
            assert node["gridPos"]["x"] + node["gridPos"]["w"] <= 24, node.get("title")
        if "expr" in node or ("targets" in node and node.get("type") != "row"):
            assert node["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, node


# ------------------------------------------------------------------------------ tools

_PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    _PROMTOOL is None,
    reason="promtool is not on PATH (Debian: apt-get install prometheus)",
)


def _promtool(*args: str) -> None:
    assert _PROMTOOL is not None
    result = subprocess.run(
        [_PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-compose.yml"])
def test_promtool_accepts_the_config(name: str) -> None:
    _promtool("check", "config", str(PROMETHEUS / name))


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    _promtool("check", "rules", *(str(p) for p in rule_files()))


@needs_promtool
def test_promtool_rule_unit_tests_pass() -> None:
    _promtool("test", "rules", str(PROMETHEUS / "rules.test.yml"))


@needs_promtool
def test_promtool_parses_the_dashboard_queries(tmp_path: Path) -> None:
    """Each dashboard query, its Grafana variables filled in, as a recording rule."""
    exprs = [
        expr.replace("$__rate_interval", "1m").replace("$workflow", ".*")
        for expr in dashboard_exprs()
    ]
    assert all("$" not in expr for expr in exprs), "a variable this test does not fill in"
    group = {
        "name": "dashboard",
        "rules": [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)],
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    _promtool("check", "rules", str(path))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
def test_kustomize_builds_the_manifests() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert kinds.count("Deployment") == len(SERVICES)

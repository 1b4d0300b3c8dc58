"""deploy/: what can be checked without a container engine, a cluster or a network.

The compose file against the Compose Specification's JSON schema, the Kubernetes
manifests against Kubernetes' published API schemas (strict: unknown fields
refused), the OpenTelemetry Collector configs against the contrib distribution's
components, every agentwatch command line in them against agentwatch's own
argument parser, and the image's file list by building the package from it.
The schemas are vendored (deploy/schemas/) or come with a test dependency.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from agentwatch import cli

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
CONTRIB = yaml.safe_load((DEPLOY / "schemas" / "otelcol-contrib-0.135.0.yaml").read_text())
MANIFESTS = sorted(p for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
K8S = {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in MANIFESTS}
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


def parses(args: list[str]) -> bool:
    """Whether `agentwatch ARGS` is a valid command line (argparse exits on a bad one)."""
    try:
        cli.build_parser().parse_args(args)
    except SystemExit:
        return False
    return True


def k8s_objects(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for docs in K8S.values() for d in docs if d["kind"] == kind}


# --- compose -----------------------------------------------------------------------------------------------

def test_compose_file_follows_the_compose_specification():
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert [e.message for e in validator.iter_errors(COMPOSE)] == []
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["receiver-1"]["restart_policy"] = "always"  # not a Compose key
    assert list(validator.iter_errors(broken)), "the schema refuses what Compose would"


def test_compose_runs_the_components_with_pinned_images_and_health_checks():
    services = COMPOSE["services"]
    assert set(services) == {"clickhouse", "schema", "receiver-1", "receiver-2", "detector-0", "detector-1",
                             "dashboard", "otelcol"}
    for name, service in services.items():
        assert re.search(r":\d+\.\d+\.\d+", service["image"]), f"{name}: pin the image version"
        if name not in ("schema", "otelcol"):  # a one-shot job; a distroless image (checked from outside)
            assert service["healthcheck"]["test"], name
        if service["image"].startswith("agentwatch"):
            assert parses(service["command"]), f"{name}: {service['command']}"
            assert service.get("depends_on", {}).get("schema") or name == "schema"


def test_compose_gives_each_receiver_its_own_spool_volume():
    mounts = {}
    for name in ("receiver-1", "receiver-2"):
        service = COMPOSE["services"][name]
        (volume,) = service["volumes"]
        source, target = volume.split(":")
        assert source in COMPOSE["volumes"] and service["environment"]["AGENTWATCH_SPOOL_DIR"].startswith(target)
        assert "receivers" in service["networks"]["default"]["aliases"]
        mounts[name] = source
    assert len(set(mounts.values())) == 2


def test_compose_splits_the_tenants_and_runs_alerts_once():
    commands = [COMPOSE["services"][f"detector-{k}"]["command"] for k in range(2)]
    shards = [c[c.index("--shard") + 1] for c in commands]
    assert shards == ["0/2", "1/2"]
    assert [("--no-alerts" in c) for c in commands] == [False, True]


# --- Dockerfile --------------------------------------------------------------------------------------------

def test_image_is_built_from_the_package_sources(tmp_path):
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert all(re.search(r":\d+\.\d+\.\d+-", line) for line in re.findall(r"^FROM .*", dockerfile, re.M))
    assert 'ENTRYPOINT ["agentwatch"]' in dockerfile and re.search(r"^USER 10001", dockerfile, re.M)
    copied = [p for line in re.findall(r"^COPY (?!--from)(.*)", dockerfile, re.M) for p in line.split()[:-1]]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(copied) == {"pyproject.toml", "README.md", *pyproject["tool"]["setuptools"]["package-dir"].values()}
    # Build the wheel from exactly what the image copies: every package and the SQL files must be in it.
    context = tmp_path / "context"
    for path in copied:
        source = ROOT / path
        (shutil.copytree(source, context / path, ignore=shutil.ignore_patterns("__pycache__"))
         if source.is_dir() else (context.mkdir(exist_ok=True), shutil.copy(source, context / path)))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), str(context)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("agentwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in pyproject["tool"]["setuptools"]["packages"]:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    sql = sorted(p.name for p in (ROOT / "schemas" / "sql").glob("*.sql"))
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("agentwatch/schemas/sql/")) == sql


# --- Kubernetes --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_follow_the_published_schemas(version):
    count = 0
    for name, docs in K8S.items():
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)
            count += 1
    assert count >= 14
    bad = json.loads(json.dumps(k8s_objects("StatefulSet")["agentwatch-receiver"]))
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def test_kustomization_applies_every_manifest_but_the_example_secrets():
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS if p.name != "secrets.example.yaml")


def containers() -> dict[str, dict]:
    pods = [o["spec"]["template"]["spec"] for kind in ("StatefulSet", "Deployment", "Job")
            for o in k8s_objects(kind).values()]
    return {c["name"]: c for spec in pods for c in spec["containers"]}


def test_every_agentwatch_pod_runs_a_valid_command_with_config_and_secrets_that_exist():
    secrets = set(k8s_objects("Secret"))
    configs = set(k8s_objects("ConfigMap"))
    for name, container in containers().items():
        if not container["image"].startswith("agentwatch"):
            continue
        if "args" in container and "command" not in container:
            assert parses(container["args"]), name
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets, name
            else:
                assert source["configMapRef"]["name"] in configs, name


def test_receivers_keep_their_spool_on_their_own_volume_and_scale():
    receiver = k8s_objects("StatefulSet")["agentwatch-receiver"]
    (claim,) = receiver["spec"]["volumeClaimTemplates"]
    (container,) = receiver["spec"]["template"]["spec"]["containers"]
    (mount,) = container["volumeMounts"]
    spool = {e["name"]: e["value"] for e in container["env"]}["AGENTWATCH_SPOOL_DIR"]
    assert mount["name"] == claim["metadata"]["name"] and spool.startswith(mount["mountPath"])
    assert not receiver["spec"]["template"]["spec"].get("volumes"), "no emptyDir for the spool"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "otlp-http"}
    scaler = k8s_objects("HorizontalPodAutoscaler")["agentwatch-receiver"]["spec"]["scaleTargetRef"]
    assert (scaler["kind"], scaler["name"]) == ("StatefulSet", "agentwatch-receiver")
    assert receiver["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("ordinal", [0, 1])
def test_detector_pod_ordinal_is_its_shard_and_every_pod_stands_by_to_alert(tmp_path, ordinal):
    detector = k8s_objects("StatefulSet")["agentwatch-detector"]
    shards = k8s_objects("ConfigMap")["agentwatch-config"]["data"]["AGENTWATCH_DETECTOR_SHARDS"]
    assert int(shards) == detector["spec"]["replicas"]
    (container,) = detector["spec"]["template"]["spec"]["containers"]
    fake = tmp_path / "agentwatch"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    run = subprocess.run([*container["command"], *container["args"]], capture_output=True, text=True, timeout=30,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin", "HOSTNAME": f"agentwatch-detector-{ordinal}",
                              "AGENTWATCH_DETECTOR_SHARDS": shards})
    args = run.stdout.split()
    assert args[:3] == ["detect", "--shard", f"{ordinal}/{shards}"] and parses(args)
    assert "--no-alerts" not in args  # the lease lets one dispatcher send; the others take over


def test_kubernetes_collector_runs_deploy_otelcol_yaml():
    config = k8s_objects("ConfigMap")["agentwatch-otelcol"]["data"]["config.yaml"]
    assert config == (DEPLOY / "otelcol.yaml").read_text()
    env = {e["name"]: e["value"] for e in containers()["otelcol"]["env"]}
    headless = k8s_objects("Service")["agentwatch-receiver-pods"]
    assert headless["spec"]["clusterIP"] == "None"
    assert env["AGENTWATCH_RECEIVERS"].startswith(f"{headless['metadata']['name']}.agentwatch.svc")


# --- OpenTelemetry Collector -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["otelcol.yaml", "otelcol-clickhouse.yaml"])
def test_otelcol_config_uses_contrib_components_and_wires_them(name):
    config = yaml.safe_load((DEPLOY / name).read_text())
    used = set(config["service"].get("extensions", []))
    for pipeline, spec in config["service"]["pipelines"].items():
        assert pipeline.split("/")[0] in ("traces", "metrics", "logs"), pipeline
        for kind in ("receivers", "processors", "exporters"):
            for component in spec.get(kind, []):
                assert component in config[kind], f"{pipeline} uses {component}, not defined under {kind}"
                used.add(component)
    for kind in ("receivers", "processors", "exporters", "extensions"):
        for component, settings in (config.get(kind) or {}).items():
            type_ = component.split("/")[0]
            assert type_ in CONTRIB["types"][kind], f"{kind}.{type_}: not a known contrib component"
            assert CONTRIB["types"][kind][type_] in CONTRIB["modules"][kind]
            assert component in used, f"{kind}.{component} is defined but no pipeline uses it"
            documented = CONTRIB["documented_keys"].get(kind, {}).get(type_)
            if documented:
                assert set(settings) <= set(documented), f"{component}: {set(settings) - set(documented)}"
            authenticator = (settings or {}).get("auth", {}).get("authenticator")
            if authenticator:
                assert authenticator in config["service"]["extensions"]


def test_otelcol_routes_traces_by_trace_id_to_every_receiver():
    config = yaml.safe_load((DEPLOY / "otelcol.yaml").read_text())
    balancer = config["exporters"]["loadbalancing"]
    assert balancer["routing_key"] == "traceID" and "traceID" in CONTRIB["documented_keys"]["routing_keys"]
    assert set(balancer["resolver"]) <= set(CONTRIB["documented_keys"]["resolvers"])
    template = balancer["protocol"]["otlp"]
    assert "endpoint" not in template and set(template) <= set(CONTRIB["documented_keys"]["exporters"]["otlp"])
    assert balancer["resolver"]["dns"]["hostname"] == "${env:AGENTWATCH_RECEIVERS}"
    assert COMPOSE["services"]["otelcol"]["environment"]["AGENTWATCH_RECEIVERS"] == "receivers"
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["include_metadata"]  # API keys reach the receivers


# --- ClickHouse cluster configuration ----------------------------------------------------------------------

def test_cluster_config_examples_name_the_settings_the_schema_relies_on():
    config = ElementTree.parse(DEPLOY / "clickhouse" / "cluster-config.xml").getroot()
    shards = config.findall("remote_servers/agentwatch/shard")
    assert shards and all(s.findtext("internal_replication") == "true" for s in shards)
    assert {m.tag for m in config.find("macros")} == {"shard", "replica"}
    profile = ElementTree.parse(DEPLOY / "clickhouse" / "cluster-users.xml").getroot().find("profiles/agentwatch")
    assert profile.findtext("distributed_foreground_insert") == "1"
    backups = ElementTree.parse(DEPLOY / "clickhouse" / "backups.xml").getroot()
    assert backups.findtext("backups/allowed_disk") == "backups"
    assert "./clickhouse/backups.xml:/etc/clickhouse-server/config.d/backups.xml:ro" in \
        COMPOSE["services"]["clickhouse"]["volumes"]

"""The deployment files (deploy/, docs/deploy.md) are valid and say what docs/deploy.md
promises: the Kubernetes manifests pass their JSON schemas (kubernetes-validate bundles
them, so this runs offline) and carry the probes, limits, security context and selectors
an operator relies on; the config they ship parses with the gateway's own loader; the
Dockerfile and the systemd unit have their key directives. Fast: nothing is built or
started (no docker engine, no cluster)."""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import shlex
import textwrap
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as k8s_schemas  # type: ignore[import-untyped]

from gateway.errors import ConfigError
from gateway.providers import build_provider
from gateway.settings import Settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT = DEPLOY / "systemd" / "sendergate.service"
UNIT_ENV = DEPLOY / "systemd" / "sendergate.env.example"
DOCS = ROOT / "docs" / "deploy.md"

CONFIG_DIR = "/etc/sendergate"
CONFIG_FILE = f"{CONFIG_DIR}/config.toml"
PORT = 8080
HOST = "0.0.0.0"  # noqa: S104 - a container listens on all its interfaces
DRAIN_S = 5.0  # Pipeline.drain's bound in the lifespan shutdown

# Working stand-ins for the Secret's values (the example Secret holds placeholders).
TEST_SECRETS = {
    "SENDERGATE_REDIS_URL": "redis://:s3cret@redis-master.redis.svc:6379/0",
    "SENDERGATE_SIGNING_SECRET": "whsec_" + base64.b64encode(b"k" * 32).decode(),
    "TWILIO_AUTH_TOKEN": "0123456789abcdef0123456789abcdef",
    "MAILGUN_SIGNING_KEY": "key-0123456789abcdef0123456789abcdef",
}

Obj = dict[str, Any]


# ---------------------------------------------------------------- helpers


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _objects() -> list[Obj]:
    return [doc for path in _manifest_files() for doc in _documents(path)]


def _one(kind: str) -> Obj:
    found = [obj for obj in _objects() if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def _pod_spec() -> Obj:
    spec: Obj = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _container() -> Obj:
    containers: list[Obj] = _pod_spec()["containers"]
    assert len(containers) == 1
    return containers[0]


def _pod_labels() -> dict[str, str]:
    labels: dict[str, str] = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity (250m, 1, 512Mi, 1G) as a plain number."""
    text = str(value)
    suffixes = {
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
    }
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * suffixes[suffix]
    return float(text)


def _config_text() -> str:
    text: str = _one("ConfigMap")["data"]["config.toml"]
    return text


def _env_refs(value: object) -> Iterator[str]:
    """Every NAME of an ``env:NAME`` string anywhere in parsed TOML."""
    if isinstance(value, str) and value.startswith("env:"):
        yield value.removeprefix("env:")
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _env_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _env_refs(item)


def _build_sources(settings: Settings) -> None:
    """What ``sendergate config check`` does after the settings: build each provider."""

    def no_fetch(url: str) -> bytes:
        raise AssertionError(f"nothing is fetched while checking a config: {url}")

    for source in settings.sources.values():
        build_provider(source, cert_loader=no_fetch)


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    pairs = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        pairs.append((instruction.upper(), args.strip()))
    return pairs


def _instructions(name: str) -> list[str]:
    return [args for instruction, args in _dockerfile() if instruction == name]


def _final_stage() -> list[tuple[str, str]]:
    pairs = _dockerfile()
    last_from = max(i for i, (instruction, _) in enumerate(pairs) if instruction == "FROM")
    return pairs[last_from:]


def _dockerignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out (.dockerignore: last match wins, a
    pattern matching a parent directory matches what is inside it)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


def _unit() -> dict[str, list[tuple[str, str]]]:
    """The unit file as section → (key, value) pairs; systemd keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            sections.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line in the unit: {line!r}"
        sections[section].append((key.strip(), value.strip()))
    return sections


def _unit_value(section: str, key: str) -> str:
    values = [v for k, v in _unit()[section] if k == key]
    assert values, f"[{section}] {key}= is missing from the unit"
    return values[-1]


# ---------------------------------------------------------------- Kubernetes


def test_every_manifest_parses_into_named_objects_of_the_expected_kinds() -> None:
    """Every deploy/k8s/*.yaml parses as YAML into objects with apiVersion, kind and a name,
    and together they hold one of each kind the deployment needs."""
    kinds = []
    for obj in _objects():
        assert isinstance(obj, dict)
        assert obj.get("apiVersion") and obj.get("kind")
        assert obj["metadata"]["name"]
        kinds.append(obj["kind"])
    assert sorted(kinds) == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Secret",
            "Service",
        ]
    )


@pytest.mark.parametrize(
    "k8s_version",
    [k8s_schemas.all_versions()[0], k8s_schemas.latest_version()],
    ids=lambda version: f"k8s-{version}",
)
def test_manifests_validate_against_the_kubernetes_schemas(k8s_version: str) -> None:
    """Every object validates, in strict mode (unknown fields are errors, so a misspelt
    probe is caught), against the schemas of the oldest and newest Kubernetes release
    that kubernetes-validate bundles."""
    for obj in _objects():
        try:
            k8s_schemas.validate(obj, k8s_version, strict=True)
        except k8s_schemas.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")


def test_kustomization_applies_everything_but_the_example_secret() -> None:
    """kustomization.yaml lists every manifest except secret.example.yaml, so that
    `kubectl apply -k` never overwrites the real Secret with placeholders."""
    kustomization = _documents(K8S / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    names = {path.name for path in _manifest_files()}
    assert "secret.example.yaml" in names
    assert sorted(kustomization["resources"]) == sorted(names - {"secret.example.yaml"})


def test_deployment_probes_liveness_healthz_readiness_readyz_and_startup() -> None:
    """Liveness and the startup probe GET /healthz (touches nothing), readiness GET /readyz
    (503 when a dependency fails), all on the container's port."""
    container = _container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": PORT}
    expected = {
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe_name, path in expected.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert probe["port"] in ("http", PORT), probe_name
    # The startup probe gives start-up (config, store, snapshot) time before liveness.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_deployment_has_resource_requests_and_limits() -> None:
    """The container requests and limits both CPU and memory, requests not above limits."""
    resources = _container()["resources"]
    for resource in ("cpu", "memory"):
        request = _quantity(resources["requests"][resource])
        limit = _quantity(resources["limits"][resource])
        assert 0 < request <= limit, resource


def test_deployment_runs_non_root_with_a_read_only_root_filesystem() -> None:
    """Pod and container run as non-root (the image's numeric uid), without privilege
    escalation or capabilities, on a read-only root filesystem with /tmp an emptyDir."""
    pod = _pod_spec()["securityContext"]
    container = _container()
    sc = container["securityContext"]
    assert pod["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0
    image_uid = _instructions("USER")[-1].split(":")[0]
    assert str(pod["runAsUser"]) == image_uid
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_deployment_mounts_the_configmap_and_serves_it_on_the_container_port() -> None:
    """The command serves /etc/sendergate/config.toml on 0.0.0.0 and the container port, and
    that file is the ConfigMap's config.toml, mounted read-only; two replicas by default."""
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    command = _container()["command"]
    assert command[:2] == ["sendergate", "serve"]
    options = dict(zip(command[2::2], command[3::2], strict=True))
    assert options == {"--config": CONFIG_FILE, "--host": HOST, "--port": str(PORT)}
    mount = next(m for m in _container()["volumeMounts"] if m["mountPath"] == CONFIG_DIR)
    assert mount["readOnly"] is True
    volume = next(v for v in _pod_spec()["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    assert {item["key"]: item["path"] for item in volume["configMap"]["items"]} == {
        "config.toml": "config.toml"
    }


def test_deployment_drains_before_sigterm_within_the_grace_period() -> None:
    """A preStop sleep lets endpoint removal propagate before SIGTERM, and the grace period
    covers that sleep, the longest forward timeout and the lifespan drain."""
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_s = float(pre_stop[1])
    assert sleep_s >= 5
    settings = parse_settings(tomllib.loads(_config_text()), TEST_SECRETS)
    longest_forward = max(
        [settings.forward.timeout_s]
        + [s.timeout_s for s in settings.sources.values() if s.timeout_s is not None]
    )
    grace = _pod_spec()["terminationGracePeriodSeconds"]
    assert grace > sleep_s + longest_forward + DRAIN_S


def test_service_pdb_and_hpa_select_the_deployment() -> None:
    """The Service and the PodDisruptionBudget select the Deployment's pods (and the
    Deployment its own template), the Service targets the container port, the PDB keeps
    one pod available, and the autoscaling/v2 HPA scales that Deployment on CPU with a
    minimum above the PDB's, so that a node drain can always proceed."""
    deployment = _one("Deployment")
    labels = _pod_labels()
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)

    service = _one("Service")
    assert _selects(service["spec"]["selector"], labels)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]

    pdb = _one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["minAvailable"] == 1

    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]


def test_configmap_config_is_valid_for_the_gateway_with_redis() -> None:
    """The ConfigMap's config.toml passes the gateway's own checks (settings, then each
    source's provider, as `sendergate config check` does) once its env:NAME secrets are
    set, and its store is Redis: replicas cannot share the SQLite file."""
    settings = parse_settings(tomllib.loads(_config_text()), TEST_SECRETS, config_path=CONFIG_FILE)
    _build_sources(settings)
    assert settings.store.url == TEST_SECRETS["SENDERGATE_REDIS_URL"]
    assert settings.store.url.startswith(("redis://", "rediss://"))
    assert settings.server.port == PORT
    assert settings.server.public_url is not None
    assert settings.server.public_url.startswith("https://")
    assert settings.forward.signing_secret == TEST_SECRETS["SENDERGATE_SIGNING_SECRET"]
    assert settings.sources, "the Kubernetes config declares at least one source"


def test_every_env_secret_of_the_config_comes_from_the_secret() -> None:
    """Each env:NAME of the ConfigMap's config is a container env var taken from the
    Secret by the same key, and the example Secret has exactly those keys."""
    refs = set(_env_refs(tomllib.loads(_config_text())))
    assert refs == set(TEST_SECRETS)
    secret = _one("Secret")
    from_secret = {
        env["name"]: env["valueFrom"]["secretKeyRef"]
        for env in _container()["env"]
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert set(from_secret) == refs
    for name, ref in from_secret.items():
        assert ref == {"name": secret["metadata"]["name"], "key": name}
    assert set(secret["stringData"]) == refs


def test_example_secret_placeholders_stop_start_up() -> None:
    """The example Secret is marked as such and its placeholder values fail the config
    check: a pod started with them exits with a config error instead of running."""
    secret = _one("Secret")
    assert "EXAMPLE ONLY" in (K8S / "secret.example.yaml").read_text()
    values: dict[str, str] = secret["stringData"]
    assert all(value.startswith("REPLACE_ME") for value in values.values())
    with pytest.raises(ConfigError):
        settings = parse_settings(tomllib.loads(_config_text()), values)
        _build_sources(settings)


# ---------------------------------------------------------------- container image


def test_dockerfile_builds_a_slim_non_root_image_with_healthcheck_and_port() -> None:
    """The image is python:3.11-slim based and multi-stage, installs the package without
    test extras, runs as a numeric non-root user from /data, exposes 8080, checks
    /healthz with python, and serves /etc/sendergate/config.toml on 0.0.0.0:8080."""
    froms = _instructions("FROM")
    assert len(froms) >= 2, "multi-stage build"
    assert "python:3.11-slim" in DOCKERFILE.read_text()
    installs = [run for run in _instructions("RUN") if "pip install" in run]
    assert installs and all("[test]" not in run for run in installs)
    assert any(re.search(r"pip install \.(\s|$)", run) for run in installs)

    final = _final_stage()
    users = [args for instruction, args in final if instruction == "USER"]
    assert users, "the final stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid (runAsNonRoot checks it)"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert ("WORKDIR", "/data") in final
    assert ("EXPOSE", str(PORT)) in final

    (healthcheck,) = [args for instruction, args in final if instruction == "HEALTHCHECK"]
    assert "CMD" in healthcheck
    exec_form = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert exec_form[:2] == ["python", "-c"]
    assert f"127.0.0.1:{PORT}/healthz" in exec_form[2]
    compile(exec_form[2], "HEALTHCHECK", "exec")  # the one-liner is valid Python

    (cmd,) = [args for instruction, args in final if instruction == "CMD"]
    assert json.loads(cmd) == shlex.split(
        f"sendergate serve --config {CONFIG_FILE} --host {HOST} --port {PORT}"
    )


def test_dockerignore_sends_what_the_build_copies_and_nothing_private() -> None:
    """Every file the Dockerfile copies from the context is in it (root .dockerignore, the
    build context being the repository root); the venv, data, configs, tests and .git
    are not."""
    sources = []
    for args in _instructions("COPY"):
        if args.startswith("--from"):
            continue
        sources.extend(shlex.split(args)[:-1])
    assert sources
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if p.is_file()]
        assert files, source
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                assert not _dockerignored(rel), rel
    for private in (
        ".venv/bin/python",
        "data/sendergate.db",
        "config.toml",
        "tests/test_deploy.py",
        ".git/config",
        "gateway/__pycache__/app.cpython-311.pyc",
    ):
        assert _dockerignored(private), private


# ---------------------------------------------------------------- systemd


def test_systemd_unit_runs_hardened_as_sendergate_with_a_graceful_stop() -> None:
    """The unit runs `sendergate serve` from /opt/sendergate/.venv as User=sendergate with
    its secrets from an EnvironmentFile, restarts on failure (not on a config error),
    stops with SIGTERM and a timeout, and is sandboxed with only its data dir writable."""
    service = dict(_unit()["Service"])
    assert _unit_value("Service", "User") == "sendergate"
    assert service["WorkingDirectory"] == "/var/lib/sendergate"
    assert service["EnvironmentFile"].lstrip("-") == "/etc/sendergate/sendergate.env"
    assert not service["EnvironmentFile"].startswith("-"), "a missing secrets file must fail"
    assert shlex.split(service["ExecStart"]) == [
        "/opt/sendergate/.venv/bin/sendergate",
        "serve",
        "--config",
        CONFIG_FILE,
    ]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > DRAIN_S
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert "/var/lib/sendergate" in service["ReadWritePaths"].split()
    for flag in ("PrivateTmp", "ProtectHome", "PrivateDevices", "RestrictSUIDSGID"):
        assert service[flag] == "yes", flag
    assert service["CapabilityBoundingSet"] == ""
    assert _unit_value("Install", "WantedBy") == "multi-user.target"


def test_systemd_env_example_is_plain_assignments_with_placeholders() -> None:
    """The example EnvironmentFile holds only NAME=value lines (systemd's syntax, no
    `export`), each value a placeholder to replace."""
    lines = [
        line.strip()
        for line in UNIT_ENV.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines
    for line in lines:
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), line
        assert value == "REPLACE_ME", line


# ---------------------------------------------------------------- docs


def test_deploy_docs_name_only_deploy_files_that_exist() -> None:
    """Every deploy/… path docs/deploy.md mentions exists (a renamed file breaks the doc);
    the compose file is left out: it is written and tested with the Redis work."""
    text = DOCS.read_text()
    paths = set(re.findall(r"deploy/[\w./-]*\w", text)) - {"deploy/docker-compose.yml"}
    assert paths
    for path in sorted(paths):
        assert (ROOT / path).exists(), path


def test_kubernetes_examples_in_the_docs_validate_and_route_to_the_service() -> None:
    """The Kubernetes objects shown in docs/deploy.md (the Ingress) validate against the
    schemas like the manifests, and the Ingress routes to the Service's named port."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    objects = [
        doc
        for block in blocks
        for doc in yaml.safe_load_all(textwrap.dedent(block))
        if isinstance(doc, dict)
        and "kind" in doc
        and not str(doc.get("apiVersion", "")).startswith("kustomize.config.k8s.io/")
    ]
    assert [obj["kind"] for obj in objects] == ["Ingress"]
    for obj in objects:
        k8s_schemas.validate(obj, k8s_schemas.latest_version(), strict=True)
    service = _one("Service")
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for rule in objects[0]["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in port_names

"""The deployment artefacts run real hms-bus commands with settings hms-bus reads.

Every service of ``docker-compose.yml`` and every container of ``infra/k8s`` that runs
the hms-bus image runs either an ``hms-bus`` subcommand or the reference HMS-SVC and
HMS-ACH (``python -m step_handlers.reference_services``). Every hms-bus subcommand's
options parse (checked with ``--help`` and the real parser), and each runs the one
reference app ``step_handlers.hms:mgmt``; role commands pass ``--dry-run`` in a
subprocess with the environment the file gives them, so a bad value or an unknown step
fails here. Every environment variable they set is one hms-bus reads, derived from
``hms_bus.Settings``, the CLI's ``HMS_LOG_LEVEL`` and
``hms_bus._telemetry.OTEL_ENVIRONMENT``, or one the reference app reads itself, found
in the source of ``step_handlers/services.py``; none is listed by hand. Every hms-bus
container has the same ``HMS_PII__KEYS``, valid Fernet keys, or sensitive fields sealed
in one process cannot be opened in another. The rest checks that the pieces agree:
worker step groups cover the app's steps once, KEDA scales each worker Deployment on
exactly its own topics, grace periods outlast the drain, PDBs and probes point at what
exists, compose starts roles after the migration and payment workers after the
reference services, ``HMS_SVC_URL``/``HMS_ACH_URL`` reach those, and both collector
configs define the pipelines they use.
"""

from __future__ import annotations

import argparse
import ast
import base64
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

import hms_bus
from hms_bus._pii import Sealer
from hms_bus._settings import ALL_ROLES, build_settings
from hms_bus._telemetry import OTEL_ENVIRONMENT
from hms_bus._topics import Topics
from hms_bus.cli import _parser, load_app, main
from step_handlers import reference_services
from step_handlers.management_layer import WORKFLOW as PAYMENT_WORKFLOW

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
COLLECTOR = ROOT / "infra" / "otel-collector.yaml"
K8S = ROOT / "infra" / "k8s"
# The reference app's own environment variables are read here (HMS-SVC and HMS-ACH).
APP_ENV_SOURCE = ROOT / "step_handlers" / "services.py"

# The app every hms-bus command of the deployments runs: both workflows on one
# Management, so one coordinator, projector, scheduler and monitor serve both.
APP = "step_handlers.hms:mgmt"
# What the image runs: hms-bus (its entrypoint), or the reference HMS-SVC and HMS-ACH.
HMS_BUS = ("hms-bus",)
REFERENCE_SERVICES = ("python", "-m", "step_handlers.reference_services")
PROGRAMS = (HMS_BUS, REFERENCE_SERVICES)
# The URLs of the services the payment steps call (read by step_handlers/services.py).
SERVICE_URLS = ("HMS_SVC_URL", "HMS_ACH_URL")

K8S_IMAGE = "hms-bus"  # the image name the manifests use; kustomization.yaml maps it
ROLE_COMMANDS = frozenset({*ALL_ROLES, "run"})
WORKER_COMMANDS = frozenset({"worker", "run"})
COLLECTOR_IMAGE = "otel/opentelemetry-collector-contrib"

# Read by the Python interpreter in the image, not by hms-bus; allowed on any container.
INTERPRETER_ENV = frozenset({"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONFAULTHANDLER"})
# Settings hms-bus reads, but that never take effect under the hms-bus command.
OVERRIDDEN_ENV = {
    "HMS_SERVICE_NAME": "init(service_name=...) in the app always wins over it",
    "HMS_ROLES": "every hms-bus command sets the roles it runs",
}
# In Kubernetes these come from a Secret, never a ConfigMap or a literal value.
SECRET_ENV = frozenset({"HMS_PII__KEYS", "HMS_STORE_URL", "HMS_TRANSPORT__SASL_PASSWORD"})
# Kubernetes and Docker defaults when a manifest says nothing.
K8S_TERMINATION_GRACE = 30.0
COMPOSE_STOP_GRACE = "10s"


# -- loading --------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """A compose service or Kubernetes container that runs the hms-bus image.

    Attributes:
        id: ``compose:<service>`` or ``k8s:<Kind>/<name>/<container>``.
        workload: the compose service, or the Deployment/Job it belongs to.
        spec: the compose service, or the container itself.
        args: what follows the program (the ``hms-bus`` entrypoint).
        env: every variable set on it (compose anchors merged; k8s ``envFrom``
            ConfigMaps and Secrets, then ``env``).
        problems: references that did not resolve (a missing ConfigMap, an entrypoint
            other than hms-bus or the reference services).
        program: what it runs, one of ``PROGRAMS`` (hms-bus when it is none of them,
            with a problem saying so).
    """

    id: str
    workload: Mapping[str, Any]
    spec: Mapping[str, Any]
    args: tuple[str, ...]
    env: Mapping[str, str]
    problems: tuple[str, ...] = field(default=())
    program: tuple[str, ...] = HMS_BUS

    @property
    def source(self) -> str:
        return self.id.split(":", 1)[0]

    @property
    def command(self) -> str | None:
        return self.args[0] if self.args else None

    @property
    def is_role(self) -> bool:
        return self.command in ROLE_COMMANDS

    @property
    def is_worker(self) -> bool:
        return self.command in WORKER_COMMANDS


@functools.cache
def compose_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose_file()["services"]
    return services


@functools.cache
def k8s_documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every YAML document of infra/k8s, with its file name."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return tuple(docs)


def k8s(kind: str) -> dict[str, dict[str, Any]]:
    """The infra/k8s objects of one kind, by name."""
    return {d["metadata"]["name"]: d for _, d in k8s_documents() if d.get("kind") == kind}


def _env_value(value: Any) -> str:
    if isinstance(value, bool):  # YAML true/false, as compose passes them on
        return str(value).lower()
    return str(value)


def compose_image() -> str:
    """The one image name shared by the services built from the Dockerfile."""
    built = {s.get("image") for s in compose_services().values() if "build" in s}
    assert len(built) == 1 and None not in built, (
        f"services built from . must share one image: {built}"
    )
    return str(built.pop())


def _compose_containers() -> list[Container]:
    image = compose_image()
    found = []
    for name, svc in compose_services().items():
        if "build" not in svc and svc.get("image") != image:
            continue
        problems = []
        entrypoint = svc.get("entrypoint")
        program = HMS_BUS
        if entrypoint is not None:
            given = entrypoint if isinstance(entrypoint, list) else shlex.split(entrypoint)
            program = tuple(str(a) for a in given)
        if program not in PROGRAMS:
            problems.append(f"entrypoint {entrypoint!r} is not hms-bus or the reference services")
            program = HMS_BUS
        if "env_file" in svc:
            problems.append("env_file hides the environment from this test; use environment:")
        command = svc.get("command", [])
        args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        raw = svc.get("environment") or {}
        if isinstance(raw, list):
            raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
        env = {}
        for key, value in raw.items():
            if value is None:
                problems.append(f"{key} takes its value from the host; give one")
            else:
                env[key] = _env_value(value)
        cid = f"compose:{name}"
        found.append(Container(cid, svc, svc, tuple(args), env, tuple(problems), program))
    return found


def _image_name(ref: str) -> str:
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref.rsplit(":", 1)[0] if ":" in last else ref


def _k8s_env(container: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    configmaps, secrets = k8s("ConfigMap"), k8s("Secret")
    env: dict[str, str] = {}
    problems: list[str] = []

    def secret_data(name: str) -> dict[str, str] | None:
        s = secrets.get(name)
        if s is None:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
        return {**data, **{k: _env_value(v) for k, v in (s.get("stringData") or {}).items()}}

    def configmap_data(name: str) -> dict[str, str] | None:
        cm = configmaps.get(name)
        return None if cm is None else {k: _env_value(v) for k, v in cm["data"].items()}

    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            data = configmap_data(name)
        else:
            name = source["secretRef"]["name"]
            data = secret_data(name)
        if data is None:
            problems.append(f"envFrom names {name!r}, which infra/k8s does not define")
            continue
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for item in container.get("env") or []:
        value_from = item.get("valueFrom") or {}
        ref = value_from.get("configMapKeyRef") or value_from.get("secretKeyRef")
        if "value" in item:
            env[item["name"]] = _env_value(item["value"])
        elif ref is not None:
            is_cm = "configMapKeyRef" in value_from
            data = configmap_data(ref["name"]) if is_cm else secret_data(ref["name"])
            if data is None or ref["key"] not in data:
                problems.append(f"{item['name']}: {ref['name']}/{ref['key']} is not defined")
            else:
                env[item["name"]] = data[ref["key"]]
        else:
            problems.append(f"{item['name']}: only value and ConfigMap/Secret keys are checked")
    return env, problems


def _k8s_containers() -> list[Container]:
    found = []
    for kind in ("Deployment", "Job", "StatefulSet", "DaemonSet", "CronJob"):
        for name, doc in k8s(kind).items():
            template = doc["spec"]["template"]
            if kind == "CronJob":
                template = doc["spec"]["jobTemplate"]["spec"]["template"]
            pod = template["spec"]
            for c in [*(pod.get("initContainers") or []), *pod["containers"]]:
                if _image_name(c["image"]) != K8S_IMAGE:
                    continue
                env, problems = _k8s_env(c)
                command = tuple(str(a) for a in c.get("command") or HMS_BUS)
                program = next((p for p in PROGRAMS if command[: len(p)] == p), None)
                if program is None:
                    problems.append(f"command {list(command)!r} is not hms-bus or the reference")
                    program = HMS_BUS
                args = (*command[len(program) :], *(str(a) for a in c.get("args") or []))
                cid = f"k8s:{kind}/{name}/{c['name']}"
                found.append(Container(cid, doc, c, args, env, tuple(problems), program))
    return found


@functools.cache
def _image_containers() -> tuple[Container, ...]:
    return (*_compose_containers(), *_k8s_containers())


@functools.cache
def containers() -> dict[str, Container]:
    """The containers that run hms-bus."""
    return {c.id: c for c in _image_containers() if c.program == HMS_BUS}


@functools.cache
def reference_containers() -> dict[str, Container]:
    """The containers that run the reference HMS-SVC and HMS-ACH."""
    return {c.id: c for c in _image_containers() if c.program == REFERENCE_SERVICES}


def _ids(role_only: bool = False) -> list[str]:
    try:
        return [cid for cid, c in containers().items() if c.is_role or not role_only]
    except Exception as exc:  # a broken file: fail visibly, not with zero tests
        return [f"unloadable: {type(exc).__name__}: {exc}"]


def container(cid: str) -> Container:
    assert cid in containers(), cid
    return containers()[cid]


def parse(c: Container) -> argparse.Namespace:
    return _parser().parse_args(list(c.args))


# -- what hms-bus reads ---------------------------------------------------------------


def hms_environment() -> frozenset[str]:
    """Every variable hms-bus reads: its Settings fields, nested sections field by field."""
    config = hms_bus.Settings.model_config
    prefix, nested = str(config["env_prefix"]), str(config["env_nested_delimiter"])
    names = {"HMS_LOG_LEVEL"}  # read by the CLI
    for name, info in hms_bus.Settings.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names |= {f"{prefix}{name}{nested}{sub}".upper() for sub in section.model_fields}
        else:
            names.add(f"{prefix}{name}".upper())
    return frozenset(names | set(OTEL_ENVIRONMENT))


def _environ_read(node: ast.AST) -> ast.expr | None:
    """The name expression of ``os.environ.get(x)``, ``os.environ[x]`` or ``os.getenv(x)``."""

    def is_environ(e: ast.expr) -> bool:
        return (
            isinstance(e, ast.Attribute)
            and e.attr == "environ"
            and isinstance(e.value, ast.Name)
            and e.value.id == "os"
        )

    if isinstance(node, ast.Subscript) and is_environ(node.value):
        return node.slice
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        f = node.func
        if f.attr == "get" and is_environ(f.value):
            return node.args[0]
        if f.attr == "getenv" and isinstance(f.value, ast.Name) and f.value.id == "os":
            return node.args[0]
    return None


@functools.cache
def app_environment() -> frozenset[str]:
    """Every variable the reference app reads itself, from the source of APP_ENV_SOURCE.

    Names given as literals to ``os.environ.get`` / ``os.environ[]`` / ``os.getenv``,
    and literals passed to a module function that hands its parameter to one of those
    (``_env_timeout("HMS_SVC_TIMEOUT")``). A read of any other form is an error here,
    so that a new variable cannot go unnoticed.
    """
    tree = ast.parse(APP_ENV_SOURCE.read_text())
    names: set[str] = set()
    relays: dict[str, int] = {}  # function name -> position of the parameter it reads
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
        for node in ast.walk(fn):
            arg = _environ_read(node)
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
            elif isinstance(arg, ast.Name) and arg.id in params:
                relays[fn.name] = params.index(arg.id)
            elif arg is not None:
                raise AssertionError(f"{APP_ENV_SOURCE}:{node.lineno}: unrecognised read")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            at = relays.get(node.func.id)
            if at is None:
                continue
            arg = node.args[at] if len(node.args) > at else None
            assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), (
                f"{APP_ENV_SOURCE}:{node.lineno}: {node.func.id}() with a name not a literal"
            )
            names.add(arg.value)
    return frozenset(names)


def _child_environ(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without hms-bus's own variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMS_", "OTEL_"))}
    return {**base, **env}


@contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    with mock.patch.dict(os.environ, _child_environ(env), clear=True):
        yield


@dataclass(frozen=True)
class Resolved:
    """What a role container runs with, resolved as ``hms-bus`` resolves it."""

    namespace: str
    steps: tuple[str, ...] | None  # None: every step with a handler
    http_port: int | None
    shutdown_grace: float
    partitions: int
    bus_url: str


def resolve(c: Container) -> Resolved:
    """Settings from the container's environment, then the options the CLI applies."""
    with environ(c.env):
        s = build_settings()
    ns = parse(c)
    steps = s.worker.steps
    if getattr(ns, "steps", None):
        steps = tuple(x.strip() for x in ns.steps.split(",") if x.strip())
    port = ns.http_port if getattr(ns, "http_port", None) is not None else s.telemetry.http_port
    return Resolved(
        namespace=ns.namespace or s.namespace,
        steps=steps,
        http_port=port,
        shutdown_grace=s.worker.shutdown_grace,
        partitions=s.transport.partitions,
        bus_url=ns.bus or s.bus_url,
    )


def app_of(c: Container) -> hms_bus.Management:
    return load_app(parse(c).app)


def steps_with_handlers(app: hms_bus.Management) -> set[str]:
    return {s.qualname for wf in app.workflows.values() for s in wf.steps.values() if s.handler}


def served_steps(c: Container) -> set[str]:
    steps = resolve(c).steps
    return set(steps) if steps is not None else steps_with_handlers(app_of(c))


def bus_hosts(url: str) -> set[str]:
    """``host:port`` of each broker in a ``kafka://[user:pass@]h1:9092,h2:9092`` URL."""
    rest = url.split("://", 1)[1].rpartition("@")[2].split("/", 1)[0].split("?", 1)[0]
    return {h.strip() for h in rest.split(",") if h.strip()}


def seconds(duration: str) -> float:
    """A compose duration (``1m30s``, ``45s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# -- the image ------------------------------------------------------------------------


def test_dockerfile_installs_hms_bus_with_otlp_and_runs_it_as_non_root() -> None:
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    final = lines[max(i for i, ln in enumerate(lines) if ln.startswith("FROM ")) :]
    assert final[0].split()[1].startswith("python:3.11-slim"), final[0]
    entrypoints = [ln for ln in final if ln.startswith("ENTRYPOINT ")]
    assert entrypoints and json.loads(entrypoints[-1].split(" ", 1)[1]) == ["hms-bus"]
    users = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    installs = [m for ln in lines for m in re.findall(r'pip install "\.\[([^\]]*)\]"', ln)]
    assert len(installs) == 1, f"one pip install of the project with its extras: {installs}"
    installed = {e.strip() for e in installs[0].split(",")}
    assert installed <= set(extras), f"extras pyproject.toml does not define: {installed}"
    assert "otlp" in installed, "the image needs the otlp extra (OTLP export)"
    if reference_containers():
        assert "services" in installed, "the reference services need the services extra"
    ignored = {ln.strip().rstrip("/") for ln in DOCKERIGNORE.read_text().splitlines()}
    for ln in lines:
        if ln.startswith("COPY ") and "--from=" not in ln:
            sources = ln.split()[1:-1]
            assert not ignored & set(sources), f"{ln}: .dockerignore leaves it out"
            assert all((ROOT / s).exists() for s in sources), ln


# -- every hms-bus command -------------------------------------------------------------


def test_every_role_and_the_migration_are_deployed() -> None:
    for source in ("compose", "k8s"):
        commands = {c.command for c in containers().values() if c.source == source}
        missing = ({*ALL_ROLES, "migrate"}) - commands
        assert not missing, f"{source}: nothing runs {sorted(missing)}"


@pytest.mark.parametrize("cid", _ids())
def test_command_parses(cid: str, capsys: pytest.CaptureFixture[str]) -> None:
    c = container(cid)
    assert not c.problems, c.problems
    assert c.args, f"{cid}: no hms-bus subcommand"
    with pytest.raises(SystemExit) as exc:
        main([*c.args, "--help"])
    assert exc.value.code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"usage: hms-bus {c.command}")
    ns = parse(c)  # options --help would skip over, e.g. an unknown one, fail here
    if getattr(ns, "app", None):
        load_app(ns.app)


def _dry_run(c: Container) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hms_bus", *c.args, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=_child_environ(c.env),
    )


@pytest.fixture(scope="module")
def dry_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    roles = [c for c in containers().values() if c.is_role]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip([c.id for c in roles], pool.map(_dry_run, roles), strict=True))


@pytest.mark.parametrize("cid", _ids(role_only=True))
def test_role_command_passes_dry_run_with_its_environment(
    cid: str, dry_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    proc = dry_runs[cid]
    assert proc.returncode == 0, f"{cid}: {' '.join(container(cid).args)}\n{proc.stderr}"
    assert "configuration is valid" in proc.stdout, proc.stdout


@pytest.mark.parametrize("cid", _ids())
def test_environment_is_read_by_hms_bus(cid: str) -> None:
    c = container(cid)
    unknown = set(c.env) - hms_environment() - app_environment() - INTERPRETER_ENV
    assert not unknown, f"{cid} sets variables neither hms-bus nor the app reads: {unknown}"
    for name, why in OVERRIDDEN_ENV.items():
        assert name not in c.env, f"{cid} sets {name}, which has no effect: {why}"
    with environ(c.env):
        build_settings()  # values too: every command, not only the dry-run ones


def test_the_apps_own_variables_are_found_in_its_source() -> None:
    found = app_environment()
    assert set(SERVICE_URLS) <= found, f"{APP_ENV_SOURCE} no longer reads {SERVICE_URLS}"
    assert not found & hms_environment(), "the app reads a name hms-bus reads too"


def _app_named(c: Container) -> str | None:
    return getattr(parse(c), "app", None)


def test_every_hms_command_runs_the_one_app() -> None:
    for c in containers().values():
        app = _app_named(c)
        if c.is_role or c.command in ("migrate", "topics"):
            assert app == APP, f"{c.id} runs {app!r}, not {APP}"
        elif app is not None:
            assert app == APP, f"{c.id} names {app!r}, not {APP}"


# -- sensitive fields -----------------------------------------------------------------


def pii_keys(c: Container) -> list[str]:
    with environ(c.env):
        return build_settings().pii.key_list()


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_every_hms_container_has_the_same_valid_pii_keys(source: str) -> None:
    ours = [c for c in containers().values() if c.source == source]
    assert ours
    missing = [c.id for c in ours if not c.env.get("HMS_PII__KEYS", "").strip()]
    assert not missing, (
        f"{missing} have no HMS_PII__KEYS: each would seal with a random key of its own, "
        "and a worker elsewhere could not open what it sealed"
    )
    by_value: dict[str, list[str]] = {}
    for c in ours:
        by_value.setdefault(c.env["HMS_PII__KEYS"], []).append(c.id)
    assert len(by_value) == 1, f"HMS_PII__KEYS differs: {sorted(by_value.values())}"
    keys = pii_keys(ours[0])
    for key in keys:
        Sealer({"x"}, [key])  # ConfigError unless a Fernet key
    # what one container seals, every other opens
    sealed = Sealer({"taxId"}, keys).seal({"taxId": "12-3456789"})
    for c in ours:
        assert Sealer({"taxId"}, pii_keys(c)).open(sealed) == {"taxId": "12-3456789"}, c.id


def test_every_pii_key_value_in_the_files_is_valid() -> None:
    values = [
        ("docker-compose.yml", str(v))
        for svc in compose_services().values()
        if isinstance(svc.get("environment"), dict)
        for k, v in svc["environment"].items()
        if k == "HMS_PII__KEYS"
    ]
    for name, cm in k8s("ConfigMap").items():
        if "HMS_PII__KEYS" in (cm.get("data") or {}):
            values.append((f"ConfigMap/{name}", str(cm["data"]["HMS_PII__KEYS"])))
    for name, secret in k8s("Secret").items():
        encoded = secret.get("data") or {}
        if "HMS_PII__KEYS" in encoded:
            values.append((f"Secret/{name}", base64.b64decode(encoded["HMS_PII__KEYS"]).decode()))
        if "HMS_PII__KEYS" in (secret.get("stringData") or {}):
            values.append((f"Secret/{name}", str(secret["stringData"]["HMS_PII__KEYS"])))
    assert values
    for where, value in values:
        keys = [k.strip() for k in value.split(",") if k.strip()]
        assert keys, f"{where}: HMS_PII__KEYS is empty"
        for key in keys:
            Sealer({"x"}, [key])  # ConfigError unless a Fernet key


def test_k8s_secrets_come_from_a_secret() -> None:
    for name, cm in k8s("ConfigMap").items():
        leaked = SECRET_ENV & set(cm.get("data") or {})
        assert not leaked, f"ConfigMap {name} holds {sorted(leaked)}: put them in a Secret"
    for c in containers().values():
        if c.source != "k8s":
            continue
        for item in c.spec.get("env") or []:
            if item["name"] in SECRET_ENV:
                assert "secretKeyRef" in (item.get("valueFrom") or {}), (c.id, item["name"])


# -- workers and scaling --------------------------------------------------------------


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_worker_groups_cover_every_step_exactly_once(source: str) -> None:
    workers = [c for c in containers().values() if c.source == source and c.is_worker]
    assert workers
    apps = {parse(c).app for c in workers}
    assert len(apps) == 1, apps
    every = steps_with_handlers(load_app(apps.pop()))
    seen: dict[str, str] = {}
    for c in workers:
        for step in served_steps(c):
            assert step in every, f"{c.id} serves {step!r}, which has no handler in the app"
            assert step not in seen, f"{step} is served by both {seen[step]} and {c.id}"
            seen[step] = c.id
    assert set(seen) == every, f"{source}: no worker serves {sorted(every - set(seen))}"


def _of_deployment(name: str) -> list[Container]:
    return [c for c in containers().values() if c.id.startswith(f"k8s:Deployment/{name}/")]


def test_keda_scales_each_worker_deployment_on_its_own_topics() -> None:
    scaled = k8s("ScaledObject")
    deployments = k8s("Deployment")
    targets: list[str] = []
    for name, so in scaled.items():
        ref = so["spec"]["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment", name
        assert ref["name"] in deployments, f"ScaledObject {name} targets a missing Deployment"
        targets.append(ref["name"])
        (c,) = _of_deployment(ref["name"])  # one hms-bus container per Deployment
        assert c.is_worker, f"ScaledObject {name} scales {ref['name']}, which runs no worker"
        r = resolve(c)
        topics = Topics(r.namespace)
        wanted = {topics.step(*q.split(".")) for q in served_steps(c)}
        triggers = so["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"kafka"}, name
        got = [t["metadata"]["topic"] for t in triggers]
        assert len(got) == len(set(got)) and set(got) == wanted, (name, got, sorted(wanted))
        for t in triggers:
            meta = t["metadata"]
            assert meta["consumerGroup"] == topics.group("worker"), (name, meta)
            servers = {h.strip() for h in meta["bootstrapServers"].split(",")}
            assert servers == bus_hosts(r.bus_url), (name, servers, r.bus_url)
            assert int(meta["lagThreshold"]) > 0
        spec = so["spec"]
        assert 0 <= spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"], name
        if not any(str(t["metadata"].get("allowIdleConsumers")) == "true" for t in triggers):
            assert spec["maxReplicaCount"] <= r.partitions, (
                f"{name}: replicas beyond a topic's {r.partitions} partitions sit idle"
            )
        assert "replicas" not in deployments[ref["name"]]["spec"], (
            f"{ref['name']}: KEDA owns the replica count; drop spec.replicas"
        )
    assert len(targets) == len(set(targets)), targets
    workers = {n for n in deployments if any(c.is_worker for c in _of_deployment(n))}
    assert workers == set(targets), f"worker Deployments without a ScaledObject: {workers}"


def test_termination_grace_outlasts_the_drain() -> None:
    for name, d in k8s("Deployment").items():
        for c in _of_deployment(name):
            grace = resolve(c).shutdown_grace
            pod = d["spec"]["template"]["spec"]
            period = float(pod.get("terminationGracePeriodSeconds", K8S_TERMINATION_GRACE))
            assert period > grace, (
                f"{name}: terminationGracePeriodSeconds {period:g} must exceed "
                f"HMS_WORKER__SHUTDOWN_GRACE {grace:g}, or Kubernetes kills it mid-drain"
            )
    for c in containers().values():
        if c.source == "compose" and c.is_role:
            stop = seconds(str(c.spec.get("stop_grace_period", COMPOSE_STOP_GRACE)))
            grace = resolve(c).shutdown_grace
            assert stop > grace, f"{c.id}: stop_grace_period {stop:g}s <= grace {grace:g}s"


def test_disruption_budgets_select_one_deployment() -> None:
    deployments = k8s("Deployment")
    for name, pdb in k8s("PodDisruptionBudget").items():
        spec = pdb["spec"]
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec), name
        selector = spec["selector"]
        assert set(selector) == {"matchLabels"}, f"{name}: only matchLabels is checked"
        wanted = selector["matchLabels"].items()
        matched = [
            d
            for d in deployments.values()
            if wanted <= d["spec"]["template"]["metadata"].get("labels", {}).items()
        ]
        assert len(matched) == 1, f"PDB {name} selects {len(matched)} Deployments"
        replicas = matched[0]["spec"].get("replicas")
        if isinstance(spec.get("minAvailable"), int) and replicas is not None:
            assert spec["minAvailable"] < replicas, f"PDB {name} would block every eviction"


# -- health, metrics, start order -----------------------------------------------------


def test_probes_and_scrape_annotations_use_the_http_port() -> None:
    for c in containers().values():
        if not c.is_role:
            continue
        port = resolve(c).http_port
        assert port, f"{c.id} serves no /healthz: give --http-port or HMS_TELEMETRY__HTTP_PORT"
        if c.source == "compose":
            test = " ".join(map(str, c.spec.get("healthcheck", {}).get("test", [])))
            assert f":{port}/healthz" in test, (c.id, test)
            continue
        ports = {p.get("name"): p["containerPort"] for p in c.spec.get("ports", [])}
        assert port in ports.values(), (c.id, ports)
        for probe in ("livenessProbe", "readinessProbe"):
            get = c.spec[probe]["httpGet"]
            assert get["path"] == "/healthz", (c.id, probe)
            assert ports.get(get["port"], get["port"]) == port, (c.id, probe, get)
        notes = c.workload["spec"]["template"]["metadata"].get("annotations", {})
        assert notes.get("prometheus.io/scrape") == "true", c.id
        assert notes.get("prometheus.io/port") == str(port), c.id
        assert notes.get("prometheus.io/path", "/metrics") == "/metrics", c.id


def _hosts(key: str, value: str) -> set[str]:
    """Host names in a URL setting (every broker of a bus URL)."""
    urls = [f"//{h}" for h in bus_hosts(value)] if key == "HMS_BUS_URL" else [value]
    return {urlsplit(u).hostname or "" for u in urls}


def test_compose_starts_roles_after_the_migration_on_healthy_services() -> None:
    services = compose_services()
    ours = [c for c in containers().values() if c.source == "compose"]
    (migrate,) = [c.id.split(":", 1)[1] for c in ours if c.command == "migrate"]
    for c in ours:
        deps = c.spec.get("depends_on") or {}
        assert isinstance(deps, dict), f"{c.id}: depends_on needs conditions"
        for dep, cond in deps.items():
            assert dep in services, f"{c.id} depends on a missing service {dep!r}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
            if cond.get("condition") == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} must be one-shot"
        # every URL names a service of this file, which must be healthy first
        needs = {"migrate": ["HMS_STORE_URL"], "topics": ["HMS_BUS_URL"]}.get(
            c.command or "", ["HMS_BUS_URL", "HMS_STORE_URL"]
        )
        if serves_payments(c):  # the payment steps call HMS-SVC and HMS-ACH
            needs = [*needs, *SERVICE_URLS]
        for key in ("HMS_BUS_URL", "HMS_STORE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", *SERVICE_URLS):
            for host in _hosts(key, c.env[key]) if key in c.env else ():
                assert host in services, f"{c.id}: {key} names {host!r}, not a service"
                if key in needs:
                    condition = deps.get(host, {}).get("condition")
                    assert condition == "service_healthy", f"{c.id} must wait for {host}"
        if c.command not in ("migrate", "topics"):
            condition = deps.get(migrate, {}).get("condition")
            assert condition == "service_completed_successfully", f"{c.id} must wait for {migrate}"


# -- HMS-SVC and HMS-ACH --------------------------------------------------------------


def serves_payments(c: Container) -> bool:
    """True for a worker that runs steps of the payment workflow (they call the services)."""
    return c.is_worker and any(q.split(".", 1)[0] == PAYMENT_WORKFLOW for q in served_steps(c))


def listens_on(c: Container) -> tuple[str, int]:
    """Where a reference services container serves: its arguments parsed by the module's
    own ``main``, with ``uvicorn.run`` replaced."""
    with mock.patch("uvicorn.run") as run, mock.patch("logging.basicConfig"):
        try:
            reference_services.main(list(c.args))
        except SystemExit as exc:
            pytest.fail(f"{c.id}: {' '.join(c.args)!r} does not parse ({exc})")
    return str(run.call_args.kwargs["host"]), int(run.call_args.kwargs["port"])


def _container_port(spec: Mapping[str, Any], port: int | str) -> int | None:
    """A k8s port reference (a number or a port name) as the container's port number."""
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in spec.get("ports", [])}
    return named.get(port)


def test_reference_services_run_once_listening_on_every_interface_with_health_checks() -> None:
    for source in ("compose", "k8s"):
        found = [c for c in reference_containers().values() if c.source == source]
        assert len(found) == 1, f"{source}: {len(found)} reference services, not one"
    for c in reference_containers().values():
        assert not c.problems, c.problems
        host, port = listens_on(c)
        assert host == "0.0.0.0", f"{c.id} listens on {host}, out of other containers' reach"
        assert not set(c.env) - INTERPRETER_ENV, f"{c.id} reads none of {sorted(c.env)}"
        if c.source == "compose":
            test = " ".join(map(str, c.spec.get("healthcheck", {}).get("test", [])))
            assert f":{port}/healthz" in test, (c.id, test)
            replicas = (c.spec.get("deploy") or {}).get("replicas", 1)
            assert replicas == 1, f"{c.id}: its state is in memory, so one replica"
            continue
        for probe in ("livenessProbe", "readinessProbe"):
            get = c.spec[probe]["httpGet"]
            assert get["path"] == "/healthz", (c.id, probe)
            assert _container_port(c.spec, get["port"]) == port, (c.id, probe, get)
        spec = c.workload["spec"]
        assert spec.get("replicas", 1) == 1, f"{c.id}: its state is in memory, so one replica"
        assert (spec.get("strategy") or {}).get("type") == "Recreate", c.id


def _reference_behind(source: str, url: str) -> Container | None:
    """The reference services container that ``url`` reaches from ``source``."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    host = (parts.hostname or "").split(".", 1)[0] if source == "k8s" else parts.hostname
    refs = [c for c in reference_containers().values() if c.source == source]
    if source == "compose":
        return next(
            (c for c in refs if c.id == f"compose:{host}" and listens_on(c)[1] == port), None
        )
    service = k8s("Service").get(host or "")
    if service is None:
        return None
    selector = service["spec"].get("selector") or {}
    for entry in service["spec"]["ports"]:
        if entry["port"] != port:
            continue
        target = entry.get("targetPort", entry["port"])
        for c in refs:
            labels = c.workload["spec"]["template"]["metadata"].get("labels", {})
            selected = bool(selector) and selector.items() <= labels.items()
            if selected and _container_port(c.spec, target) == listens_on(c)[1]:
                return c
    return None


def test_service_urls_reach_the_reference_services() -> None:
    payment_workers = [c for c in containers().values() if serves_payments(c)]
    assert {c.source for c in payment_workers} == {"compose", "k8s"}
    for c in payment_workers:
        missing = [k for k in SERVICE_URLS if not c.env.get(k)]
        assert not missing, f"{c.id} would run the payment steps on simulations: set {missing}"
    for c in containers().values():
        for key in SERVICE_URLS:
            if c.env.get(key):
                assert _reference_behind(c.source, c.env[key]), (
                    f"{c.id}: {key}={c.env[key]} reaches no reference service of its files"
                )


# -- the collector --------------------------------------------------------------------


def _check_collector(config: Mapping[str, Any], where: str) -> None:
    pipelines = config["service"]["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines), where
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind) or []:
                assert component in (config.get(kind) or {}), f"{where}: {name} uses {component}"
        assert pipeline["processors"][0] == "memory_limiter", f"{where}: {name}"


def test_collector_config_defines_the_pipelines_it_uses() -> None:
    config = yaml.safe_load(COLLECTOR.read_text())
    _check_collector(config, str(COLLECTOR))
    # compose mounts that file where the collector reads its config
    collectors = [s for s in compose_services().values() if COLLECTOR_IMAGE in s.get("image", "")]
    assert len(collectors) == 1
    svc = collectors[0]
    mounts = dict(v.split(":")[:2] for v in svc["volumes"])
    source = next(s for s, target in mounts.items() if (ROOT / s).resolve() == COLLECTOR)
    assert f"--config={mounts[source]}" in svc.get("command", []), svc.get("command")
    # the k8s collector runs the same pipelines from its ConfigMap
    deployment = next(
        d
        for d in k8s("Deployment").values()
        if any(COLLECTOR_IMAGE in c["image"] for c in d["spec"]["template"]["spec"]["containers"])
    )
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    (data,) = k8s("ConfigMap")[volume["configMap"]["name"]]["data"].values()
    in_k8s = yaml.safe_load(data)
    _check_collector(in_k8s, "infra/k8s collector ConfigMap")
    assert in_k8s["service"] == config["service"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(in_k8s[kind]) == set(config[kind]), kind
    # hms-bus exports to the collector's OTLP receiver
    grpc = urlsplit("//" + config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]).port
    services = {n: {p["port"] for p in s["spec"]["ports"]} for n, s in k8s("Service").items()}
    for c in containers().values():
        endpoint = c.env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if endpoint is None:
            continue
        url = urlsplit(endpoint)
        assert c.env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") == "grpc"
        assert url.port == grpc, (c.id, endpoint)
        if c.source == "k8s":
            assert grpc in services.get(url.hostname or "", set()), (c.id, endpoint)


def test_kustomization_lists_every_manifest_and_maps_the_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    assert K8S_IMAGE in {i["name"] for i in kustomization.get("images", [])}

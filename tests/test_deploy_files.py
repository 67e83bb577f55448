"""The deployment files agree with the code: variables, routes, ports, user, volumes, scripts.

Dockerfile, docker-compose.yml, .dockerignore and .env.example are read as data and checked
against `Settings`, the app's routes, pyproject's console scripts and each other, so a typo or
a renamed setting fails here instead of in someone's container.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from flux_proxy import settings as settings_module
from flux_proxy.settings import AccountConfig, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"

# Settings that are command-line choices (`serve --no-auth`, `serve --emulator`), deliberately
# not offered in .env.example; and `accounts`, which comes from the numbered variables.
NOT_IN_ENV_EXAMPLE = {"NO_AUTH", "EMULATOR", "ACCOUNTS"}
# Variables the image sets for Python and pip themselves, not for the proxy.
# glibc's malloc tunables are for the C library, not Python: they keep image-sized buffers in
# the heap instead of a fresh mmap per request (the Dockerfile says what that was measured to save).
RUNTIME_ENV = {
    "PATH",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
}
# Variables compose itself interpolates (from the shell or the project's .env).
COMPOSE_ONLY = {"FLUX_PROXY_PORTS"}

ASSIGNMENT = re.compile(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
DEFAULT_LINE = re.compile(r"^# ([A-Z][A-Z0-9_]*)=(.*)$")  # `# NAME=value`: the default


# --- reading the files ---------------------------------------------------------------------


def setting_names() -> set[str]:
    assert not Settings.model_config.get("env_prefix"), "env names are the upper-cased fields"
    return {name.upper() for name in Settings.model_fields}


def is_setting_variable(name: str) -> bool:
    numbered = settings_module._NUMBERED.match(name) is not None
    return numbered or (name in setting_names() and name not in NOT_IN_ENV_EXAMPLE)


def env_example_names() -> list[str]:
    """Every NAME=... in .env.example, whether set, commented out or shown as an example."""
    names = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ASSIGNMENT.match(line)
        if match:
            names.append(match.group(2))
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    pairs = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def instruction(keyword: str, stage: list[tuple[str, str]] | None = None) -> list[str]:
    return [rest for kw, rest in (stage or final_stage()) if kw == keyword]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for rest in instruction("ENV"):
        for pair in shlex.split(rest):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def exec_form(text: str) -> list[str]:
    """A JSON-array CMD; the shell form would not receive SIGTERM for a graceful stop."""
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value)
    return value


def cmd() -> list[str]:
    (text,) = instruction("CMD")
    return exec_form(text)


def healthcheck_command() -> list[str]:
    (text,) = instruction("HEALTHCHECK")
    _, _, command = text.partition("CMD ")
    return exec_form(command)


def healthcheck_url() -> str:
    script = " ".join(healthcheck_command())
    match = re.search(r"https?://[^'\"\s]+", script)
    assert match, f"no URL in the healthcheck: {script}"
    return match.group(0)


def exposed_port() -> int:
    (text,) = instruction("EXPOSE")
    return int(text.split("/")[0])


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def proxy_service() -> dict:
    return compose()["services"]["proxy"]


def compose_environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- .env.example ----------------------------------------------------------------------------


def test_every_variable_in_env_example_is_read_by_the_proxy():
    unknown = [name for name in env_example_names() if not is_setting_variable(name)]
    assert unknown == [], f".env.example names variables Settings does not read: {unknown}"


def test_env_example_offers_every_setting():
    offered = set(env_example_names())
    missing = setting_names() - NOT_IN_ENV_EXAMPLE - offered
    assert missing == set(), f"settings missing from .env.example: {sorted(missing)}"


def test_env_example_shows_the_numbered_account_variables():
    names = set(env_example_names())
    assert {"CF_API_TOKEN_1", "ACCOUNT_1"} <= names
    assert any(name.startswith("CF_DAILY_NEURONS_") for name in names)


def test_defaults_shown_in_env_example_are_the_real_defaults():
    checked = 0
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = DEFAULT_LINE.match(line)
        if not match or match.group(1) not in setting_names():
            continue
        name, value = match.groups()
        field = name.lower()
        shown = getattr(Settings(_env_file=None, **{field: value}), field)
        default = Settings.model_fields[field].get_default(call_default_factory=True)
        assert shown == default, f"{line!r} shows {shown!r}, the default is {default!r}"
        checked += 1
    assert checked >= 15  # the bulk of the file is defaults; none must go unchecked


def test_env_example_ships_no_credentials():
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ASSIGNMENT.match(line)
        if match and not match.group(1):  # an active assignment
            name, value = match.group(2), match.group(3)
            if name == "API_MASTER_KEY" or name.startswith(("CF_API_TOKEN_", "ACCOUNT_")):
                assert value.strip() == "", f"{name} must be left for the user to fill in"


def test_env_example_asks_for_legitimately_held_accounts():
    text = ENV_EXAMPLE.read_text().lower()
    assert "legitimately" in text and "terms" in text


# --- Dockerfile ------------------------------------------------------------------------------


def test_image_builds_on_python_312_slim_and_installs_without_pip_cache():
    bases = instruction("FROM", dockerfile_instructions())
    assert bases and all(base.split()[0] == "python:3.12-slim" for base in bases)
    runs = " ".join(instruction("RUN", dockerfile_instructions()))
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs)


def test_image_runs_as_a_non_root_user():
    (user,) = instruction("USER")
    name = user.split(":")[0]
    assert name not in ("root", "0", "")


def test_data_volume_is_the_data_dir():
    data_dir = dockerfile_env()["DATA_DIR"]
    volumes = [path for text in instruction("VOLUME") for path in json.loads(text)]
    assert volumes == [data_dir]
    # the non-root user must be able to write there
    runs = " ".join(instruction("RUN"))
    assert f"chown flux:flux {data_dir}" in runs


def test_dockerfile_sets_only_real_settings_or_python_variables():
    unknown = [
        name
        for name in dockerfile_env()
        if name not in RUNTIME_ENV and not is_setting_variable(name)
    ]
    assert unknown == []


def test_cmd_is_the_console_script_serving_on_the_exposed_port():
    args = cmd()
    assert args[0] in pyproject()["project"]["scripts"]
    assert args[1] == "serve"
    assert option(args, "--host") == "0.0.0.0"
    assert int(option(args, "--port")) == exposed_port()


def test_healthcheck_uses_python_not_curl_and_hits_the_served_port():
    command = healthcheck_command()
    assert command[0] == "python" and "urllib" in " ".join(command)
    url = urlsplit(healthcheck_url())
    assert url.hostname in ("127.0.0.1", "localhost")
    assert url.port == exposed_port()


def test_healthcheck_path_is_a_route_the_app_serves():
    path = urlsplit(healthcheck_url()).path
    if importlib.util.find_spec("flux_proxy.app") is None:
        assert path == "/health/live"  # the route architecture.md promises, until app.py lands
        return
    from starlette.testclient import TestClient

    from flux_proxy.app import create_app

    settings = Settings(
        _env_file=None,
        accounts=[AccountConfig(number=1, account_id="a" * 32, token=SecretStr("t" * 40))],
        api_master_key=SecretStr("deploy-test-key"),
        state_backend="memory",
        cf_api_base_url="http://127.0.0.1:9/client/v4",
    )
    with TestClient(create_app(settings)) as client:
        response = client.get(path)  # no key: Docker's healthcheck sends none
    assert response.status_code == 200, response.text


def test_serve_accepts_the_options_the_image_passes():
    result = subprocess.run(
        [sys.executable, "-m", "flux_proxy", *cmd()[1:2], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    for name in ("--host", "--port"):
        assert name in result.stdout


# --- .dockerignore ---------------------------------------------------------------------------


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if any(_docker_match(pattern, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def _docker_match(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        tail = pattern[3:]
        segments = path.split("/")
        return any(_docker_match(tail, "/".join(segments[i:])) for i in range(len(segments)))
    # `*` does not cross `/` in Docker's patterns
    regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
    return re.match(regex, path) is not None


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".dev.vars",
        ".git/config",
        ".flux-proxy/state.sqlite3",
        "tests/test_check.py",
        "flux_proxy/__pycache__/cli.cpython-312.pyc",
        ".venv/bin/python",
    ],
)
def test_secrets_and_local_state_stay_out_of_the_build_context(path):
    assert dockerignored(path)


def test_everything_the_package_needs_is_in_the_build_context():
    package_files = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "flux_proxy").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert any(name.endswith("settings.py") for name in package_files)
    needed = ["pyproject.toml", "README.md", *package_files]
    assert [name for name in needed if dockerignored(name)] == []


# --- docker-compose.yml ----------------------------------------------------------------------


def test_proxy_is_built_from_this_dockerfile_with_the_env_file():
    proxy = proxy_service()
    build = proxy["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (ROOT / context / "Dockerfile").resolve() == DOCKERFILE
    env_files = proxy["env_file"]
    assert ".env" in ([env_files] if isinstance(env_files, str) else env_files)


def test_proxy_waits_for_a_healthy_redis_and_uses_it():
    services = compose()["services"]
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    proxy = services["proxy"]
    assert proxy["depends_on"]["redis"]["condition"] == "service_healthy"
    env = compose_environment(proxy)
    url = urlsplit(env["REDIS_URL"])
    assert url.scheme == "redis" and url.hostname == "redis" and url.port == 6379
    assert env["STATE_BACKEND"] == "redis"


def test_redis_keeps_the_ledger_across_restarts():
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])


def test_compose_sets_only_real_settings():
    for service in compose()["services"].values():
        if service.get("build") is None:
            continue  # only the proxy reads Settings
        unknown = [n for n in compose_environment(service) if not is_setting_variable(n)]
        assert unknown == []


def test_compose_interpolates_only_its_own_variables():
    variables = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    assert variables <= COMPOSE_ONLY
    assert not (COMPOSE_ONLY & setting_names())


def test_published_ports_reach_the_exposed_port_and_default_to_8000():
    ports = proxy_service()["ports"]
    assert ports
    for mapping in ports:
        host, _, container = str(mapping).rpartition(":")
        assert int(container) == exposed_port()
        # the host side is a variable so `--scale` can be given a range; 8000 when unset
        assert re.fullmatch(r"\$\{FLUX_PROXY_PORTS:-8000\}", host)


def test_proxy_volumes_if_any_mount_the_data_dir():
    data_dir = dockerfile_env()["DATA_DIR"]
    for volume in proxy_service().get("volumes", []):
        target = volume["target"] if isinstance(volume, dict) else str(volume).split(":")[1]
        assert target == data_dir


def test_replicas_share_one_named_volume_at_the_data_dir():
    # The Files and Batch APIs keep uploads, output files and batch images under
    # DATA_DIR/files/, not in Redis: under --scale every replica must mount the same volume
    # there, or a file uploaded to one replica is missing on the next.
    data_dir = dockerfile_env()["DATA_DIR"]
    named = set(compose().get("volumes") or {})
    shared = []
    for volume in proxy_service().get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source"), volume["target"]
        else:
            source, target = str(volume).split(":")[:2]
        if source in named and target == data_dir:
            shared.append(source)
    assert shared, f"the proxy mounts no named volume at {data_dir}"


# --- docs ------------------------------------------------------------------------------------


def test_deployment_doc_covers_running_scaling_and_checking():
    text = DEPLOYMENT_DOC.read_text()
    for needle in (
        "docker compose up",
        "--scale proxy=",
        "FLUX_PROXY_PORTS",
        "flux-proxy check",
        "/health/live",
    ):
        assert needle in text, needle

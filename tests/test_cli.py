"""The command line, as real subprocesses: start-up refusals with clean messages, and
`serve --emulator` serving an image to the openai SDK."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import openai
from PIL import Image
from procs import shared_emulator

from flux_proxy.cli import COMMANDS, build_parser
from flux_proxy.emulator import DEMO_ACCOUNTS


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that configures the proxy, plus `extra`."""
    pattern = re.compile(
        r"^(API_MASTER_KEY|CF_|ACCOUNT_|STATE_BACKEND|REDIS_URL|DATA_DIR|DEFAULT_MODEL)"
    )
    env = {k: v for k, v in os.environ.items() if not pattern.match(k)}
    env.update(extra)
    return env


def flux_proxy(*args: str, cwd: Path, env: dict[str, str], timeout: float = 30):
    return subprocess.run(
        [sys.executable, "-m", "flux_proxy", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_live(url: str, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.communicate()}")
        try:
            if httpx.get(url + "/health/live", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not come up")


def stop(process: subprocess.Popen) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def test_serve_refuses_to_start_without_api_master_key(tmp_path):
    result = flux_proxy("serve", "--port", str(free_port()), cwd=tmp_path, env=clean_env())
    assert result.returncode != 0
    assert "API_MASTER_KEY" in result.stderr
    assert "--no-auth" in result.stderr
    assert "Traceback" not in result.stderr


def test_half_set_account_pair_exits_2_naming_the_variable(tmp_path):
    env = clean_env(API_MASTER_KEY="k", ACCOUNT_3="abc123")
    result = flux_proxy("serve", "--port", str(free_port()), cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "CF_API_TOKEN_3" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_value_exits_2_without_a_traceback(tmp_path):
    env = clean_env(API_MASTER_KEY="k", DAILY_NEURONS="lots")
    result = flux_proxy("serve", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "DAILY_NEURONS" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_emulator_serves_an_image_to_the_sdk(tmp_path):
    port = free_port()
    key = "cli-test-key-" + "z" * 16
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_proxy", "serve", "--emulator", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(API_MASTER_KEY=key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process)
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
        result = client.images.generate(prompt="a red bicycle", size="320x256")
        image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
        assert image.size == (320, 256)
        assert result.data[0].url.startswith(url + "/v1/images/files/")
        health = httpx.get(url + "/health").json()
        assert health["mode"] == "emulator"
        assert health["status"] == "ok" and health["total_accounts"] == 3
        assert health["store"]["backend"] == "memory"
    finally:
        out, err = stop(process)
    assert key not in out + err
    assert "emulator" in (out + err).lower()


def test_no_auth_prints_a_loud_warning_and_serves(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_proxy", "serve", "--emulator", "--no-auth", "--port",
         str(port)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process)
        models = httpx.get(url + "/v1/models")  # no key needed
        assert models.status_code == 200
    finally:
        _, err = stop(process)
    assert "WARNING" in err and "--no-auth" in err


def test_no_auth_in_the_environment_or_env_file_does_not_turn_the_key_off(tmp_path):
    # Serving without a key is the command line's --no-auth only: a stray NO_AUTH=true (here
    # in the environment, and in .env) must not silently open a proxy that has a key.
    (tmp_path / ".env").write_text("NO_AUTH=true\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_proxy", "serve", "--emulator", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(API_MASTER_KEY="cli-test-key-" + "n" * 16, NO_AUTH="true"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process)
        assert httpx.get(url + "/v1/models").status_code == 401
    finally:
        _, err = stop(process)
    assert "auth=on" in err


def test_console_script_lists_the_subcommands(tmp_path):
    # Installed beside the interpreter running the tests (the venv's bin/), on PATH or not.
    script = Path(sys.executable).parent / "flux-proxy"
    assert script.exists(), "pip install did not create the flux-proxy console script"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=30
    )
    assert result.returncode == 0
    assert "serve" in result.stdout and "emulator" in result.stdout


def test_parser_knows_serve_and_emulator_options():
    args = build_parser().parse_args(["serve", "--emulator", "--port", "9000", "--no-auth"])
    assert (args.command, args.emulator, args.port, args.no_auth) == ("serve", True, 9000, True)
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    args = build_parser().parse_args(["emulator"])
    assert (args.port, args.host) == (8787, "127.0.0.1")
    assert {"serve", "emulator"} <= set(COMMANDS)


def test_serve_with_two_workers_serves_an_image_to_the_sdk(tmp_path):
    emulator = shared_emulator()
    port = free_port()
    key = "cli-test-key-" + "w" * 16
    accounts = {}
    for number, (account, token) in enumerate(DEMO_ACCOUNTS.items(), start=1):
        accounts[f"ACCOUNT_{number}"] = account
        accounts[f"CF_API_TOKEN_{number}"] = token
    env = clean_env(
        API_MASTER_KEY=key,
        CF_API_BASE_URL=emulator.base_url,
        STATE_BACKEND="sqlite",
        DATA_DIR=str(tmp_path / "data"),
        **accounts,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_proxy", "serve", "--workers", "2", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process)
        workers = _children(process.pid)
        assert len(workers) == 2, workers
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
        for _ in range(4):  # more than one request, so both workers are likely to answer
            result = client.images.generate(prompt="a red bicycle", size="320x256")
            image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
            assert image.size == (320, 256)
        assert httpx.get(url + "/v1/models").status_code == 401  # the key applies in workers
    finally:
        out, err = stop(process)
    assert key not in out + err


def _children(pid: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing's resource tracker is a child too)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in found if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_emulator_with_workers_exits_2_with_a_clear_message(tmp_path):
    env = clean_env(API_MASTER_KEY="k")
    result = flux_proxy("serve", "--emulator", "--workers", "2", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "--emulator" in result.stderr and "--workers" in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_new_refuses_a_block_the_proxy_would_refuse_before_showing_a_key(tmp_path):
    env = clean_env(MODEL_ALIASES='{"house": "flux-1-schnell"}')
    refused = flux_proxy("keys", "new", "zed", "--model", "flux-9-ultra", cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert "flux-9-ultra" in refused.stderr and "fpx-" not in refused.stdout + refused.stderr
    # An alias the proxy knows (MODEL_ALIASES) is a model like any other.
    made = flux_proxy("keys", "new", "zed", "--model", "house", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    assert 'models = ["house"]' in made.stdout and "fpx-" in made.stderr


def test_keys_new_appended_to_the_keys_file_adds_a_key_that_works_after_reload(tmp_path):
    """The natural `keys new NAME >> keys.toml`: the file stays valid TOML with the hash only,
    the key is shown on stderr, and a running proxy that reloads the file accepts it."""
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('[[keys]]\nname = "ops"\nkey = "ops-key-' + "o" * 20 + '"\nrole = "admin"')
    port = free_port()
    env = clean_env(API_KEYS_FILE=str(keys_file), KEYS_RELOAD_SECONDS="0.2")
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_proxy", "serve", "--emulator", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process)
        appended = subprocess.run(
            f"{sys.executable} -m flux_proxy keys new alice --daily-images 3 >> keys.toml",
            shell=True,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert appended.returncode == 0, appended.stderr
        key = next(w for w in appended.stderr.split() if w.startswith("fpx-"))
        text = keys_file.read_text()
        assert key not in text and "fpx-" not in text
        parsed = tomllib.loads(text)  # the file without a final newline still parses
        assert [k["name"] for k in parsed["keys"]] == ["ops", "alice"]
        assert parsed["keys"][1]["key_sha256"] == hashlib.sha256(key.encode()).hexdigest()
        # The same name again would make the whole file refused: nothing is appended.
        again = subprocess.run(
            f"{sys.executable} -m flux_proxy keys new alice >> keys.toml",
            shell=True,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert again.returncode == 2 and "already has a key named 'alice'" in again.stderr
        assert keys_file.read_text() == text and "fpx-" not in again.stderr

        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
        deadline = time.monotonic() + 20
        while True:  # the reload is picked up within KEYS_RELOAD_SECONDS; wait for it
            try:
                result = client.images.generate(prompt="alice's first", size="256x256")
                break
            except openai.AuthenticationError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert result.data[0].b64_json
        quota = httpx.get(url + "/v1/usage/quota", headers={"Authorization": f"Bearer {key}"})
        assert (quota.json()["key"], quota.json()["images_remaining"]) == ("alice", 2)
    finally:
        out, err = stop(process)
    assert key not in out + err

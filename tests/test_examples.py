"""Every script in examples/ runs, as a subprocess, against a real proxy and the emulator: exit
code 0, the files it says it makes exist and are real images; and a failure exits non-zero.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# script -> the image files (under OUTPUT_DIR) it must leave behind
EXPECTED: dict[str, list[str]] = {
    "openai_generate.py": ["generate.png"],
    "openai_async_batch.py": [f"batch_{i:02d}.png" for i in range(6)],
    "openai_edit_references.py": ["edit_references.png"] + [f"reference_{i}.png" for i in range(3)],
    "openai_stream.py": ["stream_0.webp", "stream_1.webp"],
    "json_prompt.py": ["json_prompt.png"],
    "langchain_tool.py": ["langchain.png"],
    "curl.sh": ["garden.png", "portrait.png", "poses.png", "city.png", "boat.png"],
}


def run(script: str, proxy, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    command = ["bash", str(EXAMPLES / script)] if script.endswith(".sh") else [
        sys.executable, str(EXAMPLES / script)
    ]  # fmt: skip
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FLUX_PROXY_"))},
        "FLUX_PROXY_BASE_URL": proxy.base_url,
        "FLUX_PROXY_API_KEY": proxy.key,
        "OUTPUT_DIR": str(tmp_path / "out"),
        **env,
    }
    return subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=180
    )


def test_every_example_is_covered_here():
    scripts = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh"))
    assert scripts == sorted(EXPECTED)
    assert (EXAMPLES / "README.md").is_file()
    readme = (EXAMPLES / "README.md").read_text()
    for script in scripts:
        assert script in readme, f"examples/README.md does not mention {script}"


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_against_the_proxy_and_saves_real_images(script, proxy, emulator, tmp_path):
    result = run(script, proxy, tmp_path)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout.strip(), "an example says what it did"
    for name in EXPECTED[script]:
        path = tmp_path / "out" / name
        assert path.is_file(), f"{script} did not write {name}: {sorted(path.parent.iterdir())}"
        with Image.open(path) as image:
            image.load()
            assert image.format.lower().replace("jpeg", "jpg") == path.suffix[1:].replace(
                "jpeg", "jpg"
            )
    assert emulator.calls(), "the example reached the upstream through the proxy"
    assert proxy.key not in result.stdout + result.stderr


def test_edit_example_takes_reference_images_from_the_command_line(proxy, emulator, tmp_path):
    refs = []
    for index in range(2):
        path = tmp_path / f"ref{index}.jpg"
        Image.new("RGB", (300 + index, 200), (20 * index, 90, 200)).save(path, format="JPEG")
        refs.append(str(path))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "openai_edit_references.py"), *refs],
        cwd=tmp_path,
        env={**os.environ, "FLUX_PROXY_BASE_URL": proxy.base_url,
             "FLUX_PROXY_API_KEY": proxy.key, "OUTPUT_DIR": str(tmp_path / "out")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (call,) = emulator.calls()
    widths = [call["files"][f"input_image_{i}"]["width"] for i in range(2)]
    assert widths == [300, 301]


@pytest.mark.parametrize("script", ["openai_generate.py", "openai_stream.py", "curl.sh",
                                    "langchain_tool.py", "openai_async_batch.py"])  # fmt: skip
def test_example_exits_non_zero_when_the_proxy_refuses(script, proxy, emulator, tmp_path):
    result = run(script, proxy, tmp_path, FLUX_PROXY_API_KEY="wrong-key", BATCH_SIZE="2")
    assert result.returncode != 0
    assert emulator.calls() == []

"""The app does not import the CLI (which imports the app): `serve --workers N` processes build
the app from `flux_proxy.app:app_from_environment` alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flux_proxy.settings import EXIT_CONFIG, load_settings


def test_importing_the_app_and_its_factory_loads_no_cli_module():
    code = (
        "import sys, flux_proxy.app\n"
        "assert 'flux_proxy.cli' not in sys.modules, 'app imports cli'\n"
        "from flux_proxy.settings import load_settings\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_bad_default_response_format_stops_start_up_with_a_clean_message(monkeypatch, capsys):
    monkeypatch.setenv("DEFAULT_RESPONSE_FORMAT", "jpeg")
    with pytest.raises(SystemExit) as caught:
        load_settings(accounts=[])
    assert caught.value.code == EXIT_CONFIG
    assert "DEFAULT_RESPONSE_FORMAT" in capsys.readouterr().err

"""The offline Workers AI emulator: Cloudflare's REST paths, the model table's rules, synthetic
images. A development, test, demo and benchmark tool; it always says it is an emulator."""

from flux_proxy.emulator.app import create_emulator_app
from flux_proxy.emulator.server import (
    DEMO_ACCOUNTS,
    demo_account_configs,
    run_emulator,
    serve_emulator,
    start_emulator,
)

__all__ = [
    "DEMO_ACCOUNTS",
    "create_emulator_app",
    "demo_account_configs",
    "run_emulator",
    "serve_emulator",
    "start_emulator",
]

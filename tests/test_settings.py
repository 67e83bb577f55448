"""Settings: the seed's numbered accounts, start-up errors that name the variable, `.dev.vars`
and `.env`, model aliases and the master keys."""

from __future__ import annotations

import os
import re

import pytest

from flux_proxy.models import find_model
from flux_proxy.settings import ConfigError, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No stray CF_/ACCOUNT_ variables or .env files from the machine running the tests."""
    pattern = re.compile(
        r"^(CF_API_TOKEN_|ACCOUNT_|CF_DAILY_NEURONS_|API_MASTER_KEY|MODEL_ALIASES)"
    )
    for name in list(os.environ):
        if pattern.match(name):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_numbered_accounts_with_gaps_are_kept_in_order_of_n(monkeypatch):
    for number in (7, 1, 3):
        monkeypatch.setenv(f"CF_API_TOKEN_{number}", f"token-{number}")
        monkeypatch.setenv(f"ACCOUNT_{number}", f"account-id-{number}")
    settings = Settings()
    assert [a.number for a in settings.accounts] == [1, 3, 7]
    assert settings.accounts[1].account_id == "account-id-3"
    assert settings.accounts[1].token.get_secret_value() == "token-3"
    assert "token-3" not in repr(settings.accounts[1])


def test_account_numbers_above_ten_work(monkeypatch):
    monkeypatch.setenv("CF_API_TOKEN_42", "t")
    monkeypatch.setenv("ACCOUNT_42", "a")
    assert [a.number for a in Settings().accounts] == [42]


@pytest.mark.parametrize(
    ("present", "missing"),
    [("ACCOUNT_2", "CF_API_TOKEN_2"), ("CF_API_TOKEN_5", "ACCOUNT_5")],
)
def test_a_half_set_pair_stops_start_up_naming_the_missing_variable(monkeypatch, present, missing):
    monkeypatch.setenv("CF_API_TOKEN_1", "t1")
    monkeypatch.setenv("ACCOUNT_1", "a1")
    monkeypatch.setenv(present, "value")
    with pytest.raises(ConfigError) as caught:
        Settings()
    assert missing in str(caught.value)
    assert "value" not in str(caught.value)


def test_empty_values_do_not_count_as_set(monkeypatch):
    monkeypatch.setenv("CF_API_TOKEN_1", "t1")
    monkeypatch.setenv("ACCOUNT_1", "a1")
    monkeypatch.setenv("ACCOUNT_2", "  ")
    assert len(Settings().accounts) == 1


def test_the_seeds_dev_vars_file_is_read_and_env_wins(tmp_path, monkeypatch):
    (tmp_path / ".dev.vars").write_text(
        "API_MASTER_KEY=from-dev-vars\nCF_API_TOKEN_1=tok\nACCOUNT_1=acc\nDEFAULT_MODEL=flux-2-klein-4b\n"
    )
    settings = Settings()
    assert settings.master_keys == ["from-dev-vars"]
    assert [a.account_id for a in settings.accounts] == ["acc"]
    monkeypatch.setenv("API_MASTER_KEY", "from-env")
    assert Settings().master_keys == ["from-env"]


def test_dot_env_wins_over_dev_vars(tmp_path):
    (tmp_path / ".dev.vars").write_text("API_MASTER_KEY=old\n")
    (tmp_path / ".env").write_text("API_MASTER_KEY=new\n")
    assert Settings().master_keys == ["new"]


def test_several_master_keys_separated_by_commas(monkeypatch):
    monkeypatch.setenv("API_MASTER_KEY", "alpha, beta ,,gamma")
    assert Settings().master_keys == ["alpha", "beta", "gamma"]
    monkeypatch.delenv("API_MASTER_KEY")
    assert Settings().master_keys == []


def test_model_aliases_as_pairs_or_json_and_defaults_for_openai_names(monkeypatch):
    settings = Settings()
    assert find_model("dall-e-2", settings.model_aliases).short_name == "flux-2-dev"
    monkeypatch.setenv(
        "MODEL_ALIASES", "fast=flux-2-klein-4b, best=@cf/black-forest-labs/flux-2-dev"
    )
    aliases = Settings().model_aliases
    assert find_model("fast", aliases).short_name == "flux-2-klein-4b"
    assert find_model("best", aliases).short_name == "flux-2-dev"
    monkeypatch.setenv("MODEL_ALIASES", '{"quick": "flux-2-klein-9b"}')
    assert find_model("quick", Settings().model_aliases).short_name == "flux-2-klein-9b"


def test_lists_from_comma_text(monkeypatch):
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8")
    settings = Settings()
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.trusted_proxies == ["10.0.0.0/8"]

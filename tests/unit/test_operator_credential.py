"""The operator credential (gateway/http/auth.py): only configured SHA-256 digests, several for rotation."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import SecretStr, ValidationError

from gateway.http.auth import match_operator
from medparse.settings import Settings

OLD, NEW = "old-operator-token-" + "a" * 32, "new-operator-token-" + "b" * 32


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_either_configured_token_is_the_operator_while_one_is_rotated_out() -> None:
    settings = Settings(operator_token_sha256=SecretStr(f"{digest(OLD)}, {digest(NEW).upper()}"))
    assert match_operator(settings, OLD) is not None and match_operator(settings, OLD).credential == "operator#1"
    assert match_operator(settings, NEW) is not None and match_operator(settings, NEW).credential == "operator#2"
    for wrong in (OLD[:-1], NEW + "x", "", "mpk_abc_def", "\udcff" * 40, digest(OLD)):
        assert match_operator(settings, wrong) is None, wrong


def test_a_short_token_is_refused_even_when_its_digest_is_configured() -> None:
    settings = Settings(operator_token_sha256=SecretStr(digest("short")))
    assert match_operator(settings, "short") is None


def test_no_configured_digest_means_no_operator() -> None:
    assert match_operator(Settings(), OLD) is None


@pytest.mark.parametrize("value", ["abc", "g" * 64, digest(OLD) + ",", digest(OLD)[:-1]])
def test_only_sha256_hex_digests_are_accepted_as_the_setting(value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(operator_token_sha256=SecretStr(value))


def test_the_setting_never_shows_in_a_repr() -> None:
    settings = Settings(operator_token_sha256=SecretStr(digest(OLD)))
    assert digest(OLD) not in repr(settings)


def test_an_empty_setting_means_no_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPARSE_OPERATOR_TOKEN_SHA256", "")
    settings = Settings()
    assert settings.operator_token_sha256 is None and match_operator(settings, OLD) is None

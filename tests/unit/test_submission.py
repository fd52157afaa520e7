import pybase64
import pytest
from pydantic import ValidationError

from gateway.http.problems import ApiProblem
from gateway.jobs.schemas import JobCreateJson, JobOptions
from gateway.jobs.submission import decode_base64_image, parse_options, parse_prompts
from medparse.settings import Settings

SETTINGS = Settings(max_prompts=3, max_prompt_chars=10)


def test_ampersand_string_splits_and_strips_like_the_model() -> None:
    assert parse_prompts(" liver &kidney  & tumor ", SETTINGS) == ["liver", "kidney", "tumor"]


def test_list_form_is_accepted() -> None:
    assert parse_prompts(["liver", " kidney "], SETTINGS) == ["liver", "kidney"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("liver && kidney", "non-empty"),
        ("", "non-empty"),
        (["liver & kidney"], "must not contain '&'"),
        ("a & b & c & d", "at most 3 prompts"),
        ("averyveryverylongprompt", "at most 10 characters"),
    ],
)
def test_bad_prompts_name_the_field_and_the_reason(value: str | list[str], why: str) -> None:
    with pytest.raises(ApiProblem) as info:
        parse_prompts(value, SETTINGS)
    assert info.value.status == 422
    assert info.value.fields is not None and info.value.fields[0]["field"] == "prompts"
    assert why in info.value.detail


def test_options_reject_unknown_keys_with_the_field_path() -> None:
    with pytest.raises(ApiProblem) as info:
        parse_options('{"modality": "ct", "colour": "red"}', Settings())
    assert info.value.fields is not None
    assert info.value.fields[0]["field"] == "options.colour"


def test_options_accept_a_preset_or_a_custom_window() -> None:
    assert parse_options('{"window": "lung"}', Settings()).window == "lung"
    custom = parse_options('{"window": {"center": 40, "width": 400}}', Settings())
    assert custom.model_dump(exclude_none=True) == {"window": {"center": 40.0, "width": 400.0}}


def test_window_width_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        JobOptions.model_validate({"window": {"center": 40, "width": 0}})


def test_json_body_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        JobCreateJson.model_validate({"image_base64": "AAAA", "prompts": "x", "extra": 1})


def test_base64_with_mime_line_breaks_is_accepted() -> None:
    data = bytes(range(256)) * 4
    assert decode_base64_image(pybase64.encodebytes(data).decode()) == data


def test_invalid_base64_is_a_field_error() -> None:
    with pytest.raises(ApiProblem) as info:
        decode_base64_image("not base64!!")
    assert info.value.fields == [{"field": "image_base64", "message": "not valid base64"}]

"""The gateway's fast path for form field names agrees with aiohttp's Content-Disposition parser."""

from __future__ import annotations

import warnings

import pytest
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from gateway.jobs.submission import _PLAIN_FORM_FIELD

HEADERS = [
    'form-data; name="image"; filename="scan.png"',
    'form-data; name="prompts"',
    'form-data;name="options"',
    'form-data; name="webhook_url"; filename=""',
    'form-data; name="image"; filename="Ünïcode scan (1).png"',
    'form-data; name="image"; filename="a;b.png"',  # aiohttp splits at ';': left to it
    'form-data; name="image"; filename="a\\"b.png"',  # an escape: left to it
    'Form-Data; Name="image"',  # other spellings: left to it
    'form-data; name=image',
    'attachment; name="image"',
    'form-data; name="image"; filename*=UTF-8\'\'scan.png',
    "",
]


@pytest.mark.parametrize("header", HEADERS)
def test_the_fast_path_gives_aiohttps_name_or_leaves_the_header_to_it(header: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, params = parse_content_disposition(header)
    expected = content_disposition_filename(params, "name")
    plain = _PLAIN_FORM_FIELD.fullmatch(header)
    if plain is not None:
        assert plain.group(1) == expected


def test_the_fast_path_takes_the_usual_forms() -> None:
    assert [bool(_PLAIN_FORM_FIELD.fullmatch(h)) for h in HEADERS[:5]] == [True] * 5

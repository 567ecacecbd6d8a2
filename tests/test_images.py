from __future__ import annotations

import base64

import pytest

from lakehouse.images import image_ref

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 8).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 8).decode()


def test_the_three_forms() -> None:
    url = image_ref("https://example.test/cat.png")
    assert (url.url, url.inline, url.data_url()) == ("https://example.test/cat.png", False, url.url)
    data = image_ref(f"data:image/jpeg;base64,{JPEG}")
    assert (data.data, data.media_type, data.inline) == (JPEG, "image/jpeg", True)
    bare = image_ref(PNG)
    assert (bare.data, bare.media_type) == (PNG, "image/png")
    assert bare.data_url() == f"data:image/png;base64,{PNG}"
    assert image_ref(JPEG).media_type == "image/jpeg"
    # Unknown bytes: no type is claimed.
    assert image_ref(base64.b64encode(b"plain bytes!").decode()).media_type == ""


@pytest.mark.parametrize(
    "text",
    ["ftp://x/y.png", "data:text/plain;base64,aGk=", "data:image/png,raw", "not base64!", "abc"],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        image_ref(text)

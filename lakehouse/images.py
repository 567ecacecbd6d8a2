"""Images in chat messages: the three forms a caller may send, told apart.

A message's image is a string in one of three forms: a data URL
(``data:image/png;base64,…``), an http(s) URL, or bare base64 (Ollama's
form). Each upstream wants one of them, so providers ask this module for
the form they need rather than parse the string themselves.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)(?:;[^,;]*)*;base64,(.*)$", re.DOTALL)
_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]*={0,2}\s*$")
# Magic numbers of the formats vision models take (for bare base64, which
# says nothing of its type).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image: either ``url`` (http or https) or inline ``data``."""

    # The http(s) URL; None for an inline image.
    url: str | None = None
    # The base64 text (no ``data:`` prefix) of an inline image.
    data: str = ""
    # image/png, image/jpeg, …: from the data URL, or sniffed from the
    # bytes of bare base64 ("" when unknown).
    media_type: str = ""

    @property
    def inline(self) -> bool:
        return self.url is None

    def data_url(self) -> str:
        """The image as a URL: the http(s) one, or a data URL."""
        if self.url is not None:
            return self.url
        return f"data:{self.media_type or 'image/png'};base64,{self.data}"


def sniff(data: str) -> str:
    """The media type the first bytes of base64 ``data`` say, or ""."""
    head = data[:24].strip()
    try:
        raw = base64.b64decode(head[: len(head) // 4 * 4])
    except (binascii.Error, ValueError):
        return ""
    for magic, media in _MAGIC:
        if raw.startswith(magic):
            return media
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return ""


def image_ref(text: str) -> ImageRef:
    """The image ``text`` names; ValueError (saying what is wrong) when it is
    none of the three forms."""
    if text.startswith(("http://", "https://")):
        return ImageRef(url=text)
    if text.startswith("data:"):
        match = _DATA_URL.match(text)
        if match is None:
            raise ValueError("a data URL must be data:image/<type>;base64,<data>")
        media, data = match.groups()
        if not data or _BASE64.match(data) is None or len("".join(data.split())) % 4:
            raise ValueError("the data URL's data is not base64")
        return ImageRef(data=data, media_type=media.lower())
    if _BASE64.match(text) is None or len("".join(text.split())) % 4:
        raise ValueError("an image must be an http(s) URL, a data URL or base64")
    return ImageRef(data=text, media_type=sniff(text))

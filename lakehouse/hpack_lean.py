"""HPACK decoding of received header blocks without hpack's per-field overhead.

hpack's ``Decoder.decode`` spends on each field of a block a method call,
a ``log.debug`` call (arguments built whether or not anything logs), and
at the end a copy of every field (``_unicode_if_needed`` makes a new tuple
of new bytes even when asked for raw bytes): ~11 µs for the seven indexed
fields of a repeated request's head, ~3% of an h2c request here. h2
always asks for raw bytes. ``LeanDecoder`` decodes the indexed fields (a
table lookup: the one kind a client's repeated headers come as) in its
own loop and hands every other kind of field (literals, with or without
indexing, and table size updates) to hpack's own methods, so the table
and every check stay hpack's; the result is the list of ``HeaderTuple``
hpack returns. ``tests/test_hpack_lean.py`` holds it to hpack's decoder
on seeded random blocks and on broken ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack
from hpack import HeaderTuple
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hpack.hpack import decode_integer

# RFC 7541 4.1: a field costs its name, its value and 32 bytes of overhead.
ENTRY_OVERHEAD = 32


class LeanDecoder(hpack.Decoder):
    """hpack's decoder with indexed fields decoded in one loop."""

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        if not raw:
            return super().decode(data, raw)
        get = self.header_table.get_by_index
        view = memoryview(data)
        headers: list[HeaderTuple] = []
        append = headers.append
        size = 0
        limit = self.max_header_list_size
        at = 0
        end = len(data)
        while at < end:
            first = data[at]
            header: Any
            if first & 0x80:  # indexed (RFC 7541 6.1)
                if first != 0xFF:
                    header = HeaderTuple(*get(first & 0x7F))
                    at += 1
                else:  # an index past 126: a multi-byte integer
                    index, used = decode_integer(view[at:], 7)
                    header = HeaderTuple(*get(index))
                    at += used
            elif first & 0x40:  # literal, added to the table (6.2.1)
                header, used = self._decode_literal_index(view[at:])
                at += used
            elif first & 0x20:  # table size update (6.3)
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                at += self._update_encoding_context(view[at:])
                continue
            else:  # literal, not added; or never indexed (6.2.2, 6.2.3)
                header, used = self._decode_literal_no_index(view[at:])
                at += used
            append(header)
            size += len(header[0]) + len(header[1]) + ENTRY_OVERHEAD
            if size > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
        self._assert_valid_table_size()
        return headers

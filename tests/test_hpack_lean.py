"""LeanDecoder decodes as hpack's own Decoder: same fields, same table, same
refusals (the installed hpack is the oracle)."""

from __future__ import annotations

import random
from typing import Any

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from lakehouse.hpack_lean import LeanDecoder

NAMES = [b":method", b":path", b":authority", b"content-type", b"content-length",
         b"user-agent", b"x-request-id", b"authorization", b"x-\xff-odd", b"accept"]  # fmt: skip


def outcome(decoder: hpack.Decoder, block: bytes) -> Any:
    try:
        fields = list(decoder.decode(block, raw=True))
    except Exception as exc:
        return ("refused", isinstance(exc, (hpack.HPACKError, IndexError, TypeError)))
    return [(type(f), bytes(f[0]), bytes(f[1])) for f in fields]


def random_block(rng: random.Random, encoder: hpack.Encoder) -> bytes:
    fields: list[Any] = []
    for _ in range(rng.randint(0, 12)):
        name = rng.choice(NAMES)
        value = rng.choice(
            [b"", b"POST", b"/chat", b"71", bytes(rng.randbytes(rng.randint(1, 40)))]
        )
        kind = rng.random()
        if kind < 0.2:
            fields.append(NeverIndexedHeaderTuple(name, value))
        elif kind < 0.3:
            fields.append((name, value, True))
        else:
            fields.append((name, value))
    if rng.random() < 0.1:
        encoder.header_table_size = rng.choice([0, 256, 4096])
    return encoder.encode(fields, huffman=rng.random() < 0.5)


@pytest.mark.parametrize("seed", range(20))
def test_blocks_decode_as_with_hpacks_decoder(seed: int) -> None:
    rng = random.Random(seed)
    encoder = hpack.Encoder()
    stock, lean = hpack.Decoder(), LeanDecoder()
    for _ in range(60):
        block = random_block(rng, encoder)
        if rng.random() < 0.5:
            block += block[:1] * rng.randint(0, 3)  # repeated indexed fields
        assert outcome(lean, block) == outcome(stock, block)
        assert list(lean.header_table.dynamic_entries) == list(stock.header_table.dynamic_entries)


@pytest.mark.parametrize("seed", range(20))
def test_broken_blocks_are_refused_as_by_hpacks_decoder(seed: int) -> None:
    rng = random.Random(1000 + seed)
    encoder = hpack.Encoder()
    for _ in range(60):
        stock, lean = hpack.Decoder(), LeanDecoder()
        list_size, table_size = rng.choice([64, 200, 65536]), rng.choice([256, 4096])
        for decoder in (stock, lean):
            decoder.max_header_list_size = list_size
            decoder.max_allowed_table_size = table_size
        block = bytearray(random_block(rng, encoder))
        for _ in range(rng.randint(0, 3)):
            if block:
                block[rng.randrange(len(block))] = rng.randrange(256)
        if block and rng.random() < 0.3:
            del block[rng.randrange(len(block)) :]
        if rng.random() < 0.2:
            block[:0] = bytes([rng.choice([0x80, 0xFF, 0xFE, 0xBF, 0x3F, 0x20])])
        assert outcome(lean, bytes(block)) == outcome(stock, bytes(block)), bytes(block)


def test_indexed_fields_come_back_as_header_tuples_of_bytes() -> None:
    encoder = hpack.Encoder()
    request = [(b":method", b"POST"), (b":path", b"/chat"), (b"content-length", b"71")]
    lean = LeanDecoder()
    lean.decode(encoder.encode(request), raw=True)
    again = encoder.encode(request)
    assert all(byte & 0x80 for byte in again)  # all indexed the second time
    fields = list(lean.decode(again, raw=True))
    assert fields == request
    assert all(type(f) is HeaderTuple and type(f[1]) is bytes for f in fields)


def test_indexes_past_126_take_more_than_one_byte() -> None:
    # 80 fields fill the dynamic table; the first of them is then entry
    # 61 + 80 = 141, sent as 0xFF and a continuation byte.
    encoder = hpack.Encoder()
    fields = [(b"x-%02d" % i, b"v") for i in range(80)]
    stock, lean = hpack.Decoder(), LeanDecoder()
    first = encoder.encode(fields, huffman=False)
    again = encoder.encode(fields[:1])
    assert again[0] == 0xFF
    for block in (first, again):
        assert outcome(lean, block) == outcome(stock, block)
    assert list(lean.decode(again, raw=True)) == fields[:1]

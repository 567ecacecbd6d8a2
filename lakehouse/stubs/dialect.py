"""What the stub's JSON dialects (OpenAI chat, Anthropic Messages, OpenAI
Responses) share: a flavour, the catalog, a counter for reply ids, and a
request whose checks refuse it answered with the dialect's own error body."""

from __future__ import annotations

import itertools

from lakehouse.stubs.catalog import Catalog
from lakehouse.stubs.faults import Fault
from lakehouse.stubs.flavours import Flavour
from lakehouse.stubs.received import Received
from lakehouse.stubs.reply import Failure, Rejected, Reply


class DialectAPI:
    def __init__(self, flavour: Flavour, catalog: Catalog) -> None:
        self.flavour = flavour
        self.catalog = catalog
        self._ids = itertools.count(1)

    def error(self, failure: Failure) -> Reply:
        return self.flavour.error(failure)

    def answer(self, call: Received, fault: Fault | None) -> Reply:
        """The chat route's handler."""
        try:
            return self._answer(call, fault)
        except Rejected as exc:
            return self.error(exc.failure)

    def _answer(self, call: Received, fault: Fault | None) -> Reply:
        raise NotImplementedError

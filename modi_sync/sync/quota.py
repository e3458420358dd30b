"""What one user has stored, against their quota of documents and bytes.

Checking the quota must not cost a query per update, so the registry reads a user's
totals once, with their first load (the same batch that reads their document names),
and keeps them while the user has rooms in memory: every update stored through a
room here, or heard from another instance on the bus, adds to them, and compaction
and deletion here take away. What other instances compact or delete is not seen until
the user's rooms leave memory and the totals are read again, so the count errs
towards refusing early, never towards letting a user past the quota for long
(docs/security.md, "Quotas").
"""

from __future__ import annotations

from dataclasses import dataclass


class QuotaExceeded(ValueError):
    """Storing the update would take its user past their documents or bytes quota."""


@dataclass(slots=True)
class Usage:
    documents: int
    bytes: int
    max_documents: int
    max_bytes: int

    def check(self, size: int, *, new_document: bool) -> None:
        """Raise QuotaExceeded unless ``size`` more bytes (in a new document or not) fit."""
        if new_document and self.documents >= self.max_documents:
            raise QuotaExceeded(f"at most {self.max_documents} documents per user")
        if self.bytes + size > self.max_bytes:
            raise QuotaExceeded(f"at most {self.max_bytes} stored bytes per user")

    def stored(self, size: int, *, new_document: bool = False) -> None:
        self.bytes += size
        if new_document:
            self.documents += 1

    def removed(self, size: int, *, document: bool = False) -> None:
        self.bytes = max(self.bytes - size, 0)
        if document:
            self.documents = max(self.documents - 1, 0)

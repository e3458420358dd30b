"""Retail barcodes: EAN-13, EAN-8 and UPC-A, checked and put in one form.

A UPC-A is an EAN-13 with a leading 0, so it is stored and looked up in that form: the
12 digits printed on a US pack and the 13 a European scanner reads find the same food.
"""

from __future__ import annotations

_LENGTHS = (8, 12, 13)


def normalize_barcode(code: str) -> str:
    """The stored form of ``code`` (8 or 13 digits); ValueError if it is no valid GTIN."""
    if not (code.isascii() and code.isdigit() and len(code) in _LENGTHS):
        raise ValueError("must be 8 (EAN-8), 12 (UPC-A) or 13 (EAN-13) digits")
    if not _check_digit_holds(code):
        raise ValueError("wrong check digit")
    return "0" + code if len(code) == 12 else code


def _check_digit_holds(code: str) -> bool:
    # GS1: from the right, the digits before the check digit weigh 3, 1, 3, ...
    digits = [int(c) for c in reversed(code[:-1])]
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(digits))
    return (10 - total % 10) % 10 == int(code[-1])

"""Hostile payloads the security tests send: built by hand, as an attacker would, not by pickle.dumps."""

from __future__ import annotations


def nested_deques(levels: int) -> bytes:
    """A pickle of ``levels`` deques, each inside the next: freeing it would overflow the C stack."""
    out = bytearray(b"\x80\x02ccollections\ndeque\nq\x000")  # the class, memoised
    out += b"h\x00)R" * levels  # that many empty deques on the stack
    out += b"a" * (levels - 1) + b"."  # each appended into the one below it
    return bytes(out)

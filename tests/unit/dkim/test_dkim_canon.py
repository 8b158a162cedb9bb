"""gateway.dkim.canon: the streaming relaxed body hash equals dkimpy's of the body as the relay client
sends it, however cut."""

from __future__ import annotations

import hashlib
import re

import dkim  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dkim.canon import relaxed_body_hash, split_header
from gateway.dkim.signer import parse_message
from gateway.relay.client import data_chunks
from tests.harness.samples import CORPUS

RELAXED = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def as_received(body: bytes) -> bytes:
    """``body`` as a receiver of the relay client gets it: its DATA encoding with the dot-stuffing undone."""
    return re.sub(rb"(^|\r\n)\.", rb"\1", b"".join(data_chunks(body)))


def dkimpy_body_hash(message: bytes) -> bytes:
    """dkimpy's relaxed body hash of ``message`` as the relay client sends it: what a verifier computes."""
    parsed = parse_message(message)
    assert parsed is not None
    return hashlib.sha256(RELAXED.canonicalize_body(as_received(parsed[1]))).digest()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def streamed_hash(message: bytes, size: int) -> bytes:
    head, start, rest = split_header(pieces(message, size))
    assert head + start + b"".join(rest) == message
    parsed = parse_message(head)
    assert parsed is not None and parsed[1] == b""  # the head holds the whole header section
    return relaxed_body_hash([start, *pieces(message[len(head) + len(start) :], size)])


BODY_BITS = st.sampled_from([b"x", b" ", b"\t", b"\r\n", b"\n", b"\r", b"  \t ", b"ab c", b"\r\r\n", b"."])


@settings(max_examples=2000, deadline=None)
@given(body=st.lists(BODY_BITS, max_size=40).map(b"".join), size=st.integers(1, 9))
def test_any_body_cut_anywhere_hashes_as_dkimpy(body: bytes, size: int) -> None:
    message = b"From: a@example.org\r\nSubject: t\r\n\r\n" + body
    assert streamed_hash(message, size) == dkimpy_body_hash(message)


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"\r\n\r\n\r\n", b"a", b"a \t", b"a\r\n\r\n", b" \r\n \r\n", b"a\r", b"\r\n\r\nx", b"x  \r\n\t\r\n"],
)
def test_edge_bodies(body: bytes) -> None:
    message = b"From: a@example.org\r\n\r\n" + body
    for size in (1, 2, 3, 1000):
        assert streamed_hash(message, size) == dkimpy_body_hash(message), (body, size)


def test_the_corpus_hashes_as_dkimpy() -> None:
    checked = 0
    for path in sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "LICENSE"):
        message = path.read_bytes()
        if parse_message(message) is None:
            continue  # not signed at all (see parse_message)
        for size in (7, 4096, 1 << 20):
            assert streamed_hash(message, size) == dkimpy_body_hash(message), (path, size)
        checked += 1
    assert checked > 50


def reference_author_domain(value: str) -> str | None:
    """author_domain as email.utils reads every form (the signer's fallback)."""
    import email.utils

    for _, address in email.utils.getaddresses([value]):
        local, at, domain = address.rpartition("@")
        domain = domain.strip().rstrip(".").lower()
        if at and local and domain and not domain.startswith("["):
            return domain if domain.isascii() else domain.encode("idna").decode("ascii")
    return None


FROM_BITS = st.sampled_from(["<", ">", "a", "B", ".", "-", "+", "@", " ", "x.example", '"', ",", "(c)", "Ann "])


@settings(max_examples=3000, deadline=None)
@given(value=st.lists(FROM_BITS, max_size=12).map("".join))
def test_author_domain_reads_from_fields_as_email_utils(value: str) -> None:
    from gateway.dkim.signer import author_domain

    assert author_domain(value) == reference_author_domain(value)


@pytest.mark.parametrize(
    "value",
    [
        "<a@b.example>",
        "Ann Lee <a.b+c@X-Y.Example.org>",
        "a@b.example",
        '"Lee, Ann" <a@b.example>',
        "a@b.example, c@d.example",
        "<a@b.example",
    ],
)
def test_author_domain_common_forms(value: str) -> None:
    from gateway.dkim.signer import author_domain

    assert author_domain(value) == reference_author_domain(value)


@settings(max_examples=1000, deadline=None)
@given(
    headers=st.lists(
        st.tuples(st.sampled_from([b"From", b"SUBJECT ", b"x-A"]), st.lists(BODY_BITS, max_size=12).map(b"".join)),
        max_size=5,
    )
)
def test_relaxed_headers_as_dkimpy(headers) -> None:
    from gateway.dkim.canon import relaxed_headers

    pairs = [[name, value + b"\r\n"] for name, value in headers]
    assert relaxed_headers(pairs) == RELAXED.canonicalize_headers(pairs)

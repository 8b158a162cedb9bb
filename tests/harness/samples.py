"""Test messages shared by the scanner tests: GTUBE (assembled from halves so no scanner trips on
our sources), ham with and without Date/Message-ID, and the corpus location (tests/corpus)."""

from __future__ import annotations

from pathlib import Path

# The message corpus, in the repository (tests/corpus/, with its own LICENSE): real-world multipart,
# 8-bit and malformed messages every content feature must pass.
CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CORPUS_FILES = sorted(path for path in CORPUS.rglob("*") if path.is_file() and path.name != "LICENSE")

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
HEADER = b"From: a@example.com\r\nTo: b@example.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
GTUBE_MAIL = HEADER + b"Subject: gtube\r\nMessage-ID: <g@example.com>\r\n\r\n" + GTUBE.encode() + b"\r\n"
HAM = HEADER + b"Subject: lunch\r\nMessage-ID: <h@example.com>\r\n\r\nSee you at noon.\r\n"
UNDATED = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: lunch\r\n\r\nSee you at noon.\r\n"

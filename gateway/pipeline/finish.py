"""The message as it goes to the spool: Received:, the policies' header edits, then DKIM, in that order.

The signer runs last on outbound mail, after every field the gateway adds
(maddy ``msgpipeline.Body`` order), so the signature covers them. Signing runs in
two threads of its own: OpenSSL's RSA/Ed25519 step and the hashing of large
messages release the GIL, so the event loop serves other sessions meanwhile, on
the other core; a hung scanner in asyncio's default pool cannot hold it up.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from gateway import metrics
from gateway.message import FileText, MessageText, Piece, edited_parts, whole_bytes
from gateway.verdict import HeaderEdit

if TYPE_CHECKING:
    from gateway.dkim.signer import DkimSigner  # loaded only by gateways that sign

log = logging.getLogger("gateway.smtpd")

_SIGNING_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dkim")
# Messages up to this size become one bytes object (the worker can take it in memory);
# larger ones stay pieces, the body a view of the received text, so it is never copied.
HANDOVER_MAX_BYTES = 1 << 20


async def finish(
    content: bytes | FileText, trace: bytes, edits: tuple[HeaderEdit, ...], *, signer: DkimSigner | None, queue_id: str
) -> MessageText:
    """The message to commit: ``trace`` (the Received: field) and the ``edits`` applied, signed by ``signer``.

    Args:
        content: the message as received (in memory, or kept in its file by the DATA reader).
        trace: our Received: field, CRLF-terminated.
        edits: the policies' header edits, in order.
        signer: the DKIM signer for this message (outbound mail of a signing
            domain), or None.
        queue_id: for the log line of each signature.

    Returns:
        One ``bytes`` object, or for a large unsigned message the pieces that
        make it (:func:`gateway.message.edited_parts`; a file-held body is a
        :class:`~gateway.message.FileSpan` the spool copies in the kernel).
    """
    parts = edited_parts(content, trace, edits)
    large = isinstance(content, FileText) or len(content) > HANDOVER_MAX_BYTES
    if signer is not None:
        # parts[0] is a leading mbox separator line (or b""): the signatures go right below it
        parts.insert(1, await _sign(signer, queue_id, parts, large=large))
    if large:
        return parts
    return whole_bytes(parts)


async def _sign(signer: DkimSigner, queue_id: str, parts: list[Piece], *, large: bool) -> bytes:
    """The DKIM-Signature fields for the message ``parts`` make.

    A message up to :data:`HANDOVER_MAX_BYTES` is signed right here, on the event
    loop (about 0.3 ms: the RSA step holds the GIL, so a thread would only add
    two hand-overs and GIL contention with this loop; measured by ``make bench``'s
    dkim variant, 0.97 -> 0.67 ms added CPU per message). A larger one goes to
    the signing threads, where its body hash (hashlib releases the GIL) does not
    stall the sessions.
    """
    if large:
        signatures = await asyncio.get_running_loop().run_in_executor(_SIGNING_THREADS, signer.signatures, parts)
    else:
        signatures = signer.signatures(parts)
    for signature in signatures:
        metrics.DKIM_SIGNATURES.labels(signature.domain, signature.algorithm).inc()
        log.info("%s: DKIM-Signature added: d=%s a=%s", queue_id, signature.domain, signature.algorithm)
    return b"".join(signature.field for signature in signatures)

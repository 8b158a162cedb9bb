"""A small authoritative DNS server on loopback for tests (UDP and TCP, one port).

`TestDnsServer` answers from an in-memory table keyed by ``(name, rdtype)``::

    records = {
        ("example.com", "MX"): ["10 mx1.example.com.", "20 mx2.example.com."],
        ("mx1.example.com", "A"): ["127.0.0.1"],
        ("example.com", "TXT"): ["v=spf1 -all"],
    }
    with TestDnsServer(records) as dns_server:
        answer = dns_server.resolver().resolve("example.com", "MX")

Semantics (enough for MX/A/AAAA/TXT/PTR lookups, not a full DNS server):

- names are case-insensitive, the trailing dot is optional;
- every name is answered authoritatively (AA set); a name with no records and
  no records below it is NXDOMAIN, a name that has other types (or only records
  below it, an "empty non-terminal") is NOERROR with an empty answer;
- a CNAME owner answers any other type with the CNAME, followed inside the table;
- TXT values are plain strings (no quoting), split into 255-octet
  character-strings; other types use zone-file text (``"10 mx1.example.com"``,
  relative names are taken as absolute);
- a PTR key may be given as an IP address (``("127.0.0.1", "PTR")``) and is turned
  into its ``in-addr.arpa``/``ip6.arpa`` name;
- UDP answers larger than 512 octets (or the client's EDNS payload size) are
  sent truncated with TC set, so resolvers retry over TCP (RFC 1035 §4.2.1);
- ``set_rcode(name, rdtype, "SERVFAIL")`` scripts a failure, ``"TIMEOUT"`` drops
  the query.

The table may be changed while the server runs (``add``/``remove``/``set_rcode``);
every query is logged in ``.queries``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import threading
from types import TracebackType
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

__all__ = ["DnsQuery", "TestDnsServer"]

DEFAULT_TTL = 300  # seconds
TIMEOUT = "TIMEOUT"
_UDP_DEFAULT_PAYLOAD = 512  # octets, RFC 1035 §2.3.4
_MAX_CNAME_CHAIN = 8

log = logging.getLogger(__name__)

DnsQuery = tuple[str, str, str]
"""(name without trailing dot, lowercase; rdtype text; "udp" | "tcp")."""


def _normalise_name(name: str, rdtype: str = "") -> dns.name.Name:
    text = name.strip()
    if rdtype.upper() == "PTR":
        try:
            ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return dns.reversename.from_address(text)
    return dns.name.from_text(text.rstrip(".") + ".").canonicalize()


def _rdatas(rdtype: dns.rdatatype.RdataType, values: list[str]) -> list[dns.rdata.Rdata]:
    if rdtype == dns.rdatatype.TXT:
        result: list[dns.rdata.Rdata] = []
        for value in values:
            raw = value.encode("utf-8")
            chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
            result.append(TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks))
        return result
    return [
        dns.rdata.from_text(dns.rdataclass.IN, rdtype, value, origin=dns.name.root, relativize=False)
        for value in values
    ]


class TestDnsServer:
    """Authoritative DNS for any name, from a table, on one UDP+TCP loopback port.

    Args:
        records: ``(name, rdtype) → values`` as described in the module docstring.
        host: ``"127.0.0.1"`` or ``"::1"``.
        port: UDP and TCP port; 0 picks one that is free for both.
        ttl: seconds, for every answer.

    Raises:
        ValueError / dns.exception.SyntaxError: a record value cannot be parsed
            (from the constructor and ``add``).
        OSError: the port cannot be bound.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        records: dict[tuple[str, str], list[str]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: int = DEFAULT_TTL,
    ) -> None:
        self.host = host
        self.ttl = ttl
        self._lock = threading.Lock()
        self._table: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], list[dns.rdata.Rdata]] = {}
        self._rcodes: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], str] = {}
        self._queries: list[DnsQuery] = []
        for (name, rdtype), values in (records or {}).items():
            self.add(name, rdtype, values)
        self._udp: socketserver.UDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []
        self.port = port

    # -- table -------------------------------------------------------------

    def add(self, name: str, rdtype: str, values: list[str]) -> None:
        """Set the records of ``(name, rdtype)``, replacing earlier ones (thread-safe)."""
        rtype = dns.rdatatype.from_text(rdtype.upper())
        key = (_normalise_name(name, rdtype), rtype)
        parsed = _rdatas(rtype, list(values))
        with self._lock:
            self._table[key] = parsed

    def remove(self, name: str, rdtype: str) -> None:
        """Delete the records of ``(name, rdtype)``; no error if absent (thread-safe)."""
        key = (_normalise_name(name, rdtype), dns.rdatatype.from_text(rdtype.upper()))
        with self._lock:
            self._table.pop(key, None)

    def set_rcode(self, name: str, rdtype: str, rcode: str | None) -> None:
        """Answer ``(name, rdtype)`` with ``rcode`` ("SERVFAIL", "REFUSED", ...) instead
        of the table, or drop the query for ``"TIMEOUT"``; ``None`` restores the table."""
        key = (_normalise_name(name, rdtype), dns.rdatatype.from_text(rdtype.upper()))
        if rcode is not None and rcode != TIMEOUT:
            dns.rcode.from_text(rcode)  # validate now, in the test thread
        with self._lock:
            if rcode is None:
                self._rcodes.pop(key, None)
            else:
                self._rcodes[key] = rcode

    @property
    def queries(self) -> list[DnsQuery]:
        """Snapshot of the questions received, in order."""
        with self._lock:
            return list(self._queries)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Bind UDP and TCP on one port and serve in daemon threads.

        Raises:
            RuntimeError: if already running.
            OSError: if no common free port was found, or ``port`` is taken.
        """
        if self._udp is not None:
            raise RuntimeError("TestDnsServer already running")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        udp_cls = type("_Udp", (_UdpServer,), {"address_family": family})
        tcp_cls = type("_Tcp", (_TcpServer,), {"address_family": family})
        last_error: OSError | None = None
        for _ in range(20 if self.port == 0 else 1):
            udp = udp_cls((self.host, self.port), _UdpHandler)
            port = udp.server_address[1]
            try:
                tcp = tcp_cls((self.host, port), _TcpHandler)
            except OSError as error:  # TCP side of this UDP port is taken: try another
                udp.server_close()
                last_error = error
                continue
            break
        else:
            assert last_error is not None
            raise last_error
        udp.dns = tcp.dns = self
        self._udp, self._tcp, self.port = udp, tcp, port
        self._threads = [
            threading.Thread(
                target=srv.serve_forever, kwargs={"poll_interval": 0.05}, name=f"dns-{kind}-{port}", daemon=True
            )
            for kind, srv in (("udp", udp), ("tcp", tcp))
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop serving and close both sockets. Idempotent; ``.port`` is kept."""
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for thread in self._threads:
            thread.join(5)
        self._udp = self._tcp = None
        self._threads = []

    def __enter__(self) -> TestDnsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------

    def resolver(self, *, lifetime: float = 5.0) -> dns.resolver.Resolver:
        """A dnspython stub resolver that asks only this server (no cache, no search)."""
        res = dns.resolver.Resolver(configure=False)
        res.port = self.port
        res.nameservers = [self.host]
        res.timeout = res.lifetime = lifetime
        return res

    def async_resolver(self, *, lifetime: float = 5.0) -> dns.asyncresolver.Resolver:
        """Same as ``resolver()`` for ``dns.asyncresolver``."""
        res = dns.asyncresolver.Resolver(configure=False)
        res.port = self.port
        res.nameservers = [self.host]
        res.timeout = res.lifetime = lifetime
        return res

    # -- answering (server threads) ---------------------------------------

    def _answer(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not worth a FORMERR for a test server
        try:
            return self._answer_query(query, transport)
        except Exception:
            # A bug here must not look like a DNS timeout: log (the ERROR record
            # fails the test) and answer SERVFAIL.
            log.exception("TestDnsServer failed to answer %s", query.question)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()

    def _answer_query(self, query: dns.message.Message, transport: str) -> bytes | None:
        response = dns.message.make_response(query, our_payload=4096)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        qname, qtype = question.name.canonicalize(), question.rdtype
        with self._lock:
            self._queries.append((qname.to_text(omit_final_dot=True), dns.rdatatype.to_text(qtype), transport))
            scripted = self._rcodes.get((qname, qtype))
            if scripted == TIMEOUT:
                return None
            if scripted is not None:
                response.set_rcode(dns.rcode.from_text(scripted))
            elif question.rdclass != dns.rdataclass.IN:
                response.set_rcode(dns.rcode.REFUSED)
            else:
                self._fill(response, question.name, qtype)
        max_size = 65535
        if transport == "udp":
            max_size = _UDP_DEFAULT_PAYLOAD
            if query.edns >= 0:
                max_size = max(query.payload, _UDP_DEFAULT_PAYLOAD)
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=max_size)

    def _fill(self, response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType) -> None:
        """Add the answer for (qname, qtype) to ``response``; caller holds the lock."""
        name = qname
        for _ in range(_MAX_CNAME_CHAIN):
            key_name = name.canonicalize()
            if qtype == dns.rdatatype.ANY:
                found = [(t, r) for (n, t), r in self._table.items() if n == key_name and r]
            else:
                found = [(qtype, self._table.get((key_name, qtype)) or [])]
                found = [(t, r) for t, r in found if r]
            if found:
                for _, rdatas in found:
                    response.answer.append(dns.rrset.from_rdata_list(name, self.ttl, rdatas))
                return
            cname = self._table.get((key_name, dns.rdatatype.CNAME))
            if cname and qtype != dns.rdatatype.CNAME:
                response.answer.append(dns.rrset.from_rdata_list(name, self.ttl, cname))
                name = cname[0].target  # type: ignore[attr-defined]
                continue
            if not self._name_exists(key_name):
                # also after a CNAME: the rcode is about the last name (RFC 6604 §2.1)
                response.set_rcode(dns.rcode.NXDOMAIN)
            return

    def _name_exists(self, name: dns.name.Name) -> bool:
        return any((n == name or n.is_subdomain(name)) and rdatas for (n, _), rdatas in self._table.items())


class _UdpServer(socketserver.UDPServer):
    allow_reuse_address = True
    dns: TestDnsServer


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    dns: TestDnsServer


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _UdpServer
    request: Any

    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.dns._answer(data, "udp")
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    """RFC 1035 §4.2.2 framing (2-octet length); several queries per connection."""

    server: _TcpServer
    request: socket.socket

    def handle(self) -> None:
        self.request.settimeout(10.0)
        try:
            while True:
                header = self._read_exactly(2)
                if header is None:
                    return
                wire = self._read_exactly(int.from_bytes(header, "big"))
                if wire is None:
                    return
                reply = self.server.dns._answer(wire, "tcp")
                if reply is None:
                    continue  # scripted TIMEOUT: stay silent
                self.request.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:
            return

    def _read_exactly(self, size: int) -> bytes | None:
        buf = b""
        while len(buf) < size:
            chunk = self.request.recv(size - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

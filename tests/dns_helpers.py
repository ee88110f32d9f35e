"""A real DNS server on loopback for tests, written with dnspython's message classes.

`LoopbackDns()` starts an authoritative server in a daemon thread, on UDP and TCP at the
same address and port, and answers from a zone the test writes:

    server.add("example.test", "MX", "10 mx1.example.test", "20 mx2.example.test")
    server.add("mx1.example.test", "A", "192.0.2.1")
    server.load({("alias.example.test", "CNAME"): "real.example.test", ...})
    server.servfail.add("broken.example.test")     # SERVFAIL for every type
    server.silent.add("slow.example.test")         # no reply at all (a timeout)
    server.truncate.add("big.example.test")        # UDP answers come back TC=1

Names are absolute and case-insensitive (a trailing dot is optional); values are in
zone-file syntax, with names relative to the root.  Types: anything dnspython knows
(MX, A, AAAA, TXT, CNAME, PTR, ...).  CNAMEs are followed inside the zone; a name with no
record of any type is NXDOMAIN; a name that has records, but none of the type asked,
gets an empty NOERROR answer.  A UDP answer larger than the client's payload size (512
without EDNS) is truncated, so the resolver asks again over TCP.  `server.queries`
records every question as (name, type, "udp"|"tcp"), name lower case with its dot.

Where it listens: as root, 127.53.1.N port 53 (so `resolv.conf`, which cannot carry a
port, is enough, also for the installed commands run as subprocesses); otherwise an
ephemeral port on 127.0.0.1, and `server.standard_port` is False: a test that runs
subprocesses needs root then (`server.require_port_53()` skips, or fails under CI).
`server.write_resolv_conf(path)` writes "nameserver ADDRESS" (+ options);
`server.apply(resolver)` sets a dnspython Resolver's port when it is not 53 and checks
that the resolver's only name server is this one (no query may leave loopback).

The `dns_zone` fixture yields a started server with an empty zone and stops it after
the test (`from dns_helpers import dns_zone`).
"""
import os
import socket
import struct
import threading

import pytest

from conftest import unavailable


def _absolute(name):
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


class LoopbackDns:
    """An authoritative UDP+TCP DNS server on loopback (see the module docstring)."""

    MAX_CNAMES = 8

    def __init__(self, records=None):
        import dns.message  # noqa: F401  (fail early if dnspython is missing)
        self.zone = {}                  # (name, TYPE) -> [rdata text]
        self.servfail, self.silent, self.truncate = set(), set(), set()
        self.servfail_all = False       # SERVFAIL to every question (conftest's resolver)
        self.queries = []
        self.stopping = False
        self.lock = threading.Lock()
        self.udp, self.tcp = self._bind()
        self.address, self.port = self.udp.getsockname()[:2]
        self.standard_port = self.port == 53
        if records:
            self.load(records)
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self.threads:
            t.start()

    # -- the zone ------------------------------------------------------------------

    def add(self, name, rdtype, *values):
        """Add records of one name and type (zone-file text, e.g. "10 mx.example.")."""
        key = (_absolute(name), rdtype.upper())
        with self.lock:
            self.zone.setdefault(key, []).extend(values)
        return self

    def load(self, records):
        """{(name, type): value or [values]} or [(name, type, value), ...]."""
        items = records.items() if isinstance(records, dict) else \
            (((n, t), v) for n, t, v in records)
        for (name, rdtype), value in items:
            self.add(name, rdtype, *([value] if isinstance(value, str) else value))
        return self

    # -- answers -------------------------------------------------------------------

    def answer(self, request, transport):
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype
        import dns.rrset
        q = request.question[0]
        name, qtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
        with self.lock:
            self.queries.append((name, qtype, transport))
            zone = {k: list(v) for k, v in self.zone.items()}
            servfail, silent = {_absolute(n) for n in self.servfail}, \
                {_absolute(n) for n in self.silent}
        if name in silent:
            return None
        response = dns.message.make_response(request)
        response.flags |= dns.flags.AA
        if name in servfail or self.servfail_all:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        target = name
        for _ in range(self.MAX_CNAMES):
            cname = zone.get((target, "CNAME"))
            if not cname or qtype == "CNAME":
                break
            response.answer.append(dns.rrset.from_text_list(
                target, 300, "IN", "CNAME", cname[:1]))
            target = _absolute(cname[0])
            if target in servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
                response.answer = []
                return response
        values = zone.get((target, qtype))
        if values:
            response.answer.append(dns.rrset.from_text_list(target, 300, "IN", qtype, values))
        elif not any(n == target for n, _t in zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    def _wire(self, request, response, transport):
        import dns.flags
        wire = response.to_wire()
        if transport == "udp":
            limit = max(512, request.payload if request.edns >= 0 else 512)
            if len(wire) > limit or (response.question and
                                     response.question[0].name.to_text().lower()
                                     in {_absolute(n) for n in self.truncate}):
                response.answer, response.authority, response.additional = [], [], []
                response.flags |= dns.flags.TC
                wire = response.to_wire()
        return wire

    def _respond(self, data, transport):
        import dns.message
        try:
            request = dns.message.from_wire(data)
        except Exception:       # noqa: BLE001 - not a DNS query: ignore it
            return None
        if len(request.question) != 1:
            return None
        response = self.answer(request, transport)
        return None if response is None else self._wire(request, response, transport)

    # -- sockets -------------------------------------------------------------------

    def _bind(self):
        candidates = [("127.53.1.%d" % n, 53) for n in range(2, 250)] \
            if os.geteuid() == 0 else []
        candidates.append(("127.0.0.1", 0))
        for address, port in candidates:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                udp.bind((address, port))
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((address, udp.getsockname()[1]))
                tcp.listen(16)
            except OSError:
                udp.close()
                tcp.close()
                continue
            udp.settimeout(0.2)
            tcp.settimeout(0.2)
            return udp, tcp
        raise AssertionError("no free loopback address for the test DNS server")

    def _serve_udp(self):
        while not self.stopping:
            try:
                data, peer = self.udp.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            wire = self._respond(data, "udp")
            if wire is not None:
                try:
                    self.udp.sendto(wire, peer)
                except OSError:
                    pass

    def _serve_tcp(self):
        while not self.stopping:
            try:
                conn, _peer = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._tcp_session, args=(conn,), daemon=True).start()

    def _tcp_session(self, conn):
        conn.settimeout(2)
        with conn:
            for _ in range(100):            # queries per connection, bounded
                head = self._read(conn, 2)
                if head is None:
                    return
                data = self._read(conn, struct.unpack("!H", head)[0])
                if data is None:
                    return
                wire = self._respond(data, "tcp")
                if wire is None:
                    return
                try:
                    conn.sendall(struct.pack("!H", len(wire)) + wire)
                except OSError:
                    return

    @staticmethod
    def _read(conn, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = conn.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    # -- clients -------------------------------------------------------------------

    def write_resolv_conf(self, path, search=None, timeout=1, attempts=1):
        """A resolv.conf naming this server only; returns the path."""
        os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write("nameserver %s\n" % self.address)
            if search:
                f.write("search %s\n" % search)
            f.write("options timeout:%d attempts:%d\n" % (timeout, attempts))
        return str(path)

    def apply(self, resolver):
        """Point a dnspython Resolver read from write_resolv_conf()'s file at this
        server's port; asserts that this server is its only name server."""
        assert [str(n) if isinstance(n, str) else n.address for n in resolver.nameservers] \
            == [self.address], resolver.nameservers
        if not self.standard_port:
            resolver.port = self.port
            resolver.nameservers = [self.address]       # re-enrich with the port
        return resolver

    def require_port_53(self):
        """Skip (fail under CI) a test whose resolver cannot be told a port."""
        if not self.standard_port:
            unavailable("the test DNS server needs port 53 (root) for this test")

    def asked(self, name, rdtype=None):
        """The transports of the questions seen for name (and type)."""
        name = _absolute(name)
        with self.lock:
            return [tr for n, t, tr in self.queries if n == name and rdtype in (None, t)]

    def clear(self):
        with self.lock:
            self.queries.clear()

    def stop(self):
        self.stopping = True
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):     # wake the loops now
            try:
                with socket.socket(socket.AF_INET, kind) as s:
                    s.settimeout(0.5)
                    s.connect((self.address, self.port))
                    if kind == socket.SOCK_DGRAM:
                        s.send(b"")
            except OSError:
                pass
        for t in self.threads:
            t.join(5)
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def dns_zone():
    """A started LoopbackDns with an empty zone; stopped after the test."""
    server = LoopbackDns()
    yield server
    server.stop()

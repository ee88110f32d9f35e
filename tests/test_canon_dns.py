"""Host canonicalisation through the service switch, with a real DNS server on loopback.

The server is a small authoritative responder started by the test on 127.53.0.N port 53
(binding port 53 needs root: under CI=true a non-root run is a failure, elsewhere a
skip).  It is written with dnspython's message classes and answers A, MX, CNAME and PTR
questions for a test zone, SERVFAIL for one name and NXDOMAIN for the rest.  The
instance's etc/resolv.conf points the resolver at it, so no query leaves loopback.
The installed `sendmail -bt` (/canon, /parse) and `sendmail -bv` / `-odq` / `-q` are run
as a sysadmin would.
"""
import os
import socket
import subprocess
import threading

import pytest

from conftest import unavailable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CF = os.path.join(REPO, "pysendmail", "data", "sendmail.cf")

ZONE = {
    ("mail.example.test.", "A"): "192.0.2.1",
    ("real.example.test.", "A"): "192.0.2.2",
    ("alias.example.test.", "CNAME"): "real.example.test.",
    ("mxonly.example.test.", "MX"): "10 real.example.test.",
    ("1.2.0.192.in-addr.arpa.", "PTR"): "mail.example.test.",
}


class LoopbackDns:
    """An authoritative UDP DNS server for ZONE; `broken` names get SERVFAIL."""

    def __init__(self):
        import dns.message  # noqa: F401  (fail early if dnspython is missing)
        if os.geteuid() != 0:
            unavailable("binding port 53 on loopback needs root")
        self.sock = None
        for n in range(2, 250):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.53.0.%d" % n, 53))
            except OSError:
                s.close()
                continue
            self.sock = s
            break
        assert self.sock is not None, "no free 127.53.0.N:53"
        self.address = self.sock.getsockname()[0]
        self.broken = {"fail.example.test."}
        self.queries = []
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def answer(self, request):
        import dns.message
        import dns.rcode
        import dns.rrset
        q = request.question[0]
        name, qtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
        self.queries.append((name, qtype))
        response = dns.message.make_response(request)
        response.flags |= dns.flags.AA
        if name in self.broken:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        target = name
        cname = ZONE.get((name, "CNAME"))
        if cname:
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "CNAME", cname))
            target = cname
        value = ZONE.get((target, qtype))
        if value:
            response.answer.append(dns.rrset.from_text(target, 300, "IN", qtype, value))
        elif not cname and not any(k[0] == target for k in ZONE):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    def serve(self):
        import dns.message
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                request = dns.message.from_wire(data)
            except Exception:       # noqa: BLE001 - not a DNS query: ignore it
                continue
            self.sock.sendto(self.answer(request).to_wire(), peer)

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def dns_server():
    server = LoopbackDns()
    yield server
    server.stop()


class Instance:
    def __init__(self, sm_bin, base, server, switch="hosts dns files", canonify=True,
                 hosts=""):
        self.bin, self.base = sm_bin, str(base)
        etc = os.path.join(self.base, "etc")
        os.makedirs(etc)
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write("nameserver %s\nsearch example.test\noptions timeout:1 attempts:1\n"
                    % server.address)
        self.switch = os.path.join(etc, "service.switch")
        with open(self.switch, "w") as f:
            f.write(switch + "\n")
        self.hosts = os.path.join(etc, "hosts")
        with open(self.hosts, "w") as f:
            f.write("127.0.0.1 localhost\n" + hosts)
        with open(SHIPPED_CF) as f:
            cf = f.read()
        if canonify:        # the rule the shipped cf leaves commented (m4's default)
            cf = cf.replace("\n#R$* < @ $* $~P > $*\t$: $1 < @ $[ $2 $3 $] > $4",
                            "\nR$* < @ $* $~P > $*\t$: $1 < @ $[ $2 $3 $] > $4")
            assert "\nR$* < @ $* $~P > $*\t$: $1 < @ $[" in cf
        cf += ("O ServiceSwitchFile=%s\nO HostsFile=%s\nO Timeout.resolver.retrans=1s\n"
               "O Timeout.resolver.retry=1\n" % (self.switch, self.hosts))
        with open(os.path.join(etc, "sendmail.cf"), "w") as f:
            f.write(cf)
        with open(os.path.join(etc, "aliases"), "w") as f:
            f.write("postmaster: root\n")
        self.env = dict(os.environ, PYSENDMAIL_ROOT=self.base)
        self.run(["-bi"], check=0)

    def run(self, args, input=b"", prog="sendmail", check=None):
        p = subprocess.run([os.path.join(self.bin, prog)] + args, input=input,
                           capture_output=True, env=self.env, timeout=60)
        if check is not None:
            assert p.returncode == check, (args, p)
        return p

    def bt(self, *lines, options=()):
        p = self.run(list(options) + ["-bt"], input=("\n".join(lines) + "\n").encode())
        return [ln.lstrip("> ") for ln in p.stdout.decode().splitlines()
                if "getcanonname" in ln or ln.startswith(("mailer ", "> mailer "))]


def test_canon_through_dns_cname_mx_search_and_ptr(sm_bin, tmp_path, dns_server):
    inst = Instance(sm_bin, tmp_path / "i", dns_server)
    assert inst.bt("/canon alias.example.test", "/canon mail", "/canon mxonly.example.test",
                   "/canon nx.example.test", "/canon [192.0.2.1]") == [
        "getcanonname(alias.example.test) returns real.example.test",
        "getcanonname(mail) returns mail.example.test",
        "getcanonname(mxonly.example.test) returns mxonly.example.test",
        "getcanonname(nx.example.test) returns nx.example.test",
        "getcanonname([192.0.2.1]) returns mail.example.test"]
    assert ("alias.example.test.", "A") in dns_server.queries
    assert ("mxonly.example.test.", "MX") in dns_server.queries
    # ResolverOptions: without the search list a short name is not found
    assert inst.bt("/canon mail", options=["-O", "ResolverOptions=-DNSRCH -DEFNAMES"]) == [
        "getcanonname(mail) returns mail"]


def test_switch_order_files_before_dns(sm_bin, tmp_path, dns_server):
    hosts = "192.0.2.9 alias.example.test\n"
    first_files = Instance(sm_bin, tmp_path / "a", dns_server, "hosts files dns", hosts=hosts)
    assert first_files.bt("/canon alias.example.test") == [
        "getcanonname(alias.example.test) returns alias.example.test"]
    first_dns = Instance(sm_bin, tmp_path / "b", dns_server, "hosts dns files", hosts=hosts)
    assert first_dns.bt("/canon alias.example.test") == [
        "getcanonname(alias.example.test) returns real.example.test"]
    dns_server.queries.clear()
    files_only = Instance(sm_bin, tmp_path / "c", dns_server, "hosts files", hosts=hosts)
    assert files_only.bt("/canon real.example.test") == [
        "getcanonname(real.example.test) returns real.example.test"]
    assert dns_server.queries == []          # no DNS when the switch does not say so


def test_routing_canonifies_and_defers_on_server_failure(sm_bin, tmp_path, dns_server):
    inst = Instance(sm_bin, tmp_path / "i", dns_server)
    p = inst.run(["-bv", "user@alias.example.test"], check=0)
    # the canonical name keeps its trailing dot in $@, as with Sendmail's m4 cfs
    assert p.stdout.decode().splitlines() == [
        "user@alias.example.test... deliverable: mailer esmtp, host real.example.test., "
        "user user@real.example.test"]
    # the name server fails: the message is accepted and the address routed again later
    p = inst.run(["-odq", "-oi", "user@fail.example.test"], input=b"Subject: x\n\nx\n",
                 check=0)
    q = inst.run([], prog="mailq", check=0).stdout.decode()
    assert "user@fail.example.test" in q and "Host map lookup failed for now" in q
    inst.run(["-q"], check=0)
    assert "user@fail.example.test" in inst.run([], prog="mailq", check=0).stdout.decode()
    dns_server.broken.clear()
    ZONE[("fail.example.test.", "A")] = "192.0.2.3"
    try:
        inst.run(["-q"], check=0)
    finally:
        del ZONE[("fail.example.test.", "A")]
    from pysendmail.queue.spool import Spool
    spool = Spool(os.path.join(inst.base, "spool", "queue"))
    routed = [(r.mailer, r.host, r.user) for qid, _ in spool.entries()
              for r in spool.load(qid).recipients]
    assert routed == [("esmtp", "fail.example.test.", "user@fail.example.test")]


def test_shipped_cf_asks_no_dns_for_remote_names(sm_bin, tmp_path, dns_server):
    inst = Instance(sm_bin, tmp_path / "i", dns_server, canonify=False)
    dns_server.queries.clear()
    p = inst.run(["-bv", "user@alias.example.test"], check=0)
    assert "mailer esmtp, host alias.example.test, user user@alias.example.test" in \
        p.stdout.decode()
    assert dns_server.queries == []


def test_mx_lookup_in_address_test_mode(sm_bin, tmp_path, dns_server):
    inst = Instance(sm_bin, tmp_path / "i", dns_server)
    p = inst.run(["-bt"], input=b"/mx mxonly.example.test\n/mx mail.example.test\n"
                                b"/mx nx.example.test\n")
    assert p.stdout.decode().split("\n", 2)[2] == (
        "> getmxrr(mxonly.example.test) returns 1 value(s):\n\treal.example.test\n"
        "> getmxrr(mail.example.test) returns 1 value(s):\n\tmail.example.test\n"
        "> getmxrr(nx.example.test) returns -1 value(s):\n> ")

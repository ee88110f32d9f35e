"""SPF (pysendmail.mailauth.spf): the RFC 7208 test suite, and our API around the engine.

The suite is tests/data/spf/rfc7208-tests.yml (the openspf.org suite, release 2014.04, as
pyspf ships it; licence beside it).  Each scenario's `zonedata` is served by a real DNS
server on loopback (dns_helpers.LoopbackDns) and every test of it runs through
check_host() with a Lookup pointed at that server, as one pytest case named
"scenario/test".  The zone is read the way the suite's drivers read it:
  * an SPF (type 99) record is also served as TXT, unless the name has TXT data of its
    own; "TXT: NONE" means no TXT record (and none made from SPF);
  * a name whose list holds TIMEOUT answers the types with records listed before TIMEOUT
    (NONE is no record) and never
    answers any other type (a timeout: SuiteDns below silences single types, which
    LoopbackDns.silent, per name, cannot);
  * TXT strings are octets: the YAML escapes ("\\x80") are the bytes sent; a record of no
    strings (`[]`, illegal on the wire) is served as one empty string.
Expected: `result` (a list: any of them) and, where given, `explanation`, with the local
default explanation set to "DEFAULT" as the suite asks.
"""
import os
import threading

import pytest

from dns_helpers import LoopbackDns, dns_zone  # noqa: F401  (fixture)
from pysendmail.mailauth.dns import Lookup
from pysendmail.mailauth.spf import SpfResult, check_helo, check_host

SUITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "spf",
                     "rfc7208-tests.yml")
TIMEOUT = 1.0

# Suite tests we cannot pass, with the reason (none today).
XFAIL = {}


class SuiteDns(LoopbackDns):
    """LoopbackDns plus the suite's per-type timeouts: {name: types that answer}."""

    def __init__(self):
        self.timeouts = {}
        super().__init__()

    def answer(self, request, transport):
        import dns.rdatatype
        q = request.question[0]
        name, qtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
        answering = self.timeouts.get(name)
        if answering is not None and qtype not in answering:
            with self.lock:
                self.queries.append((name, qtype, transport))
            return None
        return super().answer(request, transport)


def _fqdn(name):
    import dns.name
    return dns.name.from_text(str(name)).to_text().lower()


def _txt(value):
    """Zone-file text of a TXT record from the suite's string or list of strings."""
    strings = [value] if isinstance(value, str) else list(value) or [""]
    out = []
    for s in strings:
        data = s.encode("latin-1")
        for i in range(0, max(len(data), 1), 255):
            out.append('"%s"' % "".join(
                chr(b) if 0x20 <= b < 0x7f and b not in b'"\\' else "\\%03d" % b
                for b in data[i:i + 255]))
    return " ".join(out)


def _rdata(rtype, value):
    if rtype in ("TXT", "SPF"):
        return _txt(value)
    if rtype == "MX":
        return "%d %s" % (int(value[0]), _fqdn(value[1]))
    if rtype in ("PTR", "CNAME"):
        return _fqdn(value)
    return str(value)


def load_zone(server, zonedata):
    """Serve one scenario's zonedata (see the module docstring)."""
    for name, entries in zonedata.items():
        owner = _fqdn(name)
        own_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        answering, timed_out = set(), False
        for entry in entries:
            if entry == "TIMEOUT":
                timed_out = True
                continue
            for rtype, value in entry.items():
                types = [rtype] + (["TXT"] if rtype == "SPF" and not own_txt else [])
                if value == "NONE":         # no record: under TIMEOUT, a timeout
                    continue
                if not timed_out:
                    answering.update(types)
                for t in types:
                    server.add(owner, t, _rdata(rtype, value))
        if timed_out:
            server.timeouts[owner] = answering


def _slug(text):
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def _suite():
    import yaml
    with open(SUITE, "rb") as f:
        scenarios = list(yaml.safe_load_all(f))
    params = []
    for n, scenario in enumerate(scenarios):
        for name, test in scenario["tests"].items():
            tid = "%s/%s" % (_slug(scenario["description"]), name)
            marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] \
                if name in XFAIL else []
            params.append(pytest.param(n, name, test, id=tid, marks=marks))
    return scenarios, params


SCENARIOS, PARAMS = _suite()


@pytest.fixture(scope="module")
def suite_servers():
    """One SuiteDns per scenario, started when first needed, all stopped at the end."""
    servers = {}

    def get(n):
        if n not in servers:
            server = servers[n] = SuiteDns()
            load_zone(server, SCENARIOS[n]["zonedata"])
        return servers[n]
    yield get
    for server in servers.values():
        server.stop()


def test_suite_is_complete():
    assert len(SCENARIOS) == 16
    assert len(PARAMS) == 203
    assert len({p.id for p in PARAMS}) == 203


@pytest.mark.parametrize("scenario,name,test", PARAMS)
def test_rfc7208_suite(suite_servers, scenario, name, test):
    server = suite_servers(scenario)
    lookup = Lookup(nameservers=[server.address], port=server.port, timeout=TIMEOUT)
    got = check_host(test["host"], test["mailfrom"], test["helo"], lookup,
                     default_explanation="DEFAULT")
    expected = test["result"] if isinstance(test["result"], list) else [test["result"]]
    assert got.result in expected, (got.result, got.problem, test.get("description"))
    if "explanation" in test:
        assert got.explanation == test["explanation"]


# -- our API around the engine ------------------------------------------------------------


def _lookup(server):
    return Lookup(nameservers=[server.address], port=server.port, timeout=TIMEOUT)


def test_pass_reports_domain_mechanism_and_comment(dns_zone):
    dns_zone.add("example.test", "TXT", '"v=spf1 ip4:192.0.2.0/24 -all"')
    r = check_host("192.0.2.7", "alice@example.test", "mx.peer.test", _lookup(dns_zone),
                   receiver="mx.local.test")
    assert isinstance(r, SpfResult)
    assert (r.result, r.domain, r.mechanism) == ("pass", "example.test", "ip4:192.0.2.0/24")
    assert r.smtp_comment == "domain of example.test designates 192.0.2.7 as permitted sender"
    assert r.explanation is None and r.problem is None and r.identity == "mailfrom"
    assert r.received_spf.startswith("Pass (mx.local.test: domain of example.test")
    assert "envelope-from=\"alice@example.test\";" in r.received_spf
    assert r.received_spf.endswith("identity=mailfrom")
    assert dns_zone.asked("example.test", "TXT")


def test_fail_gives_the_domains_explanation_with_macros(dns_zone):
    dns_zone.add("example.test", "TXT", '"v=spf1 mx -all exp=why.example.test"')
    dns_zone.add("example.test", "MX", "10 mx.example.test.")
    dns_zone.add("mx.example.test", "A", "192.0.2.1")
    dns_zone.add("why.example.test", "TXT", '"%{i} may not send for %{d} (%{l}) to %{r}"')
    lookup = _lookup(dns_zone)
    r = check_host("198.51.100.9", "<bob@example.test>", "h.test", lookup,
                   receiver="mx.local.test")
    assert (r.result, r.mechanism) == ("fail", "-all")
    assert r.explanation == "198.51.100.9 may not send for example.test (bob) to mx.local.test"
    assert r.smtp_comment == \
        "domain of example.test does not designate 198.51.100.9 as permitted sender"
    assert check_host("192.0.2.1", "bob@example.test", "h.test", lookup).mechanism == "mx"
    dns_zone.add("plain.test", "TXT", '"v=spf1 -all"')
    assert check_host("192.0.2.1", "x@plain.test", "h", lookup).explanation == \
        "SPF fail - not authorized"
    assert check_host("192.0.2.1", "x@plain.test", "h", lookup,
                      default_explanation="see https://local/spf").explanation == \
        "see https://local/spf"


def test_null_sender_is_checked_as_postmaster_at_helo(dns_zone):
    dns_zone.add("helo.test", "TXT", '"v=spf1 a -all"')
    dns_zone.add("helo.test", "A", "192.0.2.5")
    dns_zone.add("why.helo.test", "TXT", '"%{l}"')
    lookup = _lookup(dns_zone)
    for sender in ("", "<>"):
        r = check_host("192.0.2.5", sender, "helo.test", lookup)
        assert (r.result, r.domain, r.identity, r.sender) == \
            ("pass", "helo.test", "helo", "postmaster@helo.test")
        assert "envelope-from" not in r.received_spf
    r = check_helo("192.0.2.6", "helo.test", lookup)
    assert (r.result, r.domain, r.identity) == ("fail", "helo.test", "helo")
    assert check_helo("192.0.2.5", "helo.test", lookup).result == "pass"


def test_malformed_domains_are_none_without_a_query(dns_zone):
    lookup = _lookup(dns_zone)
    for helo in ("A2345678", "[192.0.2.1]", "", "a..b.test", "x" * 64 + ".test"):
        r = check_helo("192.0.2.1", helo, lookup)
        assert r.result == "none", helo
        assert r.received_spf.startswith("None (localhost: ")
    assert check_host("192.0.2.1", "u@[192.0.2.1]", "h.test", lookup).result == "none"
    assert dns_zone.queries == [] and lookup.lookups == 0


def test_no_record_none_servfail_temperror_bad_ip_permerror(dns_zone):
    dns_zone.add("norecord.test", "TXT", '"some other text"')
    dns_zone.add("broken.test", "TXT", '"v=spf1 -all"')
    dns_zone.servfail.add("broken.test")
    lookup = _lookup(dns_zone)
    r = check_host("192.0.2.1", "u@norecord.test", "h.test", lookup)
    assert (r.result, r.mechanism) == ("none", None)
    assert check_host("192.0.2.1", "u@nxdomain.test", "h.test", lookup).result == "none"
    r = check_host("192.0.2.1", "u@broken.test", "h.test", lookup)
    assert r.result == "temperror" and "broken.test" in r.problem
    assert r.received_spf.startswith("TempError (")
    r = check_host("not-an-ip", "u@norecord.test", "h.test", lookup)
    assert r.result == "permerror" and "not-an-ip" in r.problem
    assert r.received_spf.startswith("PermError (")


def test_rfc_limits(dns_zone):
    # 10 DNS-querying terms pass, the 11th is a permerror
    chain = ["inc%d.test" % i for i in range(12)]
    for i, name in enumerate(chain[:-1]):
        dns_zone.add(name, "TXT", '"v=spf1 include:%s -all"' % chain[i + 1])
    dns_zone.add(chain[-1], "TXT", '"v=spf1 +all"')
    dns_zone.add("ten.test", "TXT", '"v=spf1 include:inc2.test -all"')
    lookup = _lookup(dns_zone)
    assert check_host("192.0.2.1", "u@ten.test", "h.test", lookup).result == "pass"
    r = check_host("192.0.2.1", "u@inc0.test", "h.test", lookup)
    assert r.result == "permerror" and "DNS lookups" in r.problem
    # two void lookups are allowed, the third is a permerror
    dns_zone.add("void2.test", "TXT", '"v=spf1 a:no1.test a:no2.test +all"')
    dns_zone.add("void3.test", "TXT", '"v=spf1 a:no1.test a:no2.test a:no3.test +all"')
    assert check_host("192.0.2.1", "u@void2.test", "h.test", lookup).result == "pass"
    r = check_host("192.0.2.1", "u@void3.test", "h.test", lookup)
    assert r.result == "permerror" and "Void lookup" in r.problem
    # more than 10 MX names: permerror
    dns_zone.add("mx10.test", "TXT", '"v=spf1 mx +all"')
    dns_zone.add("mx11.test", "TXT", '"v=spf1 mx +all"')
    for i in range(11):
        dns_zone.add("mx%d.host.test" % i, "A", "192.0.2.%d" % (100 + i))
        dns_zone.add("mx11.test", "MX", "%d mx%d.host.test." % (i, i))
        if i < 10:
            dns_zone.add("mx10.test", "MX", "%d mx%d.host.test." % (i, i))
    assert check_host("192.0.2.109", "u@mx10.test", "h.test", lookup).result == "pass"
    assert check_host("192.0.2.109", "u@mx11.test", "h.test", lookup).result == "permerror"


def test_ptr_dns_errors_skip_instead_of_temperror(dns_zone):
    """RFC 7208 5.5: a DNS error on the PTR lookup is no match; one on a PTR name's
    address lookup skips that name and the search goes on."""
    dns_zone.add("ptr.test", "TXT", '"v=spf1 ptr -all"')
    dns_zone.add("10.2.0.192.in-addr.arpa", "PTR", "bad.ptr.test.", "good.ptr.test.")
    dns_zone.add("good.ptr.test", "A", "192.0.2.10")
    dns_zone.add("bad.ptr.test", "A", "192.0.2.10")
    dns_zone.servfail.add("bad.ptr.test")
    dns_zone.add("11.2.0.192.in-addr.arpa", "PTR", "good.ptr.test.")
    dns_zone.servfail.add("11.2.0.192.in-addr.arpa")
    lookup = _lookup(dns_zone)
    r = check_host("192.0.2.10", "u@ptr.test", "h.test", lookup)
    assert (r.result, r.mechanism) == ("pass", "ptr")
    assert dns_zone.asked("bad.ptr.test", "A")
    r = check_host("192.0.2.11", "u@ptr.test", "h.test", lookup)
    assert (r.result, r.mechanism) == ("fail", "-all")


def test_pyspf_used_directly_asks_no_resolver(dns_zone):
    """Once our dispatcher is in, pyspf outside check_host() gets temperror instead of
    querying the system's resolver."""
    import spf
    dns_zone.add("example.test", "TXT", '"v=spf1 +all"')
    assert check_host("192.0.2.1", "u@example.test", "h.test", _lookup(dns_zone)).result \
        == "pass"
    dns_zone.clear()
    assert spf.query(i="192.0.2.1", s="u@example.test", h="h.test").check()[0] == \
        "temperror"
    assert dns_zone.queries == []


def test_answers_are_cached_across_checks(dns_zone):
    dns_zone.add("example.test", "TXT", '"v=spf1 a:host.example.test -all"')
    dns_zone.add("host.example.test", "A", "192.0.2.1")
    lookup = _lookup(dns_zone)
    assert check_host("192.0.2.1", "u@example.test", "h.test", lookup).result == "pass"
    asked = lookup.lookups
    assert asked == 2 and len(dns_zone.queries) == 2
    assert check_host("192.0.2.1", "v@example.test", "h.test", lookup).result == "pass"
    assert check_host("192.0.2.2", "v@example.test", "h.test", lookup).result == "fail"
    assert lookup.lookups == asked and len(dns_zone.queries) == 2


def test_threads_each_use_their_own_lookup():
    """Two resolvers that disagree, used from several threads at once: every check sees
    its own resolver's zone (pyspf's DNS hook is module-wide; ours dispatches per
    thread)."""
    good, bad = LoopbackDns(), LoopbackDns()
    try:
        good.add("example.test", "TXT", '"v=spf1 a:host.example.test -all"')
        good.add("host.example.test", "A", "192.0.2.1")
        bad.add("example.test", "TXT", '"v=spf1 -all"')
        lookups = {"pass": _lookup(good), "fail": _lookup(bad)}
        errors, barrier = [], threading.Barrier(4)

        def work(expect):
            barrier.wait(5)
            for i in range(15):
                # fresh Lookups too, so answers come from the wire, not the cache
                lookup = lookups[expect] if i % 2 else \
                    _lookup(good if expect == "pass" else bad)
                r = check_host("192.0.2.1", "u%d@example.test" % i, "h.test", lookup)
                if r.result != expect:
                    errors.append((expect, r.result, r.problem))
        threads = [threading.Thread(target=work, args=(e,))
                   for e in ("pass", "fail", "pass", "fail")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert good.queries and bad.queries
    finally:
        good.stop()
        bad.stop()

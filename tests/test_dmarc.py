"""DMARC (RFC 7489) evaluation and the public suffix list, against a real DNS server on
loopback (tests/dns_helpers.py): alignment (strict and relaxed, subdomains, multi-label
public suffixes), policy discovery at the From domain then the organizational domain,
p/sp/pct, missing, multiple and invalid records, temporary DNS failures, and the
RFC5322.From domain of a message."""
import os

import pytest

from conftest import unavailable
from dns_helpers import dns_zone  # noqa: F401  (fixture)
from pysendmail.mailauth import dmarc, psl
from pysendmail.mailauth.dns import Lookup

SYSTEM_PSL = "/usr/share/publicsuffix/public_suffix_list.dat"


class Dkim:
    """What a DKIM check hands DMARC: a result and the signature's d=."""

    def __init__(self, result, domain):
        self.result, self.domain = result, domain


def never():
    raise AssertionError("pct sampling asked for a random number it does not need")


@pytest.fixture
def zone(dns_zone):             # noqa: F811
    if not os.path.exists(SYSTEM_PSL):
        unavailable("Debian's publicsuffix package is not installed")
    return dns_zone


def lookup_for(server):
    return Lookup(nameservers=[server.address], port=server.port, timeout=2)


def run(server, from_domain, spf=("none", None), dkim=(), rng=never):
    return dmarc.evaluate(from_domain, spf[0], spf[1], [Dkim(*d) for d in dkim],
                          lookup_for(server), rng=rng)


# -- alignment ------------------------------------------------------------------------

def test_aligned_dkim_pass(zone):
    zone.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=reject"')
    r = run(zone, "example.com", spf=("fail", "example.com"),
            dkim=[("fail", "example.com"), ("pass", "example.com")])
    assert (r.result, r.aligned_dkim, r.aligned_spf) == ("pass", True, False)
    assert (r.requested_policy, r.policy, r.disposition) == ("reject", "reject", "none")
    assert r.record == "v=DMARC1; p=reject" and r.record_domain == "example.com"
    assert r.header_from == "example.com" and r.org_domain == "example.com"


def test_aligned_spf_pass_relaxed_by_default(zone):
    zone.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=reject"')
    r = run(zone, "example.com", spf=("pass", "bounces.example.com"),
            dkim=[("pass", "esp.example.net")])
    assert (r.result, r.aligned_spf, r.aligned_dkim) == ("pass", True, False)
    assert r.disposition == "none"


def test_unaligned_passes_fail_and_get_the_policy(zone):
    zone.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=reject"')
    r = run(zone, "example.com", spf=("pass", "esp.example.net"),
            dkim=[("pass", "esp.example.net"), ("pass", "example.com.evil.test")])
    assert (r.result, r.aligned_spf, r.aligned_dkim) == ("fail", False, False)
    assert (r.requested_policy, r.policy, r.disposition) == ("reject", "reject", "reject")


def test_aligned_domains_that_did_not_pass_do_not_count(zone):
    zone.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=quarantine"')
    r = run(zone, "example.com", spf=("softfail", "example.com"),
            dkim=[("fail", "example.com"), ("temperror", "example.com"),
                  ("neutral", "example.com")])
    assert r.result == "fail" and r.disposition == "quarantine"


def test_strict_and_relaxed_alignment_of_a_subdomain_from(zone):
    # mail.example.com has no record: the one at example.com applies (no sp=: p=)
    zone.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=reject"')
    zone.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject; adkim=s; aspf=r"')
    zone.add("_dmarc.example.net", "TXT", '"v=DMARC1; p=reject; adkim=r; aspf=s"')
    sig = [("pass", "example.com")]
    relaxed = run(zone, "mail.example.com", dkim=sig)
    assert relaxed.result == "pass" and relaxed.aligned_dkim
    assert relaxed.record_domain == "example.com" and relaxed.org_domain == "example.com"
    # the reverse (org-domain From, subdomain signature) is aligned too when relaxed
    assert run(zone, "example.com", dkim=[("pass", "sub.example.com")]).result == "pass"

    strict = run(zone, "mail.example.org", dkim=[("pass", "example.org")])
    assert strict.result == "fail" and strict.disposition == "reject"
    # strict DKIM, relaxed SPF: the SPF side still aligns with the org domain
    mixed = run(zone, "mail.example.org", spf=("pass", "example.org"),
                dkim=[("pass", "example.org")])
    assert (mixed.result, mixed.aligned_spf, mixed.aligned_dkim) == ("pass", True, False)
    # strict is an exact match, case and trailing dot aside
    exact = run(zone, "Mail.Example.ORG", dkim=[("pass", "mail.example.org.")])
    assert exact.result == "pass" and exact.header_from == "mail.example.org"

    spf_strict = run(zone, "example.net", spf=("pass", "bounce.example.net"))
    assert spf_strict.result == "fail" and not spf_strict.aligned_spf
    assert run(zone, "example.net", spf=("pass", "example.net")).result == "pass"
    assert run(zone, "example.net", dkim=[("pass", "x.example.net")]).result == "pass"


def test_multi_label_public_suffix(zone):
    zone.add("_dmarc.example.co.uk", "TXT", '"v=DMARC1; p=reject; sp=quarantine"')
    # another organization under the same public suffix is not aligned
    r = run(zone, "mail.shop.example.co.uk", dkim=[("pass", "other.co.uk")],
            spf=("pass", "co.uk"))
    assert r.org_domain == "example.co.uk" and r.record_domain == "example.co.uk"
    assert r.result == "fail" and r.requested_policy == "quarantine"
    ok = run(zone, "mail.shop.example.co.uk", dkim=[("pass", "news.example.co.uk")])
    assert ok.result == "pass"
    # the public suffix itself is never asked for a policy
    assert zone.asked("_dmarc.co.uk") == [] and zone.asked("_dmarc.shop.example.co.uk") == []
    assert zone.asked("_dmarc.mail.shop.example.co.uk")


def test_internationalized_from_domain_is_asked_in_a_label_form(zone):
    zone.add("_dmarc.xn--bcher-kva.example", "TXT", '"v=DMARC1; p=reject"')
    r = run(zone, "Mail.Bücher.example", dkim=[("pass", "xn--bcher-kva.example")])
    assert (r.result, r.header_from, r.record_domain) == \
        ("pass", "mail.xn--bcher-kva.example", "xn--bcher-kva.example")
    assert run(zone, "bücher.example", dkim=[("pass", "other.example")]).disposition == \
        "reject"
    assert dmarc.from_domain(["From: a@bücher.example".encode()]) == "xn--bcher-kva.example"


# -- policy discovery -----------------------------------------------------------------

def test_policy_discovery_at_the_org_domain_sp_for_subdomains(zone):
    zone.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=reject; sp=quarantine"')
    zone.add("_dmarc.own.example.com", "TXT", '"v=DMARC1; p=none"')
    sub = run(zone, "a.b.example.com", dkim=[("pass", "elsewhere.test")])
    assert (sub.result, sub.requested_policy, sub.disposition) == \
        ("fail", "quarantine", "quarantine")
    assert sub.record_domain == "example.com" and sub.org_domain == "example.com"
    # the From domain, then the organizational domain: no walk through b.example.com
    assert zone.asked("_dmarc.a.b.example.com") and zone.asked("_dmarc.example.com")
    assert zone.asked("_dmarc.b.example.com") == []
    # at the organizational domain itself p= applies
    org = run(zone, "example.com")
    assert (org.result, org.requested_policy, org.disposition) == ("fail", "reject", "reject")
    # a subdomain with its own record uses that record's p=, not the parent's sp=
    own = run(zone, "own.example.com")
    assert (own.result, own.requested_policy, own.record_domain) == \
        ("fail", "none", "own.example.com")
    assert own.disposition == "none"


def test_pct_sampling_with_a_fixed_rng(zone):
    for name, pct in (("p0", "0"), ("p50", "50"), ("p100", "100"), ("q0", "0")):
        policy = "quarantine" if name.startswith("q") else "reject"
        zone.add("_dmarc.%s.example" % name, "TXT",
                 '"v=DMARC1; p=%s; pct=%s"' % (policy, pct))

    def fixed(value):
        calls = []

        def rng():
            calls.append(value)
            return value
        rng.calls = calls
        return rng

    r = run(zone, "p0.example", rng=fixed(0.0))
    assert (r.requested_policy, r.policy, r.disposition) == \
        ("reject", "quarantine", "quarantine")
    r = run(zone, "q0.example", rng=fixed(0.0))
    assert (r.requested_policy, r.policy, r.disposition) == ("quarantine", "none", "none")
    inside, outside = fixed(0.49), fixed(0.5)
    assert run(zone, "p50.example", rng=inside).disposition == "reject"
    assert run(zone, "p50.example", rng=outside).disposition == "quarantine"
    assert inside.calls == [0.49] and outside.calls == [0.5]
    last = fixed(0.999999)
    r = run(zone, "p100.example", rng=last)
    assert (r.policy, r.disposition, r.pct) == ("reject", "reject", 100)
    # a passing message is never sampled (never() raises if asked)
    assert run(zone, "p50.example", dkim=[("pass", "p50.example")]).result == "pass"


def test_no_record_is_none(zone):
    zone.add("_dmarc.spf-only.example", "TXT", '"v=spf1 -all"')
    zone.add("spf-only.example", "TXT", '"v=DMARC1; p=reject"')   # wrong name: ignored
    for domain in ("nothing.example", "spf-only.example", "sub.nothing.example"):
        r = run(zone, domain, dkim=[("pass", "other.example")])
        assert (r.result, r.requested_policy, r.disposition, r.record) == \
            ("none", "none", "none", None), domain


def test_multiple_records_mean_no_policy(zone):
    zone.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=reject"')
    zone.add("_dmarc.two.example.com", "TXT", '"v=DMARC1; p=reject"',
             '"v=DMARC1; p=quarantine"', '"some other text"')
    r = run(zone, "two.example.com")
    assert (r.result, r.disposition) == ("none", "none")
    assert "2 DMARC records" in r.reason
    assert zone.asked("_dmarc.example.com") == []       # discovery stops there
    # a non-DMARC TXT beside one record does not count
    zone.add("_dmarc.one.example.com", "TXT", '"v=DMARC1; p=quarantine"', '"hello"')
    assert run(zone, "one.example.com").disposition == "quarantine"


def test_split_txt_strings_are_joined(zone):
    zone.add("_dmarc.example.com", "TXT", '"v=DMARC1; " "p=reject; rua=mailto:d@example.com"')
    r = run(zone, "example.com")
    assert r.disposition == "reject"
    assert r.record == "v=DMARC1; p=reject; rua=mailto:d@example.com"


def test_servfail_is_temperror(zone):
    zone.servfail.add("_dmarc.broken.example")
    r = run(zone, "broken.example", dkim=[("pass", "broken.example")])
    assert (r.result, r.disposition) == ("temperror", "none")
    # a failure at the second step (the organizational domain) too
    zone.servfail.add("_dmarc.example.com")
    r = run(zone, "mail.example.com")
    assert r.result == "temperror" and r.org_domain == "example.com"
    assert zone.asked("_dmarc.mail.example.com")


def test_invalid_records(zone):
    records = {
        "nop": "v=DMARC1; sp=reject",                                  # no p=, no rua=
        "badp": "v=DMARC1; p=block",
        "badsp": "v=DMARC1; p=reject; sp=nope",
        "rua": "v=DMARC1; rua=mailto:reports@rua.example",             # no p=, rua=
        "ruabadp": "v=DMARC1; p=drop; rua=mailto:reports@rua.example",
        "defaults": "v=DMARC1; p=Reject; pct=150; adkim=x; aspf=; foo=bar; ;",
        "notfirst": "p=reject; v=DMARC1",
        "version": "v=DMARC2; p=reject",
        "nosemi": "v=DMARC1 p=reject",
    }
    for name, text in records.items():
        zone.add("_dmarc.%s.example" % name, "TXT", '"%s"' % text)
    for name in ("nop", "badp", "badsp"):
        r = run(zone, "%s.example" % name)
        assert (r.result, r.disposition, r.requested_policy) == \
            ("permerror", "none", "none"), name
        assert r.record == records[name]
    for name in ("rua", "ruabadp"):                 # 6.6.3 step 6: as if p=none
        r = run(zone, "%s.example" % name)
        assert (r.result, r.requested_policy, r.disposition) == ("fail", "none", "none")
        assert run(zone, "%s.example" % name,
                   dkim=[("pass", "%s.example" % name)]).result == "pass"
    # syntax errors elsewhere fall back to the defaults: pct=100, relaxed alignment
    r = run(zone, "defaults.example", dkim=[("pass", "x.defaults.example")])
    assert r.result == "pass"
    r = run(zone, "defaults.example")
    assert (r.result, r.disposition, r.pct) == ("fail", "reject", 100)
    # records not starting with v=DMARC1 are no records at all
    for name in ("notfirst", "version", "nosemi"):
        assert run(zone, "%s.example" % name).result == "none", name


def test_malformed_and_several_from_domains(zone):
    zone.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=reject"')
    zone.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=quarantine"')
    for bad in (None, [], "", "not a domain", "a..example.com", "-x.example"):
        r = run(zone, bad)
        assert (r.result, r.disposition) == ("permerror", "none"), bad
    # 6.6.1: several domains, the strictest failing policy wins
    r = run(zone, ["example.org", "example.com"], dkim=[("pass", "example.org")])
    assert (r.result, r.disposition, r.header_from) == ("fail", "reject", "example.com")
    assert [p.result for p in r.parts] == ["pass", "fail"]
    r = run(zone, ["example.org", "example.com"])
    assert (r.result, r.disposition) == ("fail", "reject")
    r = run(zone, ["example.org", "Example.ORG."], dkim=[("pass", "example.org")])
    assert r.result == "pass" and r.parts == []          # one distinct domain
    r = run(zone, ["example.org", "example.com"],
            dkim=[("pass", "example.org"), ("pass", "example.com")])
    assert r.result == "pass" and len(r.parts) == 2


# -- the RFC5322.From domain ----------------------------------------------------------

def test_from_domain_of_messages_and_header_lists():
    msg = (b"Received: from x\r\nFrom: \"Smith, J@ne\" <jane@Mail.Example.COM>\r\n"
           b"To: a@b.example\r\n\r\nFrom: body@evil.example\r\n")
    assert dmarc.from_domain(msg) == "mail.example.com"
    assert dmarc.from_domains(msg) == ["mail.example.com"]
    folded = b"Subject: x\nFrom: Jane\n  Doe <jane@example.org>\nTo: y@z.example\n\nbody\n"
    assert dmarc.from_domain(folded) == "example.org"
    headers = [b"Subject: hi", b"from:   jane@example.net  (Jane)", b"To: x@y.example"]
    assert dmarc.from_domain(headers) == "example.net"
    assert dmarc.from_domain(["From : old@obsolete.example"]) == "obsolete.example"
    same = [b"From: a@example.com, b@EXAMPLE.com"]
    assert dmarc.from_domain(same) == "example.com"
    two = [b"From: a@example.com, b@example.org"]
    assert dmarc.from_domain(two) is None
    assert dmarc.from_domains(two) == ["example.com", "example.org"]
    fields = [b"From: a@example.com", b"From: b@example.org"]
    assert dmarc.from_domain(fields) is None
    assert dmarc.from_domains(fields) == ["example.com", "example.org"]
    for bad in ([b"From: nobody"], [b"From: <>"], [b"From: x@[192.0.2.1]"],
                [b"Subject: no from"], [], b"", b"Subject: x\r\n\r\nFrom: a@b.example\r\n",
                [b"From: a@example.com", b"From: junk"], [b"From: @example.com"]):
        assert dmarc.from_domain(bad) is None, bad
        assert dmarc.from_domains(bad) == [], bad


# -- the public suffix list -----------------------------------------------------------

def test_org_domain_from_the_system_list():
    if not os.path.exists(SYSTEM_PSL):
        unavailable("Debian's publicsuffix package is not installed")
    cases = {
        "mail.example.co.uk": ("co.uk", "example.co.uk"),
        "example.co.uk": ("co.uk", "example.co.uk"),
        "co.uk": ("co.uk", "co.uk"),
        "a.b.example.com": ("com", "example.com"),
        "EXAMPLE.COM.": ("com", "example.com"),
        "x.y.unknowntld": ("unknowntld", "y.unknowntld"),
        "foo.bar.ck": ("bar.ck", "foo.bar.ck"),             # *.ck
        "a.www.ck": ("ck", "www.ck"),                        # !www.ck
        "a.b.city.kawasaki.jp": ("kawasaki.jp", "city.kawasaki.jp"),
    }
    for name, (suffix, org) in cases.items():
        assert (psl.public_suffix(name), psl.org_domain(name)) == (suffix, org), name
    assert psl.org_domain("a..b") is None and psl.org_domain("") is None
    assert psl.PublicSuffixList.load().complete


def test_psl_rules_wildcards_exceptions_and_fallback(tmp_path):
    path = tmp_path / "psl.dat"
    path.write_text("// comment\n\ncom\nuk\nco.uk\n*.wild.test\n!keep.wild.test\n"
                    "test\n// ===BEGIN PRIVATE DOMAINS===\nhost.example.com\n"
                    "公司.cn\ncn\n", encoding="utf-8")
    lst = psl.PublicSuffixList.load(str(path))
    assert lst is psl.PublicSuffixList.load(str(path))      # cached
    assert lst.org_domain("a.b.host.example.com") == "b.host.example.com"
    assert lst.org_domain("a.example.com") == "example.com"
    assert lst.org_domain("x.y.z.wild.test") == "y.z.wild.test"
    assert lst.public_suffix("z.wild.test") == "z.wild.test"
    assert lst.org_domain("a.keep.wild.test") == "keep.wild.test"
    assert lst.org_domain("wild.test") == "wild.test"
    assert lst.org_domain("a.b.公司.cn") == "b.公司.cn"
    assert lst.org_domain("a.b.xn--55qx5d.cn") == "b.xn--55qx5d.cn"
    # no file: RFC 7489's rule of thumb, the last two labels (wrong for co.uk)
    missing = psl.PublicSuffixList.load(str(tmp_path / "absent.dat"))
    assert not missing.complete
    assert missing.org_domain("mail.example.co.uk") == "co.uk"
    assert missing.org_domain("a.b.example.com") == "example.com"
    # a DMARC check can be told which list to use
    assert dmarc.aligned("a.example.co.uk", "b.example.co.uk", "r", psl=lst)
    assert not dmarc.aligned("a.example.co.uk", "b.other.co.uk", "r", psl=lst)
    assert dmarc.aligned("a.example.co.uk", "b.other.co.uk", "r", psl=missing)

"""ARC (RFC 8617) verification and sealing (pysendmail.mailauth.arc over dkimpy), with
the sealers' public keys served by a real DNS server on loopback: chains of one and two
hops sealed by dkimpy itself, tampering after sealing, no chain, our own seal() output,
cv=fail chains, temporary DNS failures and malformed ARC sets."""
import base64

import pytest

from dns_helpers import dns_zone  # noqa: F401  (fixture)
from pysendmail.mailauth import arc
from pysendmail.mailauth.dns import Lookup

MESSAGE = (b"Received: from client.example.com (client.example.com [192.0.2.7])\r\n"
           b"\tby mx.hop1.example; Thu, 1 Feb 2024 10:00:00 +0000\r\n"
           b"From: Jane <jane@example.com>\r\n"
           b"To: list@hop1.example\r\n"
           b"Subject: the quarterly figures\r\n"
           b"Date: Thu, 1 Feb 2024 09:59:00 +0000\r\n"
           b"Message-ID: <figures@example.com>\r\n"
           b"\r\n"
           b"Numbers are up.\r\n"
           b"See you.\r\n")


def _key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
    pkcs8 = key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return pkcs1, pkcs8, base64.b64encode(spki).decode("ascii")


@pytest.fixture(scope="module")
def keys():
    return {"hop1.example": _key(), "hop2.example": _key(), "us.example": _key()}


@pytest.fixture
def zone(dns_zone, keys):       # noqa: F811
    for domain, (_pkcs1, _pkcs8, public) in keys.items():
        record = "v=DKIM1; k=rsa; p=" + public
        chunks = " ".join('"%s"' % record[i:i + 200] for i in range(0, len(record), 200))
        dns_zone.add("sel._domainkey." + domain, "TXT", chunks)
    return dns_zone


def lookup_for(server):
    return Lookup(nameservers=[server.address], port=server.port, timeout=2)


def dkimpy_hop(message, domain, keys, results):
    """What a forwarder running dkimpy does: add its Authentication-Results, then
    prepend the ARC set dkimpy computes."""
    import dkim
    ar = b"Authentication-Results: " + domain.encode() + b"; " + results + b"\r\n"
    message = ar + message
    fields = dkim.arc_sign(message, b"sel", domain.encode(), keys[domain][0],
                           domain.encode(), timestamp=1706781600)
    assert len(fields) == 3
    return b"".join(fields) + message


def our_hop(message, domain, keys, results, key_index=0):
    ar = "%s; %s" % (domain, results)
    fields = arc.seal(message, "sel", domain, keys[domain][key_index], domain,
                      "Authentication-Results: " + ar, timestamp=1706781700)
    return b"".join(f.replace(b"\n", b"\r\n") + b"\r\n" for f in fields) + \
        b"Authentication-Results: " + ar.encode() + b"\r\n" + message, fields


def test_no_arc_headers_is_none(zone):
    r = arc.verify(MESSAGE, lookup_for(zone))
    assert (r.result, r.chain_length) == ("none", 0)
    assert zone.queries == []
    # a header block dkimpy cannot parse, without ARC fields, is still "none"
    assert arc.verify(b" folded first\r\nFrom: a@b.example\r\n\r\nx\r\n",
                      lookup_for(zone)).result == "none"


def test_one_and_two_dkimpy_hops_pass(zone, keys):
    one = dkimpy_hop(MESSAGE, "hop1.example", keys, b"spf=pass smtp.mailfrom=example.com")
    r = arc.verify(one, lookup_for(zone))
    assert (r.result, r.chain_length, r.temporary) == ("pass", 1, False), r.reason
    assert r.domains == ["hop1.example"]
    assert zone.asked("sel._domainkey.hop1.example", "TXT")

    two = dkimpy_hop(one, "hop2.example", keys, b"arc=pass; dkim=none")
    r = arc.verify(two, lookup_for(zone))
    assert (r.result, r.chain_length) == ("pass", 2), r.reason
    assert r.domains == ["hop1.example", "hop2.example"]
    assert b"cv=pass" in two.split(b"ARC-Message-Signature")[0]
    # LF line ends verify the same
    assert arc.verify(two.replace(b"\r\n", b"\n"), lookup_for(zone)).result == "pass"


def test_tampering_after_sealing_fails(zone, keys):
    one = dkimpy_hop(MESSAGE, "hop1.example", keys, b"spf=pass smtp.mailfrom=example.com")
    two = dkimpy_hop(one, "hop2.example", keys, b"arc=pass")
    for sealed, n in ((one, 1), (two, 2)):
        body = sealed.replace(b"Numbers are up.", b"Numbers are down.")
        r = arc.verify(body, lookup_for(zone))
        assert (r.result, r.chain_length, r.temporary) == ("fail", n, False)
        assert r.domains == []
        subject = sealed.replace(b"the quarterly figures", b"the monthly figures")
        assert arc.verify(subject, lookup_for(zone)).result == "fail"
    # an altered older seal breaks the newest seal's signature over the chain
    old = two.replace(b"spf=pass smtp.mailfrom=example.com",
                      b"spf=pass smtp.mailfrom=example.net")
    assert old != two and arc.verify(old, lookup_for(zone)).result == "fail"
    # a set removed: instance 2 without instance 1
    start = two.index(b"ARC-Seal: i=1")
    end = two.index(b"Authentication-Results: hop1.example")
    assert arc.verify(two[:start] + two[end:], lookup_for(zone)).result == "fail"


def test_our_seal_verifies_first_and_next_hop(zone, keys):
    sealed, fields = our_hop(MESSAGE, "us.example", keys,
                             "spf=pass smtp.mailfrom=example.com; dkim=none")
    assert [f.split(b":")[0] for f in fields] == \
        [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]
    for f in fields:
        assert b"\r" not in f and not f.endswith(b"\n")
        assert all(line[:1] in (b" ", b"\t") for line in f.split(b"\n")[1:])
    assert b"i=1" in fields[0] and b"cv=none" in fields[0]
    assert fields[2].startswith(b"ARC-Authentication-Results: i=1; us.example;")
    r = arc.verify(sealed, lookup_for(zone))
    assert (r.result, r.chain_length, r.domains) == ("pass", 1, ["us.example"]), r.reason

    # our seal as the second hop over a dkimpy chain; a PKCS#8 key works too
    one = dkimpy_hop(MESSAGE, "hop1.example", keys, b"spf=pass smtp.mailfrom=example.com")
    v = arc.verify(one, lookup_for(zone))
    sealed, fields = our_hop(one, "us.example", keys, "arc=%s" % v.result, key_index=1)
    assert b"i=2" in fields[0] and b"cv=pass" in fields[0]
    r = arc.verify(sealed, lookup_for(zone))
    assert (r.result, r.chain_length, r.domains) == \
        ("pass", 2, ["hop1.example", "us.example"]), r.reason
    # and dkimpy's own verifier agrees
    import dkim
    cv, _data, _reason = dkim.arc_verify(
        sealed, dnsfunc=arc.dnsfunc_for(lookup_for(zone)))
    assert cv == dkim.CV_Pass


def test_sealing_a_broken_chain_records_cv_fail(zone, keys):
    one = dkimpy_hop(MESSAGE, "hop1.example", keys, b"spf=pass smtp.mailfrom=example.com")
    broken = one.replace(b"Numbers are up.", b"Numbers are edited by a list.")
    v = arc.verify(broken, lookup_for(zone))
    assert v.result == "fail"
    sealed, fields = our_hop(broken, "us.example", keys, "arc=fail")
    assert b"cv=fail" in fields[0]
    r = arc.verify(sealed, lookup_for(zone))
    assert (r.result, r.chain_length) == ("fail", 2)


def test_forged_auth_results_with_our_id_is_not_copied(zone, keys):
    forged = b"Authentication-Results: us.example; dkim=pass header.d=bank.example\r\n" + MESSAGE
    sealed, fields = our_hop(forged, "us.example", keys, "spf=fail smtp.mailfrom=example.com")
    assert b"bank.example" not in fields[2] and b"spf=fail" in fields[2]
    assert arc.verify(sealed, lookup_for(zone)).result == "pass"


def test_seal_refusals(zone, keys):
    no_from = MESSAGE.replace(b"From: Jane <jane@example.com>\r\n", b"")
    with pytest.raises(arc.ArcSealError):
        arc.seal(no_from, "sel", "us.example", keys["us.example"][0], "us.example",
                 "us.example; spf=pass smtp.mailfrom=example.com")
    with pytest.raises(arc.ArcSealError):
        arc.seal(MESSAGE, "sel", "us.example", b"not a key", "us.example",
                 "us.example; spf=pass smtp.mailfrom=example.com")
    # a chain exists but our results say nothing about it: dkimpy ends the chain
    one = dkimpy_hop(MESSAGE, "hop1.example", keys, b"spf=pass smtp.mailfrom=example.com")
    assert arc.seal(one, "sel", "us.example", keys["us.example"][0], "us.example",
                    "us.example; spf=pass smtp.mailfrom=example.com") == []


def test_dns_failures(zone, keys):
    one = dkimpy_hop(MESSAGE, "hop1.example", keys, b"spf=pass smtp.mailfrom=example.com")
    zone.servfail.add("sel._domainkey.hop1.example")
    r = arc.verify(one, lookup_for(zone))
    assert (r.result, r.temporary) == ("fail", True)
    assert "SERVFAIL" in r.reason or "NoNameservers" in r.reason
    # a key that does not exist is a permanent failure
    gone = one.replace(b"d=hop1.example", b"d=nokey.example")
    r = arc.verify(gone, lookup_for(zone))
    assert (r.result, r.temporary) == ("fail", False)


def test_malformed_chains_fail(zone, keys):
    one = dkimpy_hop(MESSAGE, "hop1.example", keys, b"spf=pass smtp.mailfrom=example.com")
    # a duplicate seal for the same instance
    seal_field = one[:one.index(b"ARC-Message-Signature")]
    r = arc.verify(seal_field + one, lookup_for(zone))
    assert r.result == "fail" and "Duplicate" in r.reason
    # "ARC-Message-Signature:i=1;" is valid, but dkimpy looks for " i=N;" and trips over
    # it (IndexError): a failure, not a crash; then a seal with nothing but garbage
    odd = one.replace(b"ARC-Message-Signature: i=1;", b"ARC-Message-Signature:i=1;")
    assert arc.verify(odd, lookup_for(zone)).result == "fail"
    junk = b"ARC-Seal: i=1; cv=none; a=rsa-sha256; b===;\r\n" + MESSAGE
    assert arc.verify(junk, lookup_for(zone)).result == "fail"
    # RFC 8617 4.2.1: at most 50 instances
    many = b"ARC-Seal: i=51; cv=pass; a=rsa-sha256; d=x.example; s=s; b=AAAA\r\n" + one
    r = arc.verify(many, lookup_for(zone))
    assert (r.result, r.chain_length) == ("fail", 51) and "over 50" in r.reason

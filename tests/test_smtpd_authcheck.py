"""The daemon's inbound authentication checks end to end: `sendmail -bD` of a private
instance whose resolv.conf names a real DNS server on loopback (tests/dns_helpers.py)
holding the senders' SPF, DKIM and DMARC records; messages signed with dkimpy; the
Authentication-Results header read back from the queued control file.
"""
import os
import smtplib

import pytest

from dns_helpers import dns_zone  # noqa: F401  (fixture)
from milter_helpers import MYNAME, write_milter_cf
from smtpd_helpers import SMTPDaemon
from pysendmail.queue import qfile

RCPT = "root@" + MYNAME


@pytest.fixture
def key():
    """An RSA key pair for sel1._domainkey.sender.test: (private PEM, public base64)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    import base64
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(pub).decode()


def txt(value):
    """A TXT value in zone syntax, split in 255-octet strings."""
    return " ".join('"%s"' % value[i:i + 250] for i in range(0, len(value), 250))


def signed(pem, message, domain="sender.test"):
    import dkim
    sig = dkim.sign(message, b"sel1", domain.encode(), pem,
                    include_headers=[b"from", b"to", b"subject", b"date"])
    return sig + message


def message(frm="alice@sender.test", subject="hello", extra=b""):
    return (b"From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: Fri, 27 Nov 2026 00:00:00 +0000\r\n"
            % (frm.encode(), RCPT.encode(), subject.encode()) + extra +
            b"\r\nbody line\r\n")


@pytest.fixture
def zone(dns_zone, key):  # noqa: F811
    dns_zone.require_port_53()
    dns_zone.add("sender.test", "TXT", '"v=spf1 ip4:127.0.0.0/8 -all"')
    dns_zone.add("sel1._domainkey.sender.test", "TXT", txt("v=DKIM1; k=rsa; p=" + key[1]))
    dns_zone.add("_dmarc.sender.test", "TXT", '"v=DMARC1; p=reject"')
    dns_zone.add("strict.test", "TXT", '"v=spf1 -all"')
    dns_zone.add("_dmarc.strict.test", "TXT", '"v=DMARC1; p=reject"')
    return dns_zone


def start(inst, zone, options=None, modifiers=""):
    write_milter_cf(inst, [], options=dict({"AuthChecks": "spf, dkim, arc, dmarc"},
                                           **(options or {})))
    zone.write_resolv_conf(os.path.join(inst.path, "etc", "resolv.conf"))
    return SMTPDaemon(inst, ["-odq"], modifiers=modifiers)


def send(d, sender, msg, helo="client.sender.test"):
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo(helo)
        code, text = s.mail(sender)
        assert code == 250, text
        code, text = s.rcpt(RCPT)
        assert code == 250, text
        code, text = s.data(msg)
        return code, text.decode()


def queued_headers(inst, qid):
    path = os.path.join(inst.path, "spool", "queue", "qf" + qid)
    with open(path, "rb") as f:
        env = qfile.loads(f.read())
    return [h.decode("utf-8", "replace") for h in env.headers]


def auth_results(headers):
    return [" ".join(h.split()) for h in headers if h.lower().startswith("authentication-results:")]


def test_pass_everything_and_header_on_top(sm_root, zone, key):
    d = start(sm_root, zone)
    try:
        code, text = send(d, "alice@sender.test", signed(key[0], message()))
        assert code == 250
        qid = text.split()[1]
        headers = queued_headers(sm_root, qid)
        ar = auth_results(headers)
        assert len(ar) == 1 and headers[0].startswith("Authentication-Results: %s;" % MYNAME)
        assert "spf=pass" in ar[0] and "smtp.mailfrom=alice@sender.test" in ar[0]
        assert "dkim=pass" in ar[0] and "header.d=sender.test" in ar[0]
        assert "dmarc=pass" in ar[0] and "header.from=sender.test" in ar[0]
        assert "arc=none" in ar[0]
    finally:
        d.stop()


def test_failures_are_noted_not_refused_by_default(sm_root, zone, key):
    d = start(sm_root, zone)
    try:
        tampered = signed(key[0], message()).replace(b"body line", b"BODY LINE")
        code, text = send(d, "bob@strict.test", tampered)
        assert code == 250
        ar = auth_results(queued_headers(sm_root, text.split()[1]))[0]
        assert "spf=fail" in ar and "dkim=fail" in ar and "dmarc=fail" in ar
    finally:
        d.stop()


def test_forged_results_claiming_us_are_removed(sm_root, zone, key):
    d = start(sm_root, zone)
    try:
        forged = message(extra=b"Authentication-Results: %s; dkim=pass header.d=bank.test\r\n"
                         b"Authentication-Results: other.test; spf=pass\r\n"
                         % MYNAME.encode())
        code, text = send(d, "alice@sender.test", forged)
        assert code == 250
        ar = auth_results(queued_headers(sm_root, text.split()[1]))
        assert len(ar) == 2
        assert "bank.test" not in " ".join(ar)
        assert any(a.startswith("Authentication-Results: other.test;") for a in ar)
        assert "removed 1 Authentication-Results" in d.log_text()
    finally:
        d.stop()


def test_enforcement_when_asked(sm_root, zone, key):
    d = start(sm_root, zone, {"AuthReject": "spf, dmarc"})
    try:
        code, text = send(d, "bob@strict.test", message(frm="bob@strict.test"))
        assert (code, text.split()[0]) == (550, "5.7.23")
        code, text = send(d, "alice@sender.test",
                          signed(key[0], message()).replace(b"body line", b"other"))
        assert code == 250                      # SPF passes: DMARC passes by SPF alignment
        code, text = send(d, "x@unrelated.test", message())
        assert (code, text.split()[0]) == (550, "5.7.1")
        assert "DMARC" in text
        q = os.path.join(sm_root.path, "spool", "queue")
        assert len([n for n in os.listdir(q) if n.startswith("qf")]) == 1
    finally:
        d.stop()


def test_listener_without_checks(sm_root, zone, key):
    write_milter_cf(sm_root, [], options={"InputMailFilters": "", "AuthChecks": "none"})
    zone.write_resolv_conf(os.path.join(sm_root.path, "etc", "resolv.conf"))
    d = SMTPDaemon(sm_root, ["-odq"])
    try:
        code, text = send(d, "alice@sender.test", message())
        assert code == 250
        assert auth_results(queued_headers(sm_root, text.split()[1])) == []
        assert not [q for q in zone.queries if "sender.test" in q[0]]
    finally:
        d.stop()

"""OpenDKIM (Debian's /usr/sbin/opendkim, unmodified) as a third-party milter of pysendmail.

One OpenDKIM (tests/opendkim_peer.py) in Mode sv: mail from a client in its InternalHosts
(127.0.0.1) with a From in example.test gets signed, mail from anywhere else (127.0.0.2)
gets verified and an Authentication-Results header.  Every key is looked up in OpenDKIM's
TestDNSData file and, for dkimpy, through the key's dnsfunc: no DNS query leaves the test.

* Through our milter chain directly (pysendmail.milter.chain, what the SMTP server runs):
  outbound signing verified by dkimpy (and failing once the body is tampered with);
  inbound dkimpy-signed mail: dkim=pass, a tampered copy dkim=fail, unsigned dkim=none,
  a forged Authentication-Results naming our authserv-id removed.
* End to end through the installed daemon (`sendmail -bD -odq` of a private instance whose
  cf has the X line and O InputMailFilters): the same, read back from the queued qf/df;
  a message without Date/Message-ID (the daemon adds them after the filters, unsigned)
  still verifies; OpenDKIM's log lines carry our queue id (the `i` macro).
"""
import asyncio
import email.utils
import os
import re
import smtplib

import pytest

from conftest import REPO
from opendkim_peer import (AUTHSERV_ID, OUR_DOMAIN, REMOTE_DOMAIN, SELECTOR,  # noqa: F401
                           dkim_key, opendkim, opendkim_factory)
from pysendmail.milter.chain import ACCEPT, MilterChain
from pysendmail.milter.config import MilterSpec
from pysendmail.proto import milter_codec as mc
from smtpd_helpers import queued, read_df, read_qf, wait_for

pytestmark = pytest.mark.peer

CF_SOURCE = os.path.join(REPO, "etc", "sendmail.cf")
MYNAME = "mta.example.test"
INTERNAL, EXTERNAL = "127.0.0.1", "127.0.0.2"


def outbound_message(tag):
    """A message from our domain: a dot-led line, trailing blanks and a blank line in the
    body, which simple body canonicalization keeps byte for byte."""
    return ("From: Sender <sender@%s>\r\n"
            "To: Someone <someone@%s>\r\n"
            "Subject: signed by OpenDKIM (%s)\r\n"
            "Date: %s\r\n"
            "Message-ID: <%s@%s>\r\n"
            "\r\n"
            "Hello, signed world.\r\n"
            ".a line that starts with a dot\r\n"
            "trailing blanks   \r\n"
            "\r\n"
            "last line\r\n" % (OUR_DOMAIN, REMOTE_DOMAIN, tag, email.utils.formatdate(),
                               tag, OUR_DOMAIN)).encode()


def inbound_message(tag):
    """A message from the remote domain, unsigned."""
    return ("From: Remote <remote@%s>\r\n"
            "To: root@localhost\r\n"
            "Subject: inbound (%s)\r\n"
            "Date: %s\r\n"
            "Message-ID: <%s@%s>\r\n"
            "\r\n"
            "Hello from afar.\r\n"
            "..two dots\r\n" % (REMOTE_DOMAIN, tag, email.utils.formatdate(), tag,
                                REMOTE_DOMAIN)).encode()


def tamper(message):
    out = message.replace(b"Hello", b"Jello", 1)
    assert out != message
    return out


FORGED_AR = ("Authentication-Results: %s; dkim=pass header.d=%s header.s=forged\r\n"
             % (AUTHSERV_ID, REMOTE_DOMAIN)).encode()


# ---- message helpers -------------------------------------------------------------------------

def split_message(raw):
    """bytes -> ([(name, value)], body): value as after the colon (leading blank kept,
    folded lines joined with LF), body with LF line ends."""
    raw = raw.replace(b"\r\n", b"\n")
    head, _, body = raw.partition(b"\n\n")
    headers = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            headers[-1][1] += "\n" + line.decode()
        else:
            name, _, value = line.decode().partition(":")
            headers.append([name, value])
    return [tuple(h) for h in headers], body


def join_message(headers, body):
    """([(name, value)], body) -> the message bytes with CRLF line ends."""
    head = "".join("%s:%s\n" % (n, v) for n, v in headers)
    return (head + "\n").replace("\n", "\r\n").encode() + body.replace(b"\r\n", b"\n").replace(
        b"\n", b"\r\n")


def unfold(value):
    return " ".join(value.split())


def values(headers, name):
    return [unfold(v) for n, v in headers if n.lower() == name.lower()]


def sig_tags(value):
    return dict((k.strip(), v.strip()) for k, _, v in
                (t.partition("=") for t in unfold(value).replace(" ", "").split(";") if t))


def assert_signed_by_opendkim(key, headers, body, signed=("from", "to", "subject", "date")):
    """One DKIM-Signature, OpenDKIM's (d=example.test, s=sel1, relaxed/simple, covering at
    least the `signed` fields), that dkimpy verifies against the test key; the same message
    with its body changed fails."""
    sigs = values(headers, "DKIM-Signature")
    assert len(sigs) == 1, headers
    tags = sig_tags(sigs[0])
    assert (tags["d"], tags["s"], tags["c"], tags["a"]) == (
        OUR_DOMAIN, SELECTOR, "relaxed/simple", "rsa-sha256"), tags
    assert set(signed) <= set(tags["h"].lower().split(":")), tags
    raw = join_message(headers, body)
    assert key.verify(raw), raw.decode()
    assert not key.verify(tamper(raw))


def dkim_results(headers):
    """The dkim= results of our authserv-id's Authentication-Results headers."""
    out = []
    for v in values(headers, "Authentication-Results"):
        if v.startswith(AUTHSERV_ID + ";"):
            out += re.findall(r"\bdkim=(\w+)", v)
    return out


# ---- through the milter chain -----------------------------------------------------------------

def chain_session(spec, client_addr, raw, sender, rcpt):
    """One SMTP session's milter calls with OpenDKIM as the only filter, macros as our
    daemon's cf defaults name them; returns the EomResult."""
    headers, body = split_message(raw)

    async def session():
        chain = MilterChain([MilterSpec("opendkim", spec, timeouts={"E": 60})],
                            hostname=MYNAME)
        macros = {"j": MYNAME, "_": "client.example.test [%s]" % client_addr,
                  "{daemon_name}": "MTA", "{if_name}": "localhost", "{if_addr}": "127.0.0.1",
                  "i": "6AQOdkim000001", "{mail_addr}": sender, "{rcpt_addr}": rcpt,
                  "{mail_mailer}": "esmtp", "{rcpt_mailer}": "esmtp",
                  "{msg_id}": "<m@%s>" % OUR_DOMAIN}
        try:
            for step in (chain.connect("client.example.test", mc.SMFIA_INET, 40000,
                                       client_addr, macros),
                         chain.helo("client.example.test", macros),
                         chain.mail(["<%s>" % sender], macros),
                         chain.rcpt(["<%s>" % rcpt], macros),
                         chain.data(macros)):
                verdict = await step
                assert verdict.proceeds, (verdict, chain.log_lines)
            return await chain.end_of_message(headers, body, macros)
        finally:
            await chain.quit()
    result = asyncio.run(asyncio.wait_for(session(), 60))
    assert result.verdict.action == ACCEPT, result
    return result


def test_chain_internal_mail_is_signed(opendkim, dkim_key):
    raw = outbound_message("chain-out")
    result = chain_session(opendkim.spec, INTERNAL, raw, "sender@" + OUR_DOMAIN,
                           "someone@" + REMOTE_DOMAIN)
    msg = result.message
    assert msg.changed == {"headers"}
    assert_signed_by_opendkim(dkim_key, msg.headers, msg.body)
    # the sender's own headers are untouched, in order, after the signature
    assert [tuple(h) for h in msg.headers if h[0] != "DKIM-Signature"] == split_message(raw)[0]
    assert dkim_results(msg.headers) == []


def test_chain_over_unix_socket(opendkim_factory, dkim_key):
    dk = opendkim_factory(unix=True)
    assert dk.spec.startswith("unix:/")
    result = chain_session(dk.spec, INTERNAL, outbound_message("chain-unix"),
                           "sender@" + OUR_DOMAIN, "someone@" + REMOTE_DOMAIN)
    assert_signed_by_opendkim(dkim_key, result.message.headers, result.message.body)


def test_chain_external_mail_is_verified(opendkim, dkim_key):
    signed = dkim_key.sign(inbound_message("chain-in"))
    got = {}
    for label, raw in (("signed", signed), ("tampered", tamper(signed)),
                       ("unsigned", inbound_message("chain-unsigned")),
                       ("forged", FORGED_AR + tamper(signed))):
        result = chain_session(opendkim.spec, EXTERNAL, raw, "remote@" + REMOTE_DOMAIN,
                               "root@localhost")
        headers = result.message.headers
        got[label] = dkim_results(headers)
        # verified, not signed: the only DKIM-Signature is the remote one (if any)
        assert len(values(headers, "DKIM-Signature")) == (label != "unsigned"), headers
        if label == "signed":
            ar = values(headers, "Authentication-Results")[0]
            assert "header.d=%s" % REMOTE_DOMAIN in ar and "header.s=%s" % SELECTOR in ar, ar
    assert got == {"signed": ["pass"], "tampered": ["fail"], "unsigned": ["none"],
                   "forged": ["fail"]}, (got, opendkim.log_text())


# ---- end to end through the daemon -----------------------------------------------------------

def write_cf(inst, spec):
    """inst's etc/sendmail.cf: the shipped cf with $j and OpenDKIM as its one input filter
    (our own authentication checks off: only OpenDKIM's Authentication-Results counts)."""
    with open(CF_SOURCE) as f:
        text = f.read()
    text = text.replace("#Dj mail.example.com\n", "Dj%s\n" % MYNAME, 1)
    assert ("Dj%s\n" % MYNAME) in text
    text += ("\nXopendkim, S=%s, F=T, T=C:10s;S:10s;R:10s;E:60s\n"
             "O InputMailFilters=opendkim\nO AuthChecks=none\n" % spec)
    os.makedirs(os.path.join(inst.path, "etc"), exist_ok=True)
    with open(os.path.join(inst.path, "etc", "sendmail.cf"), "w") as f:
        f.write(text)


def queued_message(inst, qid):
    """(headers, body) of queued message `qid`: the qf's H lines, the df."""
    headers = []
    for line in read_qf(inst, qid).decode("utf-8", "surrogateescape").split("\n"):
        if line.startswith("H "):
            name, _, value = line[2:].partition(":")
            headers.append([name, value])
        elif line[:1] in (" ", "\t") and headers:
            headers[-1][1] += "\n" + line
    return [tuple(h) for h in headers], read_df(inst, qid)


def send(d, source, sender, rcpt, raw):
    """Submit `raw` over SMTP from `source`; returns the id of the message it queued."""
    inst = d.inst
    before = set(queued(inst))
    with smtplib.SMTP("127.0.0.1", d.port, source_address=(source, 0), timeout=60) as s:
        s.ehlo("client.example.test")
        assert s.sendmail(sender, [rcpt], raw) == {}
    assert wait_for(lambda: set(queued(inst)) - before, 10)
    new = set(queued(inst)) - before
    assert len(new) == 1, new
    return new.pop()


@pytest.fixture
def dkim_daemon(opendkim, sm_root, daemon):
    write_cf(sm_root, opendkim.spec)
    return daemon()


def logged(opendkim, line):
    """True when OpenDKIM logged `line` (its lines start with the `i` macro: our queue id),
    or when its log is not captured (not root)."""
    return not opendkim.capture_log or wait_for(lambda: line in opendkim.log_text(), 5)


def test_daemon_signs_mail_from_internal_client(dkim_daemon, dkim_key, opendkim):
    raw = outbound_message("daemon-out")
    qid = send(dkim_daemon, INTERNAL, "sender@" + OUR_DOMAIN, "someone@" + REMOTE_DOMAIN, raw)
    headers, body = queued_message(dkim_daemon.inst, qid)
    assert values(headers, "DKIM-Signature"), (headers, opendkim.log_text(),
                                               dkim_daemon.log_text())
    assert_signed_by_opendkim(dkim_key, headers, body)
    assert dkim_results(headers) == []
    assert values(headers, "Subject") == ["signed by OpenDKIM (daemon-out)"]
    assert logged(opendkim, "%s: DKIM-Signature field added (s=%s, d=%s)"
                  % (qid, SELECTOR, OUR_DOMAIN)), opendkim.log_text()


def test_daemon_signed_minimal_message_verifies_as_queued(dkim_daemon, dkim_key, opendkim):
    """No Date, no Message-ID: the fields the daemon adds come after the signing (not in
    h=), so the queued message still verifies."""
    raw = ("From: sender@%s\r\nTo: someone@%s\r\nSubject: minimal\r\n\r\nHello\r\n"
           % (OUR_DOMAIN, REMOTE_DOMAIN)).encode()
    qid = send(dkim_daemon, INTERNAL, "sender@" + OUR_DOMAIN, "someone@" + REMOTE_DOMAIN, raw)
    headers, body = queued_message(dkim_daemon.inst, qid)
    assert_signed_by_opendkim(dkim_key, headers, body, signed=("from", "to", "subject"))
    h = sig_tags(values(headers, "DKIM-Signature")[0])["h"].lower().split(":")
    assert "date" not in h and "message-id" not in h, h
    assert len(values(headers, "Date")) == 1 and len(values(headers, "Message-ID")) == 1, headers


def test_daemon_verifies_mail_from_external_client(dkim_daemon, dkim_key, opendkim):
    signed = dkim_key.sign(inbound_message("daemon-in"))
    got = {}
    for label, raw in (("signed", signed), ("tampered", tamper(signed)),
                       ("forged", FORGED_AR + tamper(signed))):
        qid = send(dkim_daemon, EXTERNAL, "remote@" + REMOTE_DOMAIN, "root@localhost", raw)
        headers, body = queued_message(dkim_daemon.inst, qid)
        got[label] = dkim_results(headers)
        assert len(values(headers, "DKIM-Signature")) == 1, headers
        # the remote signature still verifies (dkimpy) on the queued copy of the good one
        assert dkim_key.verify(join_message(headers, body)) == (label == "signed")
        if label == "signed":
            assert logged(opendkim, "%s: DKIM verification successful" % qid), \
                opendkim.log_text()
    assert got == {"signed": ["pass"], "tampered": ["fail"], "forged": ["fail"]}, (
        got, opendkim.log_text(), dkim_daemon.log_text())

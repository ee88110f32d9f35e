"""The peers of tests/peers.py work: smtp-sink (capture and each fault flag), a private Dovecot
(LMTP on a Unix socket and TCP, read back with IMAP, POP3 and from the Maildir) and a private
Postfix smarthost (STARTTLS or implicit TLS, Dovecot SASL, relaying to an smtp-sink).
Only Python's own clients (smtplib, imaplib, poplib) talk to them here.
"""
import os
import re
import smtplib
import uuid

import pytest

from peers import (USERS, dovecot, lmtp_deliver, postfix_mx, postfix_smarthost,  # noqa: F401
                   smarthost_sink, smtp_sink, tls_context)

pytestmark = pytest.mark.peer


def message(subject="test", extra=b""):
    """A small message with a unique Message-ID; returns (msgid, bytes with CRLF)."""
    msgid = "<%s@client.example.test>" % uuid.uuid4().hex
    data = ("From: sender@example.test\r\nTo: user1@example.test\r\nSubject: %s\r\n"
            "Message-ID: %s\r\n\r\nfirst line\r\n.leading dot\r\n" % (subject, msgid)).encode()
    return msgid, data + extra


# ---- smtp-sink -------------------------------------------------------------------------------

def test_sink_captures_envelope_parameters_and_content(smtp_sink):
    sink = smtp_sink()
    msgid, data = message("capture", "caf\u00e9 8bit\r\n".encode())
    with smtplib.SMTP(sink.address, sink.port, local_hostname="client.example.test") as s:
        code, ehlo = s.ehlo()
        assert code == 250
        for kw in (b"PIPELINING", b"8BITMIME", b"DSN", b"ENHANCEDSTATUSCODES"):
            assert kw in ehlo.split(b"\n"), ehlo
        assert s.sendmail("sender@example.test", ["user1@example.test", "user2@example.org"],
                          data, mail_options=["BODY=8BITMIME"],
                          rcpt_options=["NOTIFY=FAILURE"]) == {}
        assert s.sendmail("", ["postmaster@example.test"], b"Subject: bounce\r\n\r\nx\r\n") == {}
    msgs = sink.wait_messages(2)
    # two transactions closed within the same clock tick may come in either order
    (first,) = [m for m in msgs if m.sender]
    (second,) = [m for m in msgs if not m.sender]
    assert first.sender == "sender@example.test"
    assert first.recipients == ["user1@example.test", "user2@example.org"]
    assert first.mail_args == "<sender@example.test> BODY=8BITMIME"
    assert first.rcpt_args == ["<user1@example.test> NOTIFY=FAILURE",
                               "<user2@example.org> NOTIFY=FAILURE"]
    assert first.helo == "client.example.test" and first.proto == "ESMTP"
    assert first.client_addr == "127.0.0.1"
    assert first.header("Message-ID") == msgid
    # dot-unstuffed, line ends normalized to LF by smtp-sink, nothing appended
    assert first.data == data.replace(b"\r\n", b"\n")
    assert second.sender == "" and second.recipients == ["postmaster@example.test"]
    assert second.data == b"Subject: bounce\n\nx\n"


def test_sink_hard_reject_rcpt_and_no_pipelining(smtp_sink):
    sink = smtp_sink(hard_reject="RCPT", hard_reply="550 5.1.1 No such user here")
    with smtplib.SMTP(sink.address, sink.port) as s:
        s.ehlo()
        assert not s.has_extn("pipelining")         # -f implies -p
        assert s.mail("a@example.test") == (250, b"2.1.0 Ok")
        assert s.rcpt("b@example.test") == (550, b"5.1.1 No such user here")


def test_sink_soft_reject_mail(smtp_sink):
    sink = smtp_sink(soft_reject="MAIL")
    with smtplib.SMTP(sink.address, sink.port) as s:
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nx\r\n")
        assert e.value.smtp_code == 450 and e.value.smtp_error == b"4.3.0 Error: command failed"


def test_sink_hard_reject_end_of_data_still_dumps(smtp_sink):
    sink = smtp_sink(hard_reject=".")
    with smtplib.SMTP(sink.address, sink.port) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@example.test", ["b@example.test"], b"Subject: rejected\r\n\r\nx\r\n")
        assert e.value.smtp_code == 500
    # documented caveat: the capture file exists although the message was refused
    (m,) = sink.wait_messages(1)
    assert m.header("Subject") == "rejected"


def test_sink_soft_reject_data(smtp_sink):
    sink = smtp_sink(soft_reject="DATA")
    with smtplib.SMTP(sink.address, sink.port) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nx\r\n")
        assert e.value.smtp_code == 450


def test_sink_disconnect_without_reply(smtp_sink):
    sink = smtp_sink(disconnect="DATA")
    s = smtplib.SMTP(sink.address, sink.port, timeout=10)
    try:
        s.ehlo()
        assert s.mail("a@example.test")[0] == 250
        assert s.rcpt("b@example.test")[0] == 250
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.data(b"Subject: x\r\n\r\nx\r\n")
    finally:
        s.close()


def test_sink_disconnect_with_421(smtp_sink):
    sink = smtp_sink(disconnect_421="RCPT")
    s = smtplib.SMTP(sink.address, sink.port, timeout=10)
    try:
        s.ehlo()
        s.mail("a@example.test")
        code, _ = s.rcpt("b@example.test")
        assert code == 421
    finally:
        s.close()


def test_sink_connect_reject(smtp_sink):
    sink = smtp_sink(hard_reject="CONNECT")
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtplib.SMTP(sink.address, sink.port, timeout=10)
    assert e.value.smtp_code == 500


def test_sink_without_esmtp_speaks_helo_only(smtp_sink):
    sink = smtp_sink(no_esmtp=True)
    with smtplib.SMTP(sink.address, sink.port, local_hostname="old.example.test") as s:
        code, _ = s.ehlo()
        assert code >= 500
        assert s.helo()[0] == 250
        assert s.sendmail("a@example.test", ["b@example.test"], b"Subject: helo\r\n\r\nx\r\n") == {}
    (m,) = sink.wait_messages(1)
    assert m.proto == "SMTP" and m.helo == "old.example.test"


@pytest.mark.parametrize("option,keyword", [("no_8bitmime", b"8BITMIME"),
                                            ("no_pipelining", b"PIPELINING"),
                                            ("no_dsn", b"DSN"),
                                            ("no_auth", b"AUTH"),
                                            ("no_enhancedstatuscodes", b"ENHANCEDSTATUSCODES")])
def test_sink_keyword_switches(smtp_sink, option, keyword):
    plain, without = smtp_sink(), smtp_sink(**{option: True})
    seen = []
    for sink in (plain, without):
        with smtplib.SMTP(sink.address, sink.port) as s:
            code, text = s.ehlo()
            assert code == 250
            seen.append([line.split(b" ")[0] for line in text.split(b"\n")])
    assert keyword in seen[0] and keyword not in seen[1]


def test_sink_delay(smtp_sink):
    import time
    sink = smtp_sink(delays={"RCPT": 1})
    with smtplib.SMTP(sink.address, sink.port) as s:
        s.ehlo()
        s.mail("a@example.test")
        t0 = time.monotonic()
        assert s.rcpt("b@example.test")[0] == 250
        assert time.monotonic() - t0 >= 0.9


def test_sink_lmtp_on_a_unix_socket(smtp_sink):
    sink = smtp_sink(lmtp=True, unix=True)
    assert sink.port is None and os.path.exists(sink.socket_path)
    msgid, data = message("lmtp sink")
    rcpt, final = lmtp_deliver(sink.socket_path, "a@example.test",
                               ["x@example.test", "y@example.test"], data)
    assert [r[0] for r in rcpt.values()] == [250, 250]
    assert [r[0] for r in final.values()] == [250, 250]      # one reply per recipient
    (m,) = sink.wait_messages(1)
    assert m.proto == "LMTP" and m.recipients == ["x@example.test", "y@example.test"]
    assert m.header("Message-ID") == msgid


# ---- Dovecot ---------------------------------------------------------------------------------

def read(path):
    with open(path, "rb") as f:
        return f.read()


def _with_id(messages, msgid):
    return [m for m in messages if msgid.encode() in m]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_dovecot_lmtp_delivery_read_back(dovecot, transport):
    msgid, data = message("lmtp " + transport)
    if transport == "unix":
        rcpt, final = lmtp_deliver(dovecot.lmtp_socket, "sender@example.test",
                                   ["user1@example.test", "nobody-here@example.test",
                                    "user2@example.test"], data)
    else:
        rcpt, final = lmtp_deliver(dovecot.host, "sender@example.test",
                                   ["user1@example.test", "nobody-here@example.test",
                                    "user2@example.test"], data, port=dovecot.lmtp_port)
    assert rcpt["user1@example.test"][0] == 250
    assert rcpt["user2@example.test"][0] == 250
    code, text = rcpt["nobody-here@example.test"]
    assert code == 550 and text.startswith(b"5.1.1"), text
    assert list(final) == ["user1@example.test", "user2@example.test"]
    for r, (code, text) in final.items():
        assert code == 250 and b"Saved" in text and r.encode() in text, (r, code, text)

    for user in ("user1", "user2"):
        (via_imap,) = _with_id(dovecot.imap_messages(user), msgid)
        (via_pop,) = _with_id(dovecot.pop3_messages(user), msgid)
        assert via_imap == via_pop
        assert via_imap.endswith(data)       # Dovecot prepends Return-Path, Delivered-To, Received
        assert b"Return-Path: <sender@example.test>\r\n" in via_imap
        # (Dovecot writes Delivered-To only when a transaction has a single recipient)
        assert b"\tby imap.example.test with LMTP\r\n" in via_imap
        files = [p for p in dovecot.maildir_files(user) if msgid.encode() in read(p)]
        assert len(files) == 1
        name, path = os.path.basename(files[0]), files[0]
        size = int(re.search(r",S=(\d+)", name).group(1))
        vsize = int(re.search(r",W=(\d+)", name).group(1))
        on_disk = read(path)
        assert size == os.path.getsize(path) and b"\r\n" not in on_disk    # LF on disk
        assert vsize == len(via_imap)                                     # CRLF size
        assert os.stat(path).st_uid == os.stat(dovecot.maildir(user)).st_uid
    assert not _with_id(dovecot.imap_messages("user1"), "<no-such-id@x>")


def test_dovecot_wrong_password_is_refused(dovecot):
    import imaplib
    import poplib
    with pytest.raises(imaplib.IMAP4.error):
        dovecot.imap_messages("user1", password="wrong")
    with pytest.raises(poplib.error_proto):
        dovecot.pop3_messages("user1", password="wrong")


# ---- Postfix smarthost -----------------------------------------------------------------------

def _auth(s, mechanism, user, password):
    s.user, s.password = user, password
    return s.auth(mechanism, {"PLAIN": s.auth_plain, "LOGIN": s.auth_login}[mechanism],
                  initial_response_ok=True)


def test_smarthost_refuses_auth_and_mail_before_starttls(postfix_smarthost):
    with postfix_smarthost.connect() as s:
        s.ehlo()
        assert s.has_extn("starttls") and not s.has_extn("auth")
        code, text = s.docmd("AUTH", "PLAIN AHVzZXIxAHBhc3Mx")
        assert code >= 500, (code, text)
        code, text = s.docmd("MAIL", "FROM:<sender@example.test>")
        assert code == 530 and b"STARTTLS" in text, (code, text)


def test_smarthost_refuses_relay_without_auth(postfix_smarthost):
    with postfix_smarthost.connect() as s:
        s.starttls(context=tls_context(postfix_smarthost.cert))     # verifies the cert
        s.ehlo()
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        assert s.mail("sender@example.test")[0] == 250
        code, text = s.rcpt("someone@example.org")
        assert code == 554, (code, text)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smarthost_starttls_auth_relays_to_the_sink(postfix_smarthost, mechanism):
    msgid, data = message("relay " + mechanism)
    with postfix_smarthost.connect() as s:
        s.starttls(context=tls_context())
        s.ehlo()
        assert _auth(s, mechanism, "user1", USERS["user1"])[0] == 235
        assert s.sendmail("sender@example.test", ["rcpt1@example.org", "rcpt2@example.net"],
                          data) == {}
    (m,) = postfix_smarthost.sink.wait_messages(1, lambda m: m.header("Message-ID") == msgid)
    assert m.sender == "sender@example.test"
    assert sorted(m.recipients) == ["rcpt1@example.org", "rcpt2@example.net"]
    assert m.helo == "smarthost.example.test"
    received = m.header("Received")
    assert "(Authenticated sender: user1)" in received and "with ESMTPSA" in received
    assert m.header("Subject") == "relay " + mechanism
    assert m.data.endswith(b"\n\nfirst line\n.leading dot\n")


def test_smarthost_wrong_password_is_535(postfix_smarthost):
    with postfix_smarthost.connect() as s:
        s.starttls(context=tls_context())
        s.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            _auth(s, "PLAIN", "user1", "wrong")
        assert e.value.smtp_code == 535


def test_smarthost_implicit_tls_port(postfix_smarthost):
    msgid, data = message("implicit tls")
    with postfix_smarthost.connect(implicit_tls=True) as s:
        s.ehlo()
        assert not s.has_extn("starttls")
        assert _auth(s, "LOGIN", "user2", USERS["user2"])[0] == 235
        assert s.sendmail("", ["bounce-target@example.org"], data) == {}
    (m,) = postfix_smarthost.sink.wait_messages(1, lambda m: m.header("Message-ID") == msgid)
    assert m.sender == "" and m.recipients == ["bounce-target@example.org"]
    assert "(Authenticated sender: user2)" in m.header("Received")


# ---- Postfix as a STARTTLS-capable remote MX -------------------------------------------------

@pytest.mark.parametrize("starttls", [False, True])
def test_mx_takes_mail_with_or_without_starttls(postfix_mx, starttls):
    msgid, data = message("mx tls=%s" % starttls)
    with postfix_mx.connect() as s:
        s.ehlo()
        assert s.has_extn("starttls") and not s.has_extn("auth")
        if starttls:
            s.starttls(context=tls_context(postfix_mx.cert))
            s.ehlo()
        assert s.sendmail("sender@example.test", ["anyone@example.org"], data) == {}
    (m,) = postfix_mx.sink.wait_messages(1, lambda m: m.header("Message-ID") == msgid)
    assert m.sender == "sender@example.test" and m.recipients == ["anyone@example.org"]
    assert ("(using TLSv1." in m.header("Received")) is starttls

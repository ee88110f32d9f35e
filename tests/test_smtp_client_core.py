"""Unit tests of the sans-I/O SMTP/LMTP client core (pysendmail.proto.smtp_client): no sockets."""
import base64

import pytest

from pysendmail.proto.smtp_client import (
    BodyEncoder, ConnectionClosed, Outcome, RcptReply, Ready, SendBody, SMTPClientConnection,
    TlsUpgrade, TransactionDone, xtext)
from pysendmail.proto.smtp_events import NEED_DATA, LocalProtocolError
from pysendmail.proto.smtp_reply import Reply

FULL = ("PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES")


def events(c):
    out = []
    for _ in range(1000):
        ev = c.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            return out
    raise AssertionError("no end of events")


def feed(c, data):
    c.receive_data(data)
    return events(c)


def ehlo(keywords, name="mx.example"):
    lines = [name + " Hello"] + list(keywords)
    return b"".join(b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-", line.encode())
                    for i, line in enumerate(lines))


def ready(keywords=FULL, **kw):
    kw.setdefault("starttls", "never")
    c = SMTPClientConnection("client.example", **kw)
    assert feed(c, b"220 mx.example ESMTP\r\n") == []
    verb = b"LHLO" if kw.get("lmtp") else b"EHLO"
    assert c.data_to_send() == verb + b" client.example\r\n"
    evs = feed(c, ehlo(keywords))
    assert len(evs) == 1 and isinstance(evs[0], Ready), evs
    assert c.data_to_send() == b""
    return c


def R(code, enhanced, text):
    return Outcome.from_reply(Reply(code, enhanced, text))


# --- greeting --------------------------------------------------------------

@pytest.mark.parametrize("code", [554, 450])
def test_greeting_refused_says_quit(code):
    c = SMTPClientConnection("client.example")
    evs = feed(c, b"%d-mx.example no thanks\r\n%d go away\r\n" % (code, code))
    assert evs == [ConnectionClosed(R(code, None, ["mx.example no thanks", "go away"]),
                                    "greeting")]
    assert c.data_to_send() == b"QUIT\r\n"
    assert evs[0].outcome.status == "%d.0.0" % (code // 100)
    assert c.next_event() == evs[0]                   # terminal, repeated


def test_greeting_421_closes_without_quit():
    c = SMTPClientConnection("client.example")
    [ev] = feed(c, b"421 4.3.2 mx.example busy\r\n")
    assert ev.stage == "greeting" and ev.outcome.code == 421 and ev.outcome.transient
    assert ev.outcome.status == "4.0.0"       # no ENHANCEDSTATUSCODES before EHLO
    assert ev.outcome.text == "4.3.2 mx.example busy"
    assert c.data_to_send() == b""


def test_multiline_greeting_then_ehlo_and_partial_input():
    c = SMTPClientConnection("client.example")
    assert feed(c, b"220-mx.example ESMTP\r\n220-more") == []
    assert c.data_to_send() == b""
    assert feed(c, b" text\n220 ok\n") == []          # bare LF line ends are fine
    assert c.data_to_send() == b"EHLO client.example\r\n"


def test_eof_before_greeting():
    c = SMTPClientConnection("client.example")
    c.receive_data(b"220 partial")
    [ev] = feed(c, b"")
    assert ev == ConnectionClosed(Outcome(421, "4.4.2", "connection closed by the peer"),
                                  "greeting")
    assert ev.outcome.diagnostic is None


def test_greeting_garbage_is_protocol_error():
    c = SMTPClientConnection("client.example")
    [ev] = feed(c, b"HTTP/1.1 400 Bad Request\r\n")
    assert ev.outcome.code == 451 and ev.outcome.status == "4.5.0"
    assert "protocol error" in ev.outcome.text and "HTTP/1.1" in ev.outcome.text
    assert ev.stage == "greeting"


# --- EHLO / HELO / LHLO ----------------------------------------------------

def test_ehlo_5xx_falls_back_to_helo():
    c = SMTPClientConnection("client.example", starttls="may")
    feed(c, b"220 old.example SMTP\r\n")
    assert c.data_to_send() == b"EHLO client.example\r\n"
    assert feed(c, b"502 5.5.1 unrecognized command\r\n") == []
    assert c.data_to_send() == b"HELO client.example\r\n"
    [ev] = feed(c, b"250 old.example\r\n")
    assert ev == Ready({}, False, False)
    assert not c.esmtp and not c.pipelining


def test_helo_refused_fails():
    c = SMTPClientConnection("client.example", esmtp=False)
    feed(c, b"220 old.example SMTP\r\n")
    assert c.data_to_send() == b"HELO client.example\r\n"     # told: not ESMTP
    [ev] = feed(c, b"501 5.0.0 bad name\r\n")
    assert ev.stage == "helo" and ev.outcome.code == 501 and ev.outcome.permanent
    assert c.data_to_send() == b"QUIT\r\n"


def test_ehlo_4xx_is_temporary_failure():
    c = SMTPClientConnection("client.example")
    feed(c, b"220 mx\r\n")
    c.data_to_send()
    [ev] = feed(c, b"454 4.3.0 try later\r\n")
    assert ev.stage == "ehlo" and ev.outcome.transient


def test_lmtp_says_lhlo_and_never_helo():
    c = SMTPClientConnection("client.example", lmtp=True, esmtp=False)
    feed(c, b"220 lmtp.example LMTP\r\n")
    assert c.data_to_send() == b"LHLO client.example\r\n"
    [ev] = feed(c, b"500 5.5.1 what\r\n")
    assert ev.stage == "ehlo" and ev.outcome.code == 500
    assert c.data_to_send() == b"QUIT\r\n"


def test_keyword_parsing():
    c = ready(["pipelining", "SIZE 35882577", "8BITMIME", "AUTH=LOGIN", "AUTH PLAIN LOGIN",
               "ENHANCEDSTATUSCODES", "CHUNKING", "DSN", "SMTPUTF8", "X-WEIRD a b",
               "bad/kw", "STARTTLS"])
    assert c.max_size == 35882577 and c.pipelining and c.esmtp
    assert c.auth_mechanisms == ("LOGIN", "PLAIN")
    assert c.extensions["AUTH"] == "LOGIN PLAIN" and c.extensions["X-WEIRD"] == "a b"
    assert "CHUNKING" in c.extensions and "BAD/KW" not in c.extensions
    assert not c.needs_7bit(True) and not c.needs_7bit(False)


def test_size_without_number_means_no_limit():
    c = ready(["SIZE", "PIPELINING"])
    assert c.max_size == 0 and c.extensions["SIZE"] == ""
    c.send_message("a@x", [("b@y", None, None)], size=10 ** 9)
    assert c.data_to_send().startswith(b"MAIL FROM:<a@x> SIZE=1000000000\r\n")


# --- command order ---------------------------------------------------------

RCPTS = [("r1@y", None, None), ("r2@y", None, None)]


def test_pipelined_transaction_in_one_write():
    c = ready()
    c.send_message("s@x", RCPTS, size=100)
    assert c.data_to_send() == (b"MAIL FROM:<s@x> SIZE=100\r\nRCPT TO:<r1@y>\r\n"
                                b"RCPT TO:<r2@y>\r\nDATA\r\n")
    evs = feed(c, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert evs == [RcptReply(0, R(250, "2.1.5", "ok")), RcptReply(1, R(250, "2.1.5", "ok")),
                   SendBody()]
    c.send_body(b"hello\n.dot\n")
    c.end_body()
    assert c.data_to_send() == b"hello\r\n..dot\r\n.\r\n"
    [done] = feed(c, b"250 2.0.0 queued as X\r\n")
    assert done == TransactionDone([R(250, "2.0.0", "queued as X")] * 2)
    assert done.outcomes[0].diagnostic == "smtp; 250 2.0.0 queued as X"


def test_unpipelined_one_command_at_a_time():
    c = ready(["SIZE 1000", "ENHANCEDSTATUSCODES"])
    c.send_message("s@x", RCPTS, size=100)
    assert c.data_to_send() == b"MAIL FROM:<s@x> SIZE=100\r\n"
    assert feed(c, b"250 2.1.0 ok\r\n") == []
    assert c.data_to_send() == b"RCPT TO:<r1@y>\r\n"
    assert feed(c, b"250 2.1.5 ok\r\n") == [RcptReply(0, R(250, "2.1.5", "ok"))]
    assert c.data_to_send() == b"RCPT TO:<r2@y>\r\n"
    feed(c, b"550 5.1.1 no such user\r\n")
    assert c.data_to_send() == b"DATA\r\n"
    assert feed(c, b"354 go\r\n") == [SendBody()]
    c.send_body(b"x")
    c.end_body()
    assert c.data_to_send() == b"x\r\n.\r\n"
    [done] = feed(c, b"250 2.0.0 ok\r\n")
    assert done.outcomes == [R(250, "2.0.0", "ok"), R(550, "5.1.1", "no such user")]
    c.send_message("s@x", RCPTS[:1])                  # the transaction ended cleanly
    assert c.data_to_send() == b"MAIL FROM:<s@x>\r\n"


# --- STARTTLS --------------------------------------------------------------

def start(policy, keywords, **kw):
    c = SMTPClientConnection("client.example", starttls=policy, **kw)
    feed(c, b"220 mx\r\n")
    assert c.data_to_send() == b"EHLO client.example\r\n"
    return c, feed(c, ehlo(keywords))


def test_starttls_may_upgrades_and_says_ehlo_again():
    c, evs = start("may", ["PIPELINING", "STARTTLS", "SIZE 10"])
    assert evs == [] and c.data_to_send() == b"STARTTLS\r\n"
    assert feed(c, b"220 2.0.0 Ready to start TLS\r\n") == [TlsUpgrade()]
    assert c.next_event() is NEED_DATA
    c.tls_started()
    assert c.extensions == {} and c.max_size == 0 and c.tls
    assert c.data_to_send() == b"EHLO client.example\r\n"
    [ev] = feed(c, ehlo(["PIPELINING", "SIZE 20"]))
    assert ev == Ready({"PIPELINING": "", "SIZE": "20"}, True, False) and c.max_size == 20


def test_starttls_may_not_offered_or_refused_goes_on_in_clear():
    c, evs = start("may", ["PIPELINING"])
    assert evs == [Ready({"PIPELINING": ""}, False, False)] and c.data_to_send() == b""
    c, evs = start("may", ["STARTTLS"])
    assert c.data_to_send() == b"STARTTLS\r\n"
    assert feed(c, b"454 4.7.0 TLS not available\r\n") == [Ready({"STARTTLS": ""}, False, False)]
    assert c.data_to_send() == b""


def test_starttls_never_does_not_ask():
    c, evs = start("never", ["STARTTLS"])
    assert evs == [Ready({"STARTTLS": ""}, False, False)] and c.data_to_send() == b""


def test_starttls_must_not_offered_is_temporary():
    c, [ev] = start("must", ["PIPELINING"])
    assert ev.stage == "starttls" and ev.outcome.code == 451 and ev.outcome.status == "4.7.0"
    assert ev.outcome.reply is None
    assert c.data_to_send() == b"QUIT\r\n"


def test_starttls_must_refused_keeps_the_reply_but_is_temporary():
    c, _ = start("must", ["STARTTLS"])
    c.data_to_send()
    [ev] = feed(c, b"554 5.7.0 no TLS for you\r\n")
    assert ev.outcome.transient and ev.outcome.status == "4.7.0"
    assert ev.outcome.reply == Reply(554, None, "5.7.0 no TLS for you")
    assert ev.outcome.diagnostic == "smtp; 554 5.7.0 no TLS for you"
    assert c.data_to_send() == b"QUIT\r\n"


def test_starttls_injection_in_the_same_read():
    c, _ = start("may", ["STARTTLS"])
    c.data_to_send()
    [ev] = feed(c, b"220 go ahead\r\n250 injected\r\n")
    assert ev.outcome.status == "4.5.0" and "STARTTLS" in ev.outcome.text
    assert ev.stage == "tls"
    with pytest.raises(LocalProtocolError):
        c.tls_started()


def test_starttls_injection_before_the_handshake():
    c, _ = start("must", ["STARTTLS"])
    c.data_to_send()
    assert feed(c, b"220 go ahead\r\n") == [TlsUpgrade()]
    c.receive_data(b"250-PIPELINING\r\n")
    [ev] = events(c)
    assert ev.stage == "tls" and ev.outcome.code == 451 and "handshake" in ev.outcome.text
    assert c.data_to_send() == b""


def test_tls_started_rejects_injected_bytes_and_misuse():
    c, _ = start("may", ["STARTTLS"])
    with pytest.raises(LocalProtocolError):
        c.tls_started()
    feed(c, b"220 go\r\n")
    c.receive_data(b"x")
    c.tls_started()
    [ev] = events(c)
    assert isinstance(ev, ConnectionClosed) and ev.outcome.status == "4.5.0"


def test_handshake_failure_abort():
    c, _ = start("may", ["STARTTLS"])
    feed(c, b"220 go\r\n")
    c.abort("TLS handshake failed", 451, "4.7.5")
    assert events(c) == [ConnectionClosed(Outcome(451, "4.7.5", "TLS handshake failed"), "tls")]


# --- AUTH ------------------------------------------------------------------

def tls_session(keywords, **kw):
    c, _ = start("must", ["STARTTLS"], **kw)
    c.data_to_send()
    feed(c, b"220 go\r\n")
    c.tls_started()
    c.data_to_send()
    return c, feed(c, ehlo(keywords))


def test_auth_plain_after_tls():
    c, evs = tls_session(["AUTH LOGIN PLAIN", "ENHANCEDSTATUSCODES"],
                         credentials=("user", "pa ss"))
    assert evs == []
    assert c.data_to_send() == b"AUTH PLAIN " + base64.b64encode(b"\0user\0pa ss") + b"\r\n"
    assert c.data_to_send() == b""
    [ev] = feed(c, b"235 2.7.0 Authentication successful\r\n")
    assert ev == Ready({"AUTH": "LOGIN PLAIN", "ENHANCEDSTATUSCODES": ""}, True, True)


def test_auth_plain_with_authzid_exact_base64():
    c, _ = tls_session(["AUTH=PLAIN"], credentials=("bob", "secret", "alice"))
    assert c.data_to_send() == b"AUTH PLAIN YWxpY2UAYm9iAHNlY3JldA==\r\n"


def test_auth_login_exchange():
    c, _ = tls_session(["AUTH LOGIN"], credentials=("user@example.org", "s3cret"))
    assert c.data_to_send() == b"AUTH LOGIN\r\n"
    assert feed(c, b"334 VXNlcm5hbWU6\r\n") == []
    assert c.data_to_send() == b"dXNlckBleGFtcGxlLm9yZw==\r\n"
    assert feed(c, b"334 UGFzc3dvcmQ6\r\n") == []
    assert c.data_to_send() == b"czNjcmV0\r\n"
    [ev] = feed(c, b"235 ok\r\n")
    assert isinstance(ev, Ready) and ev.authenticated and c.authenticated


def test_auth_mechanisms_restrict_and_order():
    """authinfo's M: list: only those mechanisms, in that order; none in common fails."""
    c, _ = tls_session(["AUTH PLAIN LOGIN"], credentials=("u", "p"), mechanisms=("LOGIN",))
    assert c.data_to_send() == b"AUTH LOGIN\r\n"
    c, _ = tls_session(["AUTH PLAIN LOGIN"], credentials=("u", "p"),
                       mechanisms=("CRAM-MD5", "LOGIN", "PLAIN"))
    assert c.data_to_send() == b"AUTH LOGIN\r\n"
    c, evs = tls_session(["AUTH PLAIN"], credentials=("u", "p"), mechanisms=("LOGIN",))
    assert [type(e).__name__ for e in evs] == ["ConnectionClosed"]
    assert evs[0].stage == "auth" and evs[0].outcome.code == 451


def test_auth_failure_keeps_the_reply():
    c, _ = tls_session(["AUTH PLAIN", "ENHANCEDSTATUSCODES"], credentials=("u", "p"))
    c.data_to_send()
    [ev] = feed(c, b"535 5.7.8 Authentication credentials invalid\r\n")
    assert ev.stage == "auth" and ev.outcome.permanent
    assert ev.outcome.status == "5.7.8"
    assert ev.outcome.diagnostic == "smtp; 535 5.7.8 Authentication credentials invalid"
    assert c.data_to_send() == b"QUIT\r\n"


def test_auth_unexpected_third_challenge_is_cancelled():
    c, _ = tls_session(["AUTH LOGIN"], credentials=("u", "p"))
    c.data_to_send()
    feed(c, b"334 a\r\n334 b\r\n")
    assert c.data_to_send() == b"dQ==\r\ncA==\r\n"
    feed(c, b"334 c\r\n")
    assert c.data_to_send() == b"*\r\n"
    [ev] = feed(c, b"501 5.0.0 AUTH aborted\r\n")
    assert ev.stage == "auth" and ev.outcome.code == 501


def test_no_credentials_in_clear_unless_allowed():
    c, [ev] = start("may", ["AUTH PLAIN"], credentials=("u", "p"))
    assert ev.stage == "auth" and ev.outcome.status == "4.7.0" and ev.outcome.transient
    assert c.data_to_send() == b"QUIT\r\n"
    c, evs = start("may", ["AUTH PLAIN"], credentials=("u", "p"), auth_plaintext=True)
    assert evs == [] and c.data_to_send() == b"AUTH PLAIN AHUAcA==\r\n"
    c, [ev] = start("never", ["AUTH CRAM-MD5"], credentials=("u", "p"), auth_plaintext=True)
    assert "mechanism" in ev.outcome.text and ev.outcome.transient


# --- MAIL parameters ---------------------------------------------------------

def test_size_limit_fails_permanently_without_sending():
    c = ready()
    c.send_message("s@x", RCPTS, size=1001)
    assert c.data_to_send() == b""
    [done] = events(c)
    assert [o.status for o in done.outcomes] == ["5.3.4", "5.3.4"]
    assert done.outcomes[0].code == 552 and done.outcomes[0].reply is None
    c.send_message("s@x", RCPTS[:1], size=1000)       # still usable
    assert c.data_to_send().startswith(b"MAIL FROM:<s@x> SIZE=1000\r\n")


def test_8bitmime():
    c = ready(["PIPELINING"])
    assert c.needs_7bit(True) and not c.needs_7bit(False)
    with pytest.raises(LocalProtocolError):
        c.send_message("s@x", RCPTS, body_8bit=True)
    c.send_message("s@x", RCPTS[:1], body_8bit=False)
    assert c.data_to_send() == b"MAIL FROM:<s@x>\r\nRCPT TO:<r1@y>\r\nDATA\r\n"
    c = ready()
    c.send_message("s@x", RCPTS[:1], body_8bit=True)
    assert c.data_to_send().startswith(b"MAIL FROM:<s@x> BODY=8BITMIME\r\n")


def test_smtputf8():
    c = ready(["PIPELINING", "8BITMIME"])
    c.send_message("s@x", RCPTS, smtputf8=True)
    assert c.data_to_send() == b""
    [done] = events(c)
    assert all(o.code == 553 and o.status == "5.6.7" for o in done.outcomes)
    c.send_message("s@x", [("jörg@y", None, None)])  # a UTF-8 address needs it too
    assert c.data_to_send() == b"" and events(c)[0].outcomes[0].status == "5.6.7"
    c = ready()
    c.send_message("s@x", [("jörg@y", None, None)])
    assert c.data_to_send() == ("MAIL FROM:<s@x> SMTPUTF8\r\nRCPT TO:<jörg@y>\r\n"
                                "DATA\r\n").encode()


def test_dsn_parameters_only_with_dsn():
    rcpts = [("a@y", "SUCCESS,FAILURE", "rfc822;a+b@y"), ("b@y", "never", None)]
    c = ready()
    c.send_message("s@x", rcpts, ret="hdrs", envid="id=1 x")
    assert c.data_to_send() == (
        b"MAIL FROM:<s@x> RET=HDRS ENVID=id+3D1+20x\r\n"
        b"RCPT TO:<a@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@y\r\n"
        b"RCPT TO:<b@y> NOTIFY=NEVER\r\nDATA\r\n")
    c = ready(["PIPELINING"])
    c.send_message("s@x", rcpts, ret="hdrs", envid="id=1 x")
    assert c.data_to_send() == b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
    assert xtext("é+") == "+C3+A9+2B"


def test_cr_lf_in_addresses_never_reach_the_wire():
    c = ready()
    c.send_message("s@x", [("a@y>\r\nRSET", None, None), ("b@y", None, None)])
    assert c.data_to_send() == b"MAIL FROM:<s@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
    feed(c, b"250 ok\r\n250 ok\r\n354 go\r\n")
    c.end_body()
    assert c.data_to_send() == b".\r\n"
    [done] = feed(c, b"250 ok\r\n")
    assert done.outcomes[0].status == "5.1.3" and done.outcomes[1].ok
    c.send_message("s@x\r\nQUIT", RCPTS)
    assert c.data_to_send() == b"" and events(c)[0].outcomes[0].status == "5.1.7"


# --- per-recipient results -------------------------------------------------

def test_mixed_recipient_results():
    c = ready()
    rc = [("a@y", None, None), ("b@y", None, None), ("c@y", None, None)]
    c.send_message("s@x", rc)
    c.data_to_send()
    evs = feed(c, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n"
                  b"450 4.2.1 mailbox busy\r\n354 go\r\n")
    assert evs == [RcptReply(0, R(250, "2.1.5", "ok")),
                   RcptReply(1, R(550, "5.1.1", ["no such", "user"])),
                   RcptReply(2, R(450, "4.2.1", "mailbox busy")), SendBody()]
    assert evs[2].outcome.diagnostic == "smtp; 450 4.2.1 mailbox busy"
    assert evs[1].outcome.text == "no such user"
    c.end_body()
    [done] = feed(c, b"250 2.0.0 ok\r\n")
    assert [o.code for o in done.outcomes] == [250, 550, 450]
    assert [o.status for o in done.outcomes] == ["2.0.0", "5.1.1", "4.2.1"]


def test_enhanced_codes_only_when_advertised():
    c = ready(["PIPELINING"])
    c.send_message("s@x", RCPTS[:1])
    evs = feed(c, b"250 2.1.0 ok\r\n550 5.1.1 unknown\r\n503 5.5.1 no rcpt\r\n")
    assert evs[0].outcome.status == "5.0.0" and evs[0].outcome.text == "5.1.1 unknown"
    assert evs[0].outcome.reply == Reply(550, None, "5.1.1 unknown")
    assert evs[1] == TransactionDone([evs[0].outcome])


def test_mismatched_enhanced_class_is_ignored():
    c = ready()
    c.send_message("s@x", RCPTS[:1])
    [ev, _] = feed(c, b"250 ok\r\n550 4.1.1 odd\r\n554 no\r\n")
    assert ev.outcome.status == "5.0.0" and ev.outcome.text == "4.1.1 odd"


def test_all_rejected_unpipelined_then_rset_before_next():
    c = ready(["ENHANCEDSTATUSCODES"])
    c.send_message("s@x", RCPTS)
    c.data_to_send()
    feed(c, b"250 ok\r\n")
    c.data_to_send()
    feed(c, b"550 5.1.1 no\r\n")
    assert c.data_to_send() == b"RCPT TO:<r2@y>\r\n"
    evs = feed(c, b"551 5.1.6 moved\r\n")
    assert c.data_to_send() == b""                    # no DATA
    assert evs[-1] == TransactionDone([R(550, "5.1.1", "no"), R(551, "5.1.6", "moved")])
    c.send_message("s@x", RCPTS[:1])
    assert c.data_to_send() == b"RSET\r\n"
    feed(c, b"250 2.0.0 reset\r\n")
    assert c.data_to_send() == b"MAIL FROM:<s@x>\r\n"


def test_all_rejected_pipelined_data_refused_then_rset():
    c = ready()
    c.send_message("s@x", RCPTS)
    c.data_to_send()
    evs = feed(c, b"250 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
    assert isinstance(evs[-1], TransactionDone) and len(evs) == 3
    assert all(o.status == "5.1.1" for o in evs[-1].outcomes)
    c.send_message("s@x", RCPTS[:1])
    assert c.data_to_send() == b"RSET\r\nMAIL FROM:<s@x>\r\nRCPT TO:<r1@y>\r\nDATA\r\n"
    evs = feed(c, b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert evs[-1] == SendBody()


def test_all_rejected_pipelined_but_354_sends_empty_message():
    c = ready()
    c.send_message("s@x", RCPTS[:1])
    c.data_to_send()
    assert feed(c, b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n")[-1] == RcptReply(
        0, R(550, "5.1.1", "no"))
    assert c.data_to_send() == b".\r\n"
    [done] = feed(c, b"554 5.5.1 no valid recipients\r\n")
    assert done.outcomes == [R(550, "5.1.1", "no")]


def test_mail_refused_pipelined():
    c = ready()
    c.send_message("s@x", RCPTS)
    c.data_to_send()
    evs = feed(c, b"553 5.1.8 sender domain unknown\r\n503 5.5.1 need MAIL\r\n"
                  b"503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert evs == [TransactionDone([R(553, "5.1.8", "sender domain unknown")] * 2)]
    c.send_message("s@x", RCPTS[:1])
    assert c.data_to_send().startswith(b"MAIL")       # nothing to reset


def test_mail_refused_unpipelined_sends_no_rcpt():
    c = ready(["SIZE"])
    c.send_message("s@x", RCPTS)
    c.data_to_send()
    [done] = feed(c, b"452 too many\r\n")
    assert done.outcomes == [R(452, None, "too many")] * 2 and c.data_to_send() == b""


def test_data_refused_after_accepted_rcpts():
    c = ready()
    c.send_message("s@x", RCPTS)
    c.data_to_send()
    evs = feed(c, b"250 ok\r\n250 ok\r\n550 no\r\n451 4.3.0 later\r\n")
    assert evs[-1].outcomes == [R(451, "4.3.0", "later"), R(550, None, "no")]


# --- LMTP ------------------------------------------------------------------

def test_lmtp_one_reply_per_accepted_recipient():
    c = ready(lmtp=True)
    rc = [("a@y", None, None), ("b@y", None, None), ("c@y", None, None)]
    c.send_message("s@x", rc)
    assert c.data_to_send() == (b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nRCPT TO:<b@y>\r\n"
                                b"RCPT TO:<c@y>\r\nDATA\r\n")
    feed(c, b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n")
    c.send_body(b"hi\n")
    c.end_body()
    assert c.data_to_send() == b"hi\r\n.\r\n"
    assert feed(c, b"250 2.0.0 a delivered\r\n") == []          # one more owed
    [done] = feed(c, b"452 4.2.2 c over quota\r\n")
    assert done.outcomes == [R(250, "2.0.0", "a delivered"), R(550, "5.1.1", "no"),
                             R(452, "4.2.2", "c over quota")]


# --- 421 and lost connections ------------------------------------------------

def test_421_mid_transaction():
    c = ready(["ENHANCEDSTATUSCODES"])
    rc = [("a@y", None, None), ("b@y", None, None), ("c@y", None, None)]
    c.send_message("s@x", rc)
    c.data_to_send()
    feed(c, b"250 ok\r\n")
    c.data_to_send()
    feed(c, b"250 ok\r\n")
    c.data_to_send()
    evs = feed(c, b"421 4.4.2 closing, timeout\r\n")
    o421 = R(421, "4.4.2", "closing, timeout")
    assert evs == [TransactionDone([o421, o421, o421]), ConnectionClosed(o421, "rcpt")]
    assert c.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        c.send_message("s@x", rc)


def test_421_and_eof_while_sending_the_body():
    c = ready()
    c.send_message("s@x", RCPTS)
    c.data_to_send()
    feed(c, b"250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n")
    c.send_body(b"part 1\n")
    evs = feed(c, b"421 4.3.0 shutting down\r\n")
    assert evs[0].outcomes == [R(550, None, "no"), R(421, "4.3.0", "shutting down")]
    assert evs[1].stage == "body"
    c.send_body(b"more\n")                            # ignored once closed
    c.end_body()
    assert c.data_to_send() == b"part 1\r\n"


def test_eof_waiting_for_the_dot_reply():
    c = ready()
    c.send_message("s@x", RCPTS[:1])
    feed(c, b"250 ok\r\n250 ok\r\n354 go\r\n")
    c.end_body()
    evs = feed(c, b"")
    lost = Outcome(421, "4.4.2", "connection closed by the peer")
    assert evs == [TransactionDone([lost]), ConnectionClosed(lost, "dot")]


def test_unsolicited_421_when_idle_and_garbage_when_idle():
    c = ready()
    [ev] = feed(c, b"421 4.4.2 idle timeout\r\n")
    assert ev.stage == "idle" and ev.outcome.status == "4.4.2"
    c = ready()
    [ev] = feed(c, b"250 what\r\n")
    assert ev.outcome.status == "4.5.0" and "unexpected" in ev.outcome.text


def test_abort_mid_transaction_timeout():
    c = ready()
    c.send_message("s@x", RCPTS)
    c.abort("timeout waiting for the MAIL reply")
    t = Outcome(421, "4.4.2", "timeout waiting for the MAIL reply")
    assert events(c) == [TransactionDone([t, t]), ConnectionClosed(t, "mail")]


# --- reuse and QUIT ----------------------------------------------------------

def test_two_messages_on_one_connection_then_quit():
    c = ready()
    for n in range(2):
        c.send_message("s%d@x" % n, RCPTS[:1])
        assert c.data_to_send() == b"MAIL FROM:<s%d@x>\r\nRCPT TO:<r1@y>\r\nDATA\r\n" % n
        feed(c, b"250 ok\r\n250 ok\r\n354 go\r\n")
        c.send_body(b"m%d\n" % n)
        c.end_body()
        assert c.data_to_send() == b"m%d\r\n.\r\n" % n
        [done] = feed(c, b"250 2.0.0 ok %d\r\n" % n)
        assert done.outcomes[0].text == "ok %d" % n and c.state == "READY"
    c.quit()
    assert c.data_to_send() == b"QUIT\r\n"
    [ev] = feed(c, b"221 2.0.0 bye\r\n")
    assert ev == ConnectionClosed(R(221, "2.0.0", "bye"), "quit") and ev.outcome.ok
    c.quit()                                          # harmless once closed
    assert c.data_to_send() == b""


def test_quit_answered_by_eof_and_misuse():
    c = ready()
    with pytest.raises(LocalProtocolError):
        c.send_body(b"x")
    c.quit()
    [ev] = feed(c, b"")
    assert ev.outcome.code == 221 and ev.stage == "quit"
    c = ready()
    c.send_message("s@x", RCPTS)
    with pytest.raises(LocalProtocolError):
        c.quit()
    with pytest.raises(LocalProtocolError):
        c.send_message("s@x", RCPTS)


def test_rset_after_data_refused_then_body_failure_reuse():
    c = ready(["PIPELINING"])
    c.send_message("s@x", RCPTS[:1])
    c.data_to_send()
    feed(c, b"250 ok\r\n250 ok\r\n451 local error\r\n")
    c.send_message("s@x", RCPTS[:1])
    assert c.data_to_send() == b"RSET\r\nMAIL FROM:<s@x>\r\nRCPT TO:<r1@y>\r\nDATA\r\n"
    feed(c, b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    c.end_body()
    assert c.data_to_send() == b".\r\n"
    [done] = feed(c, b"554 5.6.0 content rejected\r\n")
    assert done.outcomes[0].permanent
    c.send_message("s@x", RCPTS[:1])                  # the dot's reply ends it: no RSET
    assert c.data_to_send().startswith(b"MAIL")


# --- reply parsing -------------------------------------------------------------

@pytest.mark.parametrize("data,what", [
    (b"25O ok\r\n", "bad reply"),
    (b"250ok\r\n", "bad reply"),
    (b"199 info\r\n", "bad reply"),
    (b"250-a\r\n251 b\r\n", "bad reply"),
    (b"250 " + b"x" * 5000, "over 4096"),
    (b"250 " + b"x" * 5000 + b"\r\n", "over 4096"),
    (b"250-x\r\n" * 101, "over 100 lines"),
])
def test_bad_replies_are_protocol_errors(data, what):
    c = ready()
    c.send_message("s@x", RCPTS)
    c.data_to_send()
    evs = feed(c, data)
    assert [type(e) for e in evs] == [TransactionDone, ConnectionClosed]
    o = evs[1].outcome
    assert o.code == 451 and o.status == "4.5.0" and what in o.text
    assert evs[0].outcomes == [o, o]


def test_longest_reply_line_and_line_count_accepted():
    c = ready()
    c.send_message("s@x", RCPTS[:1])
    evs = feed(c, b"250-" + b"x" * 4092 + b"\r\n" + b"250-y\n" * 98 + b"250 z\r\n")
    assert evs == []                                  # the MAIL reply: 100 lines
    [ev] = feed(c, b"550 \xff\xfe bad utf-8\r\n")
    assert ev.outcome.text == "\ufffd\ufffd bad utf-8"


# --- the body encoder --------------------------------------------------------------

def reference(body):
    """CRLF, LF and bare CR each end a line; lines starting with "." get one more."""
    text = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = text.split(b"\n")
    tail = lines.pop()                                # "" when the body ended a line
    out = b"".join((b"." + ln if ln[:1] == b"." else ln) + b"\r\n" for ln in lines)
    if tail:
        out += (b"." + tail if tail[:1] == b"." else tail) + b"\r\n"
    return out + b".\r\n"


TRICKY = (b".start\n..two\nmid.dle\n.\n\n.\r\nx\ry\r\n\r\r\n\r\n\n.\r.\n"
          b"end.\n.")


def encode(chunks):
    e = BodyEncoder()
    return b"".join(e.encode(ch) for ch in chunks) + e.terminator()


def test_body_encoder_every_single_and_double_split():
    want = reference(TRICKY)
    assert want.startswith(b"..start\r\n...two\r\nmid.dle\r\n..\r\n\r\n..\r\nx\r\ny\r\n")
    assert want.endswith(b"end.\r\n..\r\n.\r\n")
    n = len(TRICKY)
    for i in range(n + 1):
        assert encode([TRICKY[:i], TRICKY[i:]]) == want, i
        for j in range(i, n + 1):
            assert encode([TRICKY[:i], TRICKY[i:j], TRICKY[j:]]) == want, (i, j)
    assert encode([TRICKY[k:k + 1] for k in range(n)]) == want


def test_body_encoder_endings():
    assert encode([b"no newline"]) == b"no newline\r\n.\r\n"
    assert encode([b"line\n"]) == b"line\r\n.\r\n"
    assert encode([]) == b".\r\n"
    assert encode([b"", b""]) == b".\r\n"
    assert encode([b"a\r", b"\n", b"\n"]) == b"a\r\n\r\n.\r\n"
    assert encode([b"."]) == b"..\r\n.\r\n"
    assert encode([bytearray(b"x\n.y")]) == b"x\r\n..y\r\n.\r\n"

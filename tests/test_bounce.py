"""DSNs (RFC 3464) and dead.letter: structure parsed back with the email package and a
real MUA parser (mu/GMime), NOTIFY/RET/null-sender rules, 8-bit originals kept byte
for byte, bounded memory for a 20 MB original, mbox format and symlink refusal."""
import email
import email.policy
import mailbox
import os
import subprocess
import sys
import time

import pytest

from conftest import require_program
from pysendmail.delivery.bounce import arpadate, interval, make_dsn, write_dsn
from pysendmail.delivery.deadletter import save_dead_letter
from pysendmail.model import Envelope, Recipient

PYTHON = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "mail.example.com"
CREATED = 1795704326          # 2026-11-26 14:45:26 UTC
NOW = CREATED + 3600

HEADERS = [b"Received: (from alice@localhost)\n\tby mail.example.com id 6AQEjQR0019689",
           b"From: Alice <alice@example.com>", b"To: bob@example.org, carol@example.net",
           b"Subject: quarterly report", b"Message-Id: <orig@example.com>"]
BODY = b"Hello Bob,\n\nthe numbers are in.\n"


def envelope(sender="alice@example.com", **kw):
    kw.setdefault("headers", list(HEADERS))
    return Envelope(qid="6AQEjQR0019689", created=CREATED, sender=sender,
                    relay="alice@localhost", **kw)


def bob(**kw):
    values = dict(addr="bob@example.org", mailer="esmtp", host="mx.example.org",
                  status="5.1.1", diag="550 5.1.1 <bob@example.org>... User unknown")
    values.update(kw)
    return Recipient("<bob@example.org>", **values)


def local_user(address="nosuchuser", **kw):
    values = dict(mailer="local", status="5.1.1", diag="550 5.1.1 User unknown")
    values.update(kw)
    return Recipient(address, **values)


@pytest.fixture
def body(tmp_path):
    path = tmp_path / "df6AQEjQR0019689"
    path.write_bytes(BODY)
    return str(path)


def parse(data):
    return email.message_from_bytes(data, policy=email.policy.compat32)


def status_blocks(msg):
    report = msg.get_payload()[1]
    assert report.get_content_type() == "message/delivery-status"
    return [dict(block.items()) for block in report.get_payload()]


def test_failure_structure(body):
    env = envelope(envid="QQ314159", ret="")
    to, data = make_dsn(env, [bob(orcpt="rfc822;bob@example.org"), local_user()],
                        "failure", body, HOST, NOW, dsn_qid="6AQFjQS0019700")
    assert to == "alice@example.com"
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "Mail Delivery Subsystem <MAILER-DAEMON@mail.example.com>"
    assert msg["To"] == "alice@example.com"
    assert msg["Subject"] == "Returned mail: see transcript for details"
    assert msg["Auto-Submitted"] == "auto-generated (failure)"
    assert msg["Message-Id"] == "<%s.6AQFjQS0019700@mail.example.com>" % time.strftime(
        "%Y%m%d%H%M", time.localtime(NOW))
    assert msg["Date"] == arpadate(NOW)
    assert msg.get_boundary() == "6AQFjQS0019700.%d/mail.example.com" % NOW
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "message/rfc822"]

    text = parts[0].get_payload()
    assert "The original message was received at %s\nfrom alice@localhost\n" % arpadate(
        CREATED) in text
    assert ("   ----- The following addresses had permanent fatal errors -----\n"
            "<bob@example.org>\n"
            "    (reason: 550 5.1.1 <bob@example.org>... User unknown)\n"
            "nosuchuser\n"
            "    (reason: 550 5.1.1 User unknown)\n") in text
    assert "   ----- Transcript of session follows -----\n" in text
    assert "550 5.1.1 nosuchuser... User unknown" in text

    per_message, first, second = status_blocks(msg)
    assert per_message == {"Original-Envelope-Id": "QQ314159",
                           "Reporting-MTA": "dns; mail.example.com",
                           "Arrival-Date": arpadate(CREATED)}
    assert first["Original-Recipient"] == "rfc822;bob@example.org"
    assert first["Final-Recipient"] == "RFC822; bob@example.org"
    assert first["Action"] == "failed"
    assert first["Status"] == "5.1.1"
    assert first["Remote-MTA"] == "DNS; mx.example.org"
    assert first["Diagnostic-Code"] == "SMTP; 550 5.1.1 <bob@example.org>... User unknown"
    assert first["Last-Attempt-Date"] == arpadate(NOW)
    assert "Will-Retry-Until" not in first
    assert second["Final-Recipient"] == "RFC822; nosuchuser@mail.example.com"
    assert second["Diagnostic-Code"] == "X-Unix; 550 5.1.1 User unknown"
    assert "Remote-MTA" not in second and "Original-Recipient" not in second

    original = parts[2].get_payload()[0]
    assert original["Subject"] == "quarterly report"
    assert original["Message-Id"] == "<orig@example.com>"
    assert original.get_payload() == BODY.decode()


def test_delay_warning(body):
    r = bob(status="4.4.1", diag="Connection refused by mx.example.org.")
    to, data = make_dsn(envelope(), [r], "delay", body, HOST, NOW)
    msg = parse(data)
    assert msg["Subject"] == "Warning: could not send message for past 4 hours"
    assert msg["Auto-Submitted"] == "auto-generated (warning-timeout)"
    text = msg.get_payload()[0].get_payload()
    assert "**      THIS IS A WARNING MESSAGE ONLY      **" in text
    assert "----- The following addresses had transient non-fatal errors -----" in text
    assert "Will keep trying until message is 5 days old" in text
    _, block = status_blocks(msg)
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.4.1"
    assert block["Will-Retry-Until"] == arpadate(CREATED + 5 * 86400)
    # Without RET=FULL a warning returns only the header.
    third = msg.get_payload()[2]
    assert third.get_content_type() == "text/rfc822-headers"
    assert "Subject: quarterly report" in third.get_payload()
    assert "numbers" not in third.get_payload()
    _, data = make_dsn(envelope(ret="FULL"), [r], "delay", body, HOST, NOW,
                       warn_after=3600, return_after=2 * 86400)
    msg = parse(data)
    assert msg["Subject"] == "Warning: could not send message for past 1 hour"
    assert msg.get_payload()[2].get_content_type() == "message/rfc822"
    assert status_blocks(msg)[1]["Will-Retry-Until"] == arpadate(CREATED + 2 * 86400)


def test_success_only_for_those_who_asked(body):
    asked = local_user(address="carol", addr="carol", notify="SUCCESS,FAILURE",
                       status="2.0.0", diag="")
    relayed = bob(notify="SUCCESS", status="2.0.0", diag="250 2.0.0 OK")
    silent = bob(addr="dave@example.net", notify="", status="2.0.0", diag="")
    to, data = make_dsn(envelope(), [asked, relayed, silent], "success", body, HOST, NOW)
    msg = parse(data)
    assert msg["Subject"] == "Return receipt"
    assert msg["Auto-Submitted"] == "auto-generated (return-receipt)"
    blocks = status_blocks(msg)
    assert [b["Action"] for b in blocks[1:]] == ["delivered", "relayed"]
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "RFC822; carol@mail.example.com", "RFC822; bob@example.org"]
    text = msg.get_payload()[0].get_payload()
    assert "carol  (successfully delivered to mailbox)" in text
    assert "<bob@example.org>  (relayed to non-DSN-aware mailer)" in text
    assert "dave" not in text
    assert make_dsn(envelope(), [silent], "success", body, HOST, NOW) is None


def test_notify_never_and_partial_notify(body):
    assert make_dsn(envelope(), [bob(notify="NEVER")], "failure", body, HOST, NOW) is None
    assert make_dsn(envelope(), [bob(notify="NEVER")], "delay", body, HOST, NOW) is None
    assert make_dsn(envelope(), [bob(notify="SUCCESS")], "failure", body, HOST, NOW) is None
    assert make_dsn(envelope(), [bob(notify="FAILURE")], "delay", body, HOST, NOW) is None
    _, data = make_dsn(envelope(), [bob(notify="NEVER"), local_user(notify="FAILURE")],
                       "failure", body, HOST, NOW)
    blocks = status_blocks(parse(data))
    assert len(blocks) == 2
    assert blocks[1]["Final-Recipient"] == "RFC822; nosuchuser@mail.example.com"


def test_null_sender_never_gets_a_dsn(body):
    env = envelope(sender="")
    assert make_dsn(env, [bob()], "delay", body, HOST, NOW) is None
    assert make_dsn(env, [bob(notify="SUCCESS")], "success", body, HOST, NOW) is None
    # A failed bounce is a double bounce: to the postmaster, never to <>.
    to, data = make_dsn(env, [bob()], "failure", body, HOST, NOW, postmaster="postmaster")
    assert to == "postmaster"
    msg = parse(data)
    assert msg["To"] == "postmaster"
    assert msg["Subject"] == "Postmaster notify: see transcript for details"
    assert msg["Auto-Submitted"] == "auto-generated (postmaster-notification)"
    assert "with id 6AQEjQR0019689" in msg.get_payload()[0].get_payload()
    # And a failed postmaster notice is dropped, so no loop can start.
    notice = envelope(sender="", headers=[b"Subject: Postmaster notify: see transcript "
                                          b"for details"])
    assert make_dsn(notice, [bob()], "failure", body, HOST, NOW) is None
    assert make_dsn(env, [bob()], "failure", body, HOST, NOW, postmaster="") is None


def test_ret_hdrs_returns_only_the_header(body):
    _, data = make_dsn(envelope(ret="HDRS"), [bob()], "failure", body, HOST, NOW)
    msg = parse(data)
    part = msg.get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert part.get_payload() == b"".join(h + b"\n" for h in HEADERS).decode()
    assert b"numbers" not in data


def test_lost_body_still_bounces_with_the_header(tmp_path):
    to, data = make_dsn(envelope(), [bob()], "failure", str(tmp_path / "gone"), HOST, NOW)
    assert to == "alice@example.com"
    part = parse(data).get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert "Subject: quarterly report" in part.get_payload()


def test_eight_bit_original_is_kept_byte_for_byte(tmp_path):
    raw = (b"caf\xc3\xa9 na\xefve latin-1 \xff\xfe\n"
           b"From the start\n.dot line\n\x00nul\n" * 50)
    path = tmp_path / "df"
    path.write_bytes(raw)
    headers = HEADERS + [b"Subject2: =?utf-8?q?x?= r\xc3\xa9sum\xc3\xa9"]
    env = envelope(headers=headers)
    _, data = make_dsn(env, [bob()], "failure", str(path), HOST, NOW)
    original = b"".join(h + b"\n" for h in headers) + b"\n" + raw
    assert original in data
    msg = email.message_from_bytes(data)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    part = msg.get_payload()[2]
    assert part["Content-Transfer-Encoding"] == "8bit"
    inner = part.get_payload()[0]
    assert inner.get_payload(decode=True) == raw
    # Plain ASCII gets no 8bit label.
    _, data = make_dsn(envelope(), [bob()], "failure", str(_ascii(tmp_path)), HOST, NOW)
    assert b"Content-Transfer-Encoding" not in data


def _ascii(tmp_path):
    path = tmp_path / "ascii"
    path.write_bytes(BODY)
    return path


def test_body_cannot_break_out_of_the_report(tmp_path):
    boundary = "6AQEjQR0019689.%d/%s" % (NOW, HOST)
    raw = ("evil\n--%s\nContent-Type: message/delivery-status\n\nAction: delivered\n"
           "--%s--\n" % (boundary, boundary)).encode()
    path = tmp_path / "df"
    path.write_bytes(raw)
    r = bob(diag="550 5.1.1 x\nAction: delivered\r\nStatus: 2.0.0")
    _, data = make_dsn(envelope(), [r], "failure", str(path), HOST, NOW,
                       dsn_qid="6AQEjQR0019689")
    msg = parse(data)
    assert msg.get_boundary() != boundary
    assert len(msg.get_payload()) == 3
    blocks = status_blocks(msg)
    assert blocks[1]["Action"] == "failed" and blocks[1]["Status"] == "5.1.1"
    assert blocks[1]["Diagnostic-Code"] == "SMTP; 550 5.1.1 x Action: delivered  Status: 2.0.0"
    assert msg.get_payload()[2].get_payload()[0].get_payload() == raw.decode()


def test_a_real_mua_parser_reads_it(body, tmp_path):
    mu = require_program("mu")
    _, data = make_dsn(envelope(), [bob(), local_user()], "failure", body, HOST, NOW)
    path = tmp_path / "dsn.eml"
    path.write_bytes(data)
    home = tmp_path / "muhome"
    home.mkdir()
    out = subprocess.run([mu, "extract", "--muhome=%s" % home, str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines() if line.startswith("  ")]
    assert [(fields[0], fields[2]) for fields in lines] == [
        ("1", "text/plain"), ("2", "message/delivery-status"), ("3", "message/rfc822")]
    view = subprocess.run([mu, "view", "--muhome=%s" % home, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert view.returncode == 0, view.stderr
    assert "Subject: Returned mail: see transcript for details" in view.stdout
    assert "The following addresses had permanent fatal errors" in view.stdout


MEMORY_PROBE = r"""
import os, resource, sys
sys.path.insert(0, %(root)r)
from pysendmail.delivery.bounce import write_dsn
from pysendmail.model import Envelope, Recipient
env = Envelope(qid="6AQEjQR0019689", created=1795704326, sender="alice@example.com",
               headers=[b"Subject: big", b"From: alice@example.com"])
rcpt = [Recipient("bob@example.org", status="5.2.2", diag="552 5.2.2 Mailbox full",
                  mailer="esmtp", host="mx.example.org")]
small, big, out = sys.argv[1:4]
with open(out, "wb") as f:
    write_dsn(f, env, rcpt, "failure", small, "mail.example.com", 1795707926)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(out, "wb") as f:
    write_dsn(f, env, rcpt, "failure", big, "mail.example.com", 1795707926)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after)
"""


def test_twenty_megabytes_in_bounded_memory(tmp_path):
    small = tmp_path / "small"
    small.write_bytes(BODY)
    big = tmp_path / "big"
    line = b"x" * 77 + b"\xc3\xa9\n"
    with open(big, "wb") as f:
        for _ in range(20 * 1024 * 1024 // len(line)):
            f.write(line)
    out = tmp_path / "dsn"
    proc = subprocess.run([PYTHON, "-c", MEMORY_PROBE % {"root": ROOT}, str(small), str(big),
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    before, after = map(int, proc.stdout.split())
    assert after - before < 4 * 1024, (before, after)      # KiB: under 4 MB of growth
    assert out.stat().st_size > big.stat().st_size
    with open(out, "rb") as f:
        f.seek(-200, os.SEEK_END)
        tail = f.read()
    assert tail.endswith(b"x\xc3\xa9\n\n--6AQEjQR0019689.1795707926/mail.example.com--\n")


def test_interval_text():
    assert interval(4 * 3600) == "4 hours"
    assert interval(86400) == "1 day"
    assert interval(5 * 86400 + 3600 + 60) == "5 days, 1 hour, 1 minute"


def test_write_dsn_writes_nothing_when_no_dsn_is_due(body, tmp_path):
    path = tmp_path / "out"
    with open(path, "wb") as f:
        assert write_dsn(f, envelope(sender=""), [bob()], "delay", body, HOST, NOW) is None
    assert path.read_bytes() == b""


# -- dead.letter ------------------------------------------------------------

REF_DEAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ref", "10_dead_letter.txt")


def test_dead_letter_matches_sendmails(tmp_path):
    with open(REF_DEAD, "rb") as f:
        reference = b"".join(line for line in f if not line.startswith(b"# "))
    first = reference.split(b"\nFrom root ")[0] + b"\n"
    head, _, rest = first.partition(b"\n\n")
    lines = head.split(b"\n")
    assert lines[0] == b"From root Thu Nov 26 14:45:26 2026"
    assert lines[1] == b"Return-Path: <root>"
    headers, current = [], []
    for line in lines[2:]:
        if line[:1] in (b" ", b"\t"):
            current.append(line)
        else:
            if current:
                headers.append(b"\n".join(current))
            current = [line]
    headers.append(b"\n".join(current))
    body = tmp_path / "df"
    body.write_bytes(rest[:-1])                       # "hello\n"; the blank line is ours
    env = Envelope(qid="6AQEjQAp019770", sender="root", headers=headers)
    target = tmp_path / "dead.letter"
    when = time.mktime((2026, 11, 26, 14, 45, 26, 0, 0, -1))
    assert save_dead_letter(env, str(body), str(target), when) == str(target)
    assert target.read_bytes() == first
    assert os.stat(target).st_mode & 0o777 == 0o600
    save_dead_letter(env, str(body), str(target), when)
    assert target.read_bytes() == first + first


def test_dead_letter_escapes_from_lines_and_ends_cleanly(tmp_path):
    body = tmp_path / "df"
    body.write_bytes(b"From here\nnot From\nFrom there")
    env = Envelope(sender="", headers=[b"Return-Path: <forged@x>", b"Subject: s"])
    target = tmp_path / "dead.letter"
    save_dead_letter(env, str(body), str(target), 0)
    data = target.read_bytes()
    assert data.startswith(b"From MAILER-DAEMON ")
    assert data.split(b"\n", 1)[1] == (b"Return-Path: <>\nSubject: s\n\n>From here\nnot From\n"
                                       b">From there\n\n")
    box = mailbox.mbox(str(target), create=False)
    try:
        msgs = list(box)
    finally:
        box.close()
    assert len(msgs) == 1 and msgs[0]["Subject"] == "s"


def test_dead_letter_refuses_symlinks_and_links(tmp_path):
    body = tmp_path / "df"
    body.write_bytes(BODY)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep\n")
    link = tmp_path / "dead.letter"
    os.symlink(victim, link)
    env = envelope()
    with pytest.raises(OSError):
        save_dead_letter(env, str(body), str(link), NOW)
    hard = tmp_path / "hard.letter"
    os.link(victim, hard)
    with pytest.raises(OSError):
        save_dead_letter(env, str(body), str(hard), NOW)
    assert victim.read_bytes() == b"keep\n"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        save_dead_letter(env, str(body), str(fifo), NOW)


def test_dead_letter_failure_leaves_the_file_as_it_was(tmp_path):
    target = tmp_path / "dead.letter"
    target.write_bytes(b"From old Thu Jan  1 00:00:00 1970\n\nold\n\n")
    with pytest.raises(OSError):
        save_dead_letter(envelope(), str(tmp_path / "missing-body"), str(target), NOW)
    assert target.read_bytes() == b"From old Thu Jan  1 00:00:00 1970\n\nold\n\n"

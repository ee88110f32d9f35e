"""Relay control through the real daemon: addresses and client situations, the classic
open-relay tricks, relay-domains and the access map. (The policy's own battery with
many more cases, and Debian's cf, is tests/test_relay_policy.py.)

Clients: `local` connects from 127.0.0.1 (this host: may relay), `outside` from
127.0.0.2 (no name in /etc/hosts: an outside client, as Sendmail sees it), `partner`
from 127.0.0.3 (Connect:127.0.0.3 RELAY in the access map), `auth` from 127.0.0.2
after STARTTLS and AUTH.
"""
import os
import smtplib
import ssl

import pytest

from conftest import Instance
from smtpd_helpers import SMTPDaemon, queued

PASSWORD = "relay test pw"
SOURCES = {"local": "127.0.0.1", "outside": "127.0.0.2", "partner": "127.0.0.3",
           "auth": "127.0.0.2"}

ACCESS = """\
Connect:127.0.0.3\tRELAY
To:blocked.example\tREJECT
To:tempfail.example\tERROR:4.7.1:451 try later
From:spammer@bad.example\tREJECT
To:void.example\tDISCARD
"""

# (recipient, client, expected reply code, expected enhanced code or None)
BATTERY = [
    ("root@localhost", "outside", 250, "2.1.5"),
    ("postmaster@localhost", "outside", 250, "2.1.5"),
    ("root@[127.0.0.1]", "outside", 250, "2.1.5"),
    ("root@LOCALHOST.", "outside", 250, "2.1.5"),
    ("nosuchuser@localhost", "outside", 550, "5.1.1"),
    ("victim@elsewhere.example", "outside", 550, "5.7.1"),
    ("VICTIM@ELSEWHERE.EXAMPLE", "outside", 550, "5.7.1"),
    ("victim@elsewhere.example.", "outside", 550, "5.7.1"),
    ("victim@[192.0.2.1]", "outside", 550, "5.7.1"),
    ("victim%elsewhere.example@localhost", "outside", 550, None),
    ("elsewhere.example!victim@localhost", "outside", 550, None),
    ('"victim@elsewhere.example"@localhost', "outside", 550, None),
    ("@localhost:victim@elsewhere.example", "outside", 550, "5.7.1"),
    ("victim@localhost.elsewhere.example", "outside", 550, "5.7.1"),
    ("victim@elsewhere.example", "local", 250, "2.1.5"),
    ("victim@elsewhere.example", "auth", 250, "2.1.5"),
    ("victim@elsewhere.example", "partner", 250, "2.1.5"),
    ("someone@partner.example", "outside", 250, "2.1.5"),
    ("someone@mx.partner.example", "outside", 250, "2.1.5"),
    ("someone@notpartner.example", "outside", 550, "5.7.1"),
    ("x@blocked.example", "local", 550, "5.7.1"),
    ("x@tempfail.example", "local", 451, "4.7.1"),
]


@pytest.fixture(scope="module")
def relay_daemon(sm_bin, tmp_path_factory):
    base = tmp_path_factory.mktemp("relay") / "pysendmail"
    base.mkdir()
    inst = Instance(sm_bin, base)
    etc = base / "etc"
    etc.mkdir()
    (etc / "relay-domains").write_text("partner.example\n")
    (etc / "access").write_text(ACCESS)
    inst.run(["passwd", "carol"], prog="pysendmail", input=(PASSWORD + "\n").encode(),
             check=True)
    d = SMTPDaemon(inst, ["-odq"])
    yield inst, d
    d.stop()


def _session(d, who):
    s = smtplib.SMTP("127.0.0.1", d.port, source_address=(SOURCES[who], 0), timeout=20)
    if who == "auth":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s.starttls(context=ctx)
        s.login("carol", PASSWORD)
    else:
        s.ehlo("client.example")
    return s


@pytest.mark.parametrize("rcpt,who,code,enhanced", BATTERY)
def test_relay_battery(relay_daemon, rcpt, who, code, enhanced):
    inst, d = relay_daemon
    with _session(d, who) as s:
        assert s.mail("sender@example.org")[0] == 250
        got, text = s.rcpt(rcpt)
        assert got == code, (rcpt, who, got, text)
        if enhanced:
            assert text.startswith(enhanced.encode()), (rcpt, who, text)
        s.rset()


def test_refused_recipients_queue_nothing_and_accepted_ones_do(relay_daemon):
    inst, d = relay_daemon
    before = set(queued(inst))
    with _session(d, "outside") as s:
        refused = s.sendmail("sender@example.org",
                             ["victim@elsewhere.example", "root@localhost"],
                             b"Subject: mixed\r\n\r\nx\r\n")
        assert list(refused) == ["victim@elsewhere.example"]
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("sender@example.org", ["victim@elsewhere.example"],
                       b"Subject: relay attempt\r\n\r\nx\r\n")
    new = set(queued(inst)) - before
    assert len(new) == 1
    with open(os.path.join(inst.path, "spool", "queue", "qf" + new.pop()), "rb") as f:
        qf = f.read()
    assert b"root@localhost" in qf and b"elsewhere.example" not in qf


def test_access_map_from_reject_and_discard(relay_daemon):
    inst, d = relay_daemon
    before = set(queued(inst))
    with _session(d, "local") as s:
        code, text = s.mail("spammer@bad.example")
        assert code == 550 and text.startswith(b"5.7.1"), text
        s.rset()
        # DISCARD: accepted as usual, then dropped without a trace in the queue
        assert s.sendmail("a@example.org", ["x@void.example"], b"Subject: d\r\n\r\nx\r\n") == {}
    assert set(queued(inst)) == before
    assert "discarded" in d.log_text()


def test_null_sender_is_accepted_for_local_recipients(relay_daemon):
    inst, d = relay_daemon
    with _session(d, "outside") as s:
        assert s.mail("<>")[0] == 250
        assert s.rcpt("postmaster@localhost")[0] == 250

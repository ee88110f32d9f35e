"""Milters for locally submitted mail (O Milter.submission=True): `sendmail` run as cron and
PHP run it, the message filtered when the pickup queues it, with the session Sendmail's
MSP path gives the MTA's filters (connect from localhost [127.0.0.1], HELO $j).

The filter is tests/milters/test_milter.py (a pymilter program; its action is picked by
the sender's local part).  The instance is private; `sendmail -q` runs the pickup, then
delivers to the invoking user's mbox.
"""
import os

import pytest

from milter_helpers import MYNAME, start_milter, stop, write_milter_cf
from pysendmail.queue import qfile

MESSAGE = b"Subject: from cron\nX-Remove: one\n\nthe output of a cron job\n"


@pytest.fixture
def setup(sm_root, tmp_path):
    m = start_milter(tmp_path)
    write_milter_cf(sm_root, [("main", m.spec, "T")], options={"Milter.submission": "True"})
    yield sm_root, m
    stop(m)


def me():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def submit(inst, sender, input=MESSAGE):
    return inst.run(["-odq", "-f", sender, me()], input=input, check=True)


def drops(inst):
    path = os.path.join(inst.path, "spool", "maildrop")
    return sorted(n for n in os.listdir(path) if not n.startswith(".")) \
        if os.path.isdir(path) else []


def queue_files(inst, prefix):
    path = os.path.join(inst.path, "spool", "queue")
    return sorted(n[2:] for n in os.listdir(path) if n.startswith(prefix))


def log_text(inst):
    path = os.path.join(inst.path, "state", "log", "maillog")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def test_changes_of_the_filter_reach_the_mailbox(setup):
    inst, m = setup
    submit(inst, "addheader@example.test")
    assert len(drops(inst)) == 1                # filtered submissions wait for the pickup
    inst.run(["-q"], check=True)
    assert drops(inst) == []
    msgs = inst.messages(me())
    assert len(msgs) == 1
    assert msgs[0].get_all("X-Added") == ["one", "two"]
    assert "the output of a cron job" in msgs[0].get_payload()


def test_the_filter_sees_the_msp_session(setup):
    inst, m = setup
    submit(inst, "accept@example.test")
    inst.run(["-q"], check=True)
    connect = m.events("connect")[-1]
    assert connect["hostname"] == "localhost" and connect["hostaddr"][0] == "127.0.0.1"
    assert connect["macros"]["j"] == MYNAME and connect["macros"]["{daemon_name}"] == "MTA"
    assert m.events("helo")[-1]["name"] == MYNAME
    mail = m.events("mail")[-1]
    assert mail["sender"] == "<accept@example.test>"
    qid = mail["macros"]["i"]
    assert "%s: from=accept@example.test," % qid in log_text(inst)
    names = {e["name"] for e in m.events("header")}
    assert {"Subject", "X-Remove", "Date", "Message-Id", "From"} <= names


def test_body_replacement_and_quarantine(setup):
    inst, m = setup
    submit(inst, "replacebody@example.test")
    submit(inst, "quarantine@example.test")
    inst.run(["-q"], check=True)
    msgs = inst.messages(me())
    assert len(msgs) == 1 and msgs[0].get_payload() == "new body\n" * 10000
    held = queue_files(inst, "hf")
    assert len(held) == 1
    with open(os.path.join(inst.path, "spool", "queue", "hf" + held[0]), "rb") as f:
        assert qfile.loads(f.read()).hold_reason == "held for review"
    assert "QUARANTINE: held for review" in inst.mailq("-qQ")
    inst.run(["-Q", "-qI" + held[0]], check=True)
    inst.run(["-q"], check=True)
    assert len(inst.messages(me())) == 2


def test_tempfail_keeps_it_in_the_maildrop(setup):
    inst, m = setup
    submit(inst, "tempfail@example.test")
    inst.run(["-q"], check=True)
    assert len(drops(inst)) == 1                 # nothing lost, nothing let through
    assert queue_files(inst, "qf") == [] and inst.messages(me()) == []
    assert "Milter: tempfail" in log_text(inst)


def test_discard_drops_it(setup):
    inst, m = setup
    submit(inst, "discard@example.test")
    inst.run(["-q"], check=True)
    assert drops(inst) == [] and queue_files(inst, "qf") == []
    assert inst.messages(me()) == []
    assert "Milter: discarded" in log_text(inst)


def test_reject_fails_the_recipients_and_returns_the_message(setup):
    inst, m = setup
    submit(inst, "reject@" + MYNAME)
    inst.run(["-q"], check=True)
    text = log_text(inst)
    qid = m.events("mail")[-1]["macros"]["i"]
    assert "%s: Milter: reject=554 5.7.1 Command rejected" % qid in text
    # the queue run returned it: a DSN (from=<>) about this very message was queued
    assert any("from=<>" in line and qid in line for line in text.splitlines())
    assert inst.messages(me()) == []            # the recipient never got it


def test_filter_down_waits_then_goes(sm_root, tmp_path):
    """F=T and no filter: the message waits in the maildrop; once the filter runs, the next
    pickup filters and queues it."""
    m = start_milter(tmp_path)
    spec = m.spec
    stop(m)
    write_milter_cf(sm_root, [("main", spec, "T")], options={"Milter.submission": "True"})
    submit(sm_root, "addheader@example.test")
    sm_root.run(["-q"], check=True)
    assert len(drops(sm_root)) == 1 and sm_root.messages(me()) == []
    port = int(spec.split(":")[1].split("@")[0])
    from milter_helpers import MILTER, PYTHON, Milter
    import subprocess
    import time
    log = str(tmp_path / "again.log")
    open(log, "w").close()
    proc = subprocess.Popen([PYTHON, MILTER, spec, log, "main"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    again = Milter(spec, log, proc)
    try:
        import socket
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        sm_root.run(["-q"], check=True)
        assert drops(sm_root) == []
        msgs = sm_root.messages(me())
        assert len(msgs) == 1 and msgs[0].get_all("X-Added") == ["one", "two"]
    finally:
        stop(again)

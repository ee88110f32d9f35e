"""Milters in the SMTP daemon: `sendmail -bD` of a private instance whose cf has X lines and
O InputMailFilters, talking to real pymilter milters (libmilter: Sendmail's own library)
over loopback inet: and unix: sockets.

Each end-of-message action is checked on what the daemon queued (the control file's
envelope and headers, the df body), each refusal on the SMTP reply the client got, and
the failure modes (a filter down, slow, dying mid-session, answering garbage) by F=T,
F=R, F=4 and no flag: the reply, the log line, and nothing half-queued.
"""
import os
import smtplib
import socket
import threading

import pytest

from conftest import Instance
from milter_helpers import MYNAME, start_chain_milter, start_milter, stop, write_milter_cf
from smtpd_helpers import SMTPDaemon, free_port, wait_for
from pysendmail.queue import qfile

RCPT = "root@" + MYNAME
MESSAGE = (b"From: someone@example.test\r\nSubject: please check\r\nX-Remove: one\r\n"
           b"X-Remove: two\r\n\r\nline one\r\nline two\r\n")


# ---- helpers ----------------------------------------------------------------------------

def queue_dir(inst):
    return os.path.join(inst.path, "spool", "queue")


def control(inst, qid):
    """(Envelope, 'qf' or 'hf') of a queued message, or (None, None)."""
    for kind in ("qf", "hf"):
        path = os.path.join(queue_dir(inst), kind + qid)
        if os.path.exists(path):
            with open(path, "rb") as f:
                return qfile.loads(f.read()), kind
    return None, None


def body(inst, qid):
    with open(os.path.join(queue_dir(inst), "df" + qid), "rb") as f:
        return f.read()


def headers(env):
    """[(name, value)] of the queued headers, values stripped and unfolded."""
    out = []
    for h in env.headers:
        name, _, value = h.decode("utf-8", "replace").partition(":")
        out.append((name, " ".join(value.split())))
    return out


def all_queued(inst):
    try:
        return sorted(n[2:] for n in os.listdir(queue_dir(inst)) if n[:2] in ("qf", "hf"))
    except FileNotFoundError:
        return []


def transaction(port, sender, rcpts=(RCPT,), message=MESSAGE, helo="client.example.test",
                mail_options=()):
    """One SMTP transaction: ('mail'|'rcpt'|'data', code, text) of the step that ended it;
    for an accepted message ('data', 250, qid)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo(helo)
        code, text = s.mail(sender, list(mail_options))
        if code != 250:
            return "mail", code, text.decode()
        good = 0
        for r in rcpts:
            code, text = s.rcpt(r)
            if code == 250:
                good += 1
            last = ("rcpt", code, text.decode())
        if not good:
            return last
        code, text = s.data(message)
        text = text.decode()
        return "data", code, text.split()[1] if code == 250 else text


@pytest.fixture(scope="module")
def main_setup(sm_bin, tmp_path_factory):
    """A daemon with one filter: tests/milters/test_milter.py (its action picked by the
    sender's local part)."""
    base = tmp_path_factory.mktemp("milters")
    m = start_milter(base)
    inst = Instance(sm_bin, base / "inst")
    os.makedirs(inst.path)
    write_milter_cf(inst, [("main", m.spec, "T")])
    d = SMTPDaemon(inst, ["-odq"])
    yield inst, d, m
    d.stop()
    stop(m)


# ---- every action ---------------------------------------------------------------------

REFUSALS = {
    "reject": (554, "5.7.1 Command rejected"),
    "tempfail": (451, "4.3.2 Please try again later"),
    "reply": (554, "5.7.0 go away 100%"),
    "replyml": (451, "4.7.1 first line\n4.7.1 second line\n4.7.1 third line"),
}


@pytest.mark.parametrize("action", sorted(REFUSALS))
def test_refusals_at_end_of_message(main_setup, action):
    inst, d, m = main_setup
    before = all_queued(inst)
    step, code, text = transaction(d.port, "%s@example.test" % action)
    assert (step, code, text) == ("data",) + REFUSALS[action]
    assert all_queued(inst) == before                      # nothing half-queued
    assert not [n for n in os.listdir(queue_dir(inst)) if n.startswith("tf")]


def test_discard_accepts_and_drops(main_setup):
    inst, d, m = main_setup
    before = all_queued(inst)
    step, code, qid = transaction(d.port, "discard@example.test")
    assert (step, code) == ("data", 250)
    assert all_queued(inst) == before and control(inst, qid) == (None, None)
    assert wait_for(lambda: "%s: Milter: discarded" % qid in d.log_text(), 5)


@pytest.mark.parametrize("action", ["accept", "continue"])
def test_accept_and_continue_queue_unchanged(main_setup, action):
    inst, d, m = main_setup
    step, code, qid = transaction(d.port, "%s@example.test" % action)
    assert (step, code) == ("data", 250)
    env, kind = control(inst, qid)
    assert kind == "qf" and env.sender == "%s@example.test" % action
    names = [n for n, _ in headers(env)]
    assert names == ["Received", "Date", "Message-Id", "From", "Subject", "X-Remove",
                     "X-Remove"]
    assert body(inst, qid) == b"line one\nline two\n"


def test_header_actions(main_setup):
    inst, d, m = main_setup
    _, code, qid = transaction(d.port, "addheader@example.test")
    assert code == 250
    assert headers(control(inst, qid)[0])[-2:] == [("X-Added", "one"), ("X-Added", "two")]

    _, code, qid = transaction(d.port, "insheader@example.test")
    h = headers(control(inst, qid)[0])
    # index 0 of the headers the filter saw: before the client's first; the daemon's own
    # fields (Received, Date, Message-Id: never shown to filters) stay on top
    assert [n for n, _ in h][:5] == ["Received", "Date", "Message-Id", "X-Inserted", "From"]

    _, code, qid = transaction(d.port, "chgheader@example.test")
    assert ("Subject", "changed subject") in headers(control(inst, qid)[0])

    _, code, qid = transaction(d.port, "delheader@example.test")
    h = headers(control(inst, qid)[0])
    assert [v for n, v in h if n == "X-Remove"] == ["one"]


def test_recipient_and_sender_actions(main_setup):
    inst, d, m = main_setup
    _, code, qid = transaction(d.port, "addrcpt@example.test")
    env = control(inst, qid)[0]
    assert [r.addr for r in env.recipients] == [RCPT, "new@example.test"]

    _, code, qid = transaction(d.port, "addrcptpar@example.test")
    env = control(inst, qid)[0]
    added = env.recipients[-1]
    assert (added.addr, added.notify, added.orcpt) == ("new2@example.test", "NEVER",
                                                       "rfc822;x@y")

    _, code, qid = transaction(d.port, "delrcpt@example.test",
                               rcpts=(RCPT, "old@example.test"))
    env = control(inst, qid)[0]
    assert [r.addr for r in env.recipients] == [RCPT]

    _, code, qid = transaction(d.port, "chgfrom@example.test")
    assert control(inst, qid)[0].sender == "bounce@example.test"


def test_replace_body(main_setup):
    inst, d, m = main_setup
    _, code, qid = transaction(d.port, "replacebody@example.test")
    assert code == 250
    assert body(inst, qid) == b"new body\n" * 10000
    assert control(inst, qid)[0].size == len(b"new body\n" * 10000)


def test_quarantine_holds_lists_and_releases(main_setup):
    inst, d, m = main_setup
    _, code, qid = transaction(d.port, "quarantine@example.test")
    assert code == 250
    env, kind = control(inst, qid)
    assert kind == "hf" and env.hold_reason == "held for review"
    assert "QUARANTINE: held for review" in inst.mailq("-qQ")
    assert wait_for(lambda: "%s: quarantine=held for review" % qid in d.log_text(), 5)
    inst.run(["-Q", "-qI" + qid], check=True)
    env, kind = control(inst, qid)
    assert kind == "qf" and not env.hold_reason


def test_progress_keeps_a_slow_filter_alive(main_setup):
    """PROGRESS three times, 0.6 s apart: each restarts the read timeout (R:10s here, but
    the overall E: timeout is what a progress-less filter would hit)."""
    inst, d, m = main_setup
    _, code, qid = transaction(d.port, "progress@example.test")
    assert code == 250 and control(inst, qid)[1] == "qf"


# ---- stages and macros ------------------------------------------------------------------

def test_stages_macros_and_queue_id(main_setup):
    inst, d, m = main_setup
    m.clear()
    _, code, qid = transaction(d.port, "accept@example.test", helo="stages.example.test")
    assert code == 250
    ev = m.events("eom")
    stages = [e["stage"] for e in m.events()]
    for stage in ("connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom"):
        assert stage in stages
    assert stages.index("connect") < stages.index("helo") < stages.index("mail") \
        < stages.index("rcpt") < stages.index("data") < stages.index("eom")
    connect = m.events("connect")[-1]
    assert connect["macros"]["j"] == MYNAME
    assert connect["macros"]["{daemon_name}"] == "MTA"
    assert connect["macros"]["_"].endswith("[127.0.0.1]")
    assert connect["family"] == 2 or connect["hostaddr"][0] == "127.0.0.1"
    assert m.events("helo")[-1]["name"] == "stages.example.test"
    mail = m.events("mail")[-1]
    assert mail["sender"] == "<accept@example.test>"
    assert mail["macros"]["i"] == qid                      # known from MAIL on
    assert mail["macros"]["{mail_addr}"] == "accept@example.test"
    assert m.events("rcpt")[-1]["macros"]["{rcpt_addr}"] == "root"
    assert ev[-1]["macros"]["i"] == qid
    assert ev[-1]["macros"]["{msg_id}"].startswith("<") and qid in ev[-1]["macros"]["{msg_id}"]
    assert {e["name"] for e in m.events("header")} >= {"From", "Subject", "X-Remove"}
    assert "Received" not in {e["name"] for e in m.events("header")}


def test_tls_macros_after_starttls(main_setup):
    """Milter.macros.helo's defaults are the TLS macros: after STARTTLS the HELO stage
    carries {tls_version} (the session's second HELO)."""
    import ssl
    inst, d, m = main_setup
    m.clear()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("tls.example.test")
        s.starttls(context=context)
        s.ehlo("tls.example.test")
        s.sendmail("accept@example.test", [RCPT], MESSAGE)
        version = s.sock.version()
    helos = m.events("helo")
    assert len(helos) == 2
    assert "{tls_version}" not in helos[0]["macros"]
    assert helos[1]["macros"]["{tls_version}"] == version


def test_esmtp_arguments_reach_the_filter(main_setup):
    inst, d, m = main_setup
    m.clear()
    _, code, qid = transaction(d.port, "accept@example.test",
                               mail_options=["BODY=8BITMIME", "SIZE=100", "ENVID=a+2Bb"])
    assert code == 250
    assert m.events("mail")[-1]["params"] == ["BODY=8BITMIME", "SIZE=100", "ENVID=a+2Bb"]


def test_rset_aborts_and_one_connection_serves_the_session(main_setup):
    inst, d, m = main_setup
    m.clear()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("two.example.test")
        s.mail("accept@example.test")
        s.rcpt(RCPT)
        s.rset()
        s.sendmail("accept@example.test", [RCPT], MESSAGE)
        s.sendmail("continue@example.test", [RCPT], MESSAGE)
    assert wait_for(lambda: m.events("close", wait=0), 5)
    stages = [e["stage"] for e in m.events()]
    assert stages.count("connect") == 1 and stages.count("helo") == 1
    assert stages.count("abort") >= 1 and stages.count("eom") == 2


def test_rcpt_and_helo_refusals(main_setup):
    inst, d, m = main_setup
    step, code, text = transaction(d.port, "accept@example.test",
                                   rcpts=("reject@example.test",))
    assert (step, code, text) == ("rcpt", 553, "5.1.3 no such user here")
    step, code, text = transaction(d.port, "accept@example.test",
                                   rcpts=("tempfail@example.test",))
    assert (step, code, text) == ("rcpt", 451, "4.3.2 Please try again later")
    # a rejected HELO: the session goes on, but no mail is taken (Sendmail's nullserver)
    step, code, text = transaction(d.port, "accept@example.test", helo="rejectme")
    assert (step, code) == ("mail", 550)


def test_unknown_command_reaches_the_filter(main_setup):
    inst, d, m = main_setup
    m.clear()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("unknown.example.test")
        code, _ = s.docmd("XYZZY", "plugh")
        assert code == 500
    assert wait_for(lambda: m.events("unknown", wait=0), 5)
    assert m.events("unknown")[-1]["cmd"].startswith("XYZZY plugh")


# ---- protocol flags: no-reply stages, no callbacks, rejected recipients ----------------

def test_lean_filter_over_unix_socket(sm_root, tmp_path):
    lean = start_milter(tmp_path, "lean", unix=True)
    try:
        write_milter_cf(sm_root, [("lean", lean.spec, "T")])
        d = SMTPDaemon(sm_root, ["-odq"])
        try:
            step, code, qid = transaction(d.port, "someone@example.test",
                                          rcpts=("nosuchuser@" + MYNAME, RCPT))
            assert (step, code) == ("data", 250)
            env, _ = control(sm_root, qid)
            assert ("X-Lean", "yes") in headers(env)
            rcpts = [e["rcpt"] for e in lean.events("rcpt")]
            # RCPT_REJ: the recipient the daemon refused reaches the filter too
            assert "<nosuchuser@%s>" % MYNAME in rcpts and "<%s>" % RCPT in rcpts
            assert lean.events("header") and not lean.events("body", wait=0)
        finally:
            d.stop()
    finally:
        stop(lean)


def test_header_leading_space(sm_root, tmp_path):
    m = start_milter(tmp_path, "leadspc")
    try:
        write_milter_cf(sm_root, [("lead", m.spec, "T")])
        d = SMTPDaemon(sm_root, ["-odq"])
        try:
            msg = b"Subject:  spaced\r\n\tand folded\r\nFrom: a@example.test\r\n\r\nbody\r\n"
            step, code, qid = transaction(d.port, "someone@example.test", message=msg)
            assert (step, code) == ("data", 250)
            seen = {e["name"]: e["value"] for e in m.events("header")}
            assert seen["Subject"] == "  spaced\n\tand folded"       # as sent, LF inside
            with open(os.path.join(queue_dir(sm_root), "qf" + qid), "rb") as f:
                raw = f.read()
            assert b"H X-Lead:  two spaces\n\tand a fold\n" in raw
            assert b"H X-Tight:no-space\n" in raw
        finally:
            d.stop()
    finally:
        stop(m)


def test_negotiated_data_size_is_respected(sm_root, tmp_path):
    """We offer 1 MB body chunks (Milter.maxdatasize); libmilter does not take them, so the
    chunks stay within 64 KB; the body arrives whole."""
    m = start_milter(tmp_path)
    try:
        write_milter_cf(sm_root, [("main", m.spec, "T")],
                        options={"Milter.maxdatasize": "1048575"})
        d = SMTPDaemon(sm_root, ["-odq"])
        try:
            big = b"".join(b"%07d %s\r\n" % (i, b"x" * 60) for i in range(5000))
            step, code, qid = transaction(d.port, "accept@example.test",
                                          message=b"Subject: big\r\n\r\n" + big)
            assert (step, code) == ("data", 250)
            sizes = [e["size"] for e in m.events("body")]
            assert max(sizes) <= 65535 and len(sizes) >= 5
            assert sum(sizes) == len(big)
        finally:
            d.stop()
    finally:
        stop(m)


def test_skip_ends_the_body_early(main_setup):
    inst, d, m = main_setup
    m.clear()
    big = b"".join(b"%07d %s\r\n" % (i, b"y" * 60) for i in range(5000))
    step, code, qid = transaction(d.port, "skip@example.test",
                                  message=b"Subject: skip\r\n\r\n" + big)
    assert (step, code) == ("data", 250)
    assert len(m.events("body")) == 1               # SKIP after the first chunk
    assert m.events("eom")
    assert body(inst, qid) == big.replace(b"\r\n", b"\n")


# ---- chains -------------------------------------------------------------------------------

def test_chain_of_three_each_sees_the_earlier_changes(sm_root, tmp_path):
    a = start_chain_milter(tmp_path, "a", {"eom": [["addheader", "X-A", "from a"],
                                                   ["chgheader", "Subject", 1, "by a"]]})
    b = start_chain_milter(tmp_path, "b", {"eom": [["echo", "X-B-Saw"],
                                                   ["addrcpt", "<b@example.test>"]]},
                           unix=True)
    c = start_chain_milter(tmp_path, "c", {"eom": [["tagbody", "-- c"],
                                                   ["quarantine", "by c"]]})
    try:
        write_milter_cf(sm_root, [("a", a.spec, "T"), ("b", b.spec, "T"),
                                  ("c", c.spec, "T")])
        d = SMTPDaemon(sm_root, ["-odq"])
        try:
            step, code, qid = transaction(d.port, "someone@example.test")
            assert (step, code) == ("data", 250)
            env, kind = control(sm_root, qid)
            h = headers(env)
            assert ("X-A", "from a") in h and ("Subject", "by a") in h
            assert ("X-B-Saw", "by a") in h                     # b saw a's Subject
            assert [r.addr for r in env.recipients] == [RCPT, "b@example.test"]
            assert body(sm_root, qid) == b"line one\nline two\n-- c\n"
            assert (kind, env.hold_reason) == ("hf", "by c")
            seen_by_c = c.events("eom")[-1]["headers"]
            assert ["X-A", "from a"] in seen_by_c and ["X-B-Saw", "by a"] in seen_by_c
        finally:
            d.stop()
    finally:
        for m in (a, b, c):
            stop(m)


def test_chain_of_two_first_refusal_wins(sm_root, tmp_path):
    a = start_chain_milter(tmp_path, "a", {"mail": "reply:550:5.7.26:sender a refused"})
    b = start_chain_milter(tmp_path, "b", {})
    try:
        write_milter_cf(sm_root, [("a", a.spec, "T"), ("b", b.spec, "T")])
        d = SMTPDaemon(sm_root, ["-odq"])
        try:
            assert transaction(d.port, "x@example.test") == ("mail", 550,
                                                             "5.7.26 sender a refused")
            assert not b.events("mail", wait=0.3)       # the later filter is not asked
        finally:
            d.stop()
    finally:
        stop(a)
        stop(b)


# ---- failure modes ------------------------------------------------------------------------

def closed_port():
    """A loopback port nobody listens on (a filter that is down)."""
    return free_port()


def greeting(port):
    """The first bytes the daemon says to a new connection (b"" when it says nothing)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return s.recv(200)
    except OSError:
        return b""


@pytest.mark.parametrize("flags,expect", [
    ("T", ("mail", 451, "4.3.2 Please try again later")),
    ("R", None),          # greeting 554: the client cannot even start
    ("", ("data", 250)),
])
def test_filter_down(sm_root, flags, expect):
    write_milter_cf(sm_root, [("down", "inet:%d@127.0.0.1" % closed_port(), flags)])
    if flags == "R":
        d = SMTPDaemon(sm_root, ["-odq"], wait_banner=False)
        try:
            assert wait_for(lambda: os.path.exists(d.log), 10)
            assert wait_for(lambda: greeting(d.port).startswith(b"554 "), 15)
        finally:
            d.stop()
        return
    d = SMTPDaemon(sm_root, ["-odq"])
    try:
        got = transaction(d.port, "someone@example.test")
        assert got[:len(expect)] == expect
        if flags == "":
            assert control(sm_root, got[2])[1] == "qf"     # delivered unfiltered
        assert wait_for(lambda: "carrying on without it" in d.log_text() or
                        "to error state" in d.log_text(), 5)
    finally:
        d.stop()


def test_filter_down_with_f4_closes_with_421(sm_root):
    write_milter_cf(sm_root, [("down", "inet:%d@127.0.0.1" % closed_port(), "4")])
    d = SMTPDaemon(sm_root, ["-odq"], wait_banner=False)
    try:
        assert wait_for(lambda: greeting(d.port).startswith(
            b"421 4.7.0 %s closing connection" % MYNAME.encode()), 15)
    finally:
        d.stop()


def test_slow_filter_times_out_and_nothing_is_queued(sm_root, tmp_path):
    slow = start_milter(tmp_path, "slow")           # eom sleeps 3 s
    try:
        write_milter_cf(sm_root, [("slow", slow.spec, "T", "C:5s;S:5s;R:5s;E:1s")])
        d = SMTPDaemon(sm_root, ["-odq"])
        try:
            got = transaction(d.port, "someone@example.test")
            assert got == ("data", 451, "4.3.2 Please try again later")
            assert all_queued(sm_root) == []
            assert wait_for(lambda: "timeout" in d.log_text() and "slow" in d.log_text(), 5)
        finally:
            d.stop()
    finally:
        stop(slow)


@pytest.mark.parametrize("flags", ["T", ""])
def test_filter_dying_mid_session(sm_root, tmp_path, flags):
    die = start_milter(tmp_path, "die")             # exits inside envrcpt
    try:
        write_milter_cf(sm_root, [("die", die.spec, flags)])
        d = SMTPDaemon(sm_root, ["-odq"])
        try:
            got = transaction(d.port, "someone@example.test")
            if flags == "T":
                assert got == ("rcpt", 451, "4.3.2 Please try again later")
                assert all_queued(sm_root) == []
            else:
                assert got[:2] == ("data", 250)
                assert control(sm_root, got[2])[1] == "qf"
        finally:
            d.stop()
    finally:
        stop(die)


def packet(cmd, data=b""):
    return (len(data) + 1).to_bytes(4, "big") + cmd + data


OPTNEG = packet(b"O", (6).to_bytes(4, "big") + (0x1FF).to_bytes(4, "big") + bytes(4))


class GarbageMilter:
    """A TCP peer speaking the milter framing badly (what no libmilter does): `answer` is
    sent in reply to the option negotiation, or, with after_optneg=True, a valid
    negotiation first and `answer` in reply to the first command that wants one."""

    def __init__(self, answer, after_optneg=False):
        self.answer, self.after_optneg = answer, after_optneg
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.done = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def packets(self, conn):
        buf = b""
        while True:
            while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            n = int.from_bytes(buf[:4], "big")
            yield buf[4:5]
            buf = buf[4 + n:]

    def talk(self, conn):
        for cmd in self.packets(conn):
            if cmd == b"O":
                conn.sendall(OPTNEG if self.after_optneg else self.answer)
                if not self.after_optneg:
                    return
            elif cmd not in (b"D",):                  # macros want no answer
                conn.sendall(self.answer)
                return

    def serve(self):
        for _ in range(500):                         # bounded: at most ~100 s
            if self.done:
                return
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.talk(conn)             # then closed: the client sees the end
                except OSError:
                    pass

    def close(self):
        self.done = True
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("answer,after", [
    (packet(b"Z", b"junk"), False),                  # unknown response code
    (b"\xff\xff\xff\xffO", False),                  # oversized packet
    (b"\x00\x00\x00\x02O", False),                  # truncated, then closed
    (packet(b"h", b"X-Early\0now\0"), True),          # a modification out of order
    (packet(b"q", b"why\0"), True),                 # quarantine: only at end of message
])
def test_garbage_answers(sm_root, answer, after):
    g = GarbageMilter(answer, after)
    try:
        write_milter_cf(sm_root, [("junk", "inet:%d@127.0.0.1" % g.port, "T")])
        d = SMTPDaemon(sm_root, ["-odq"])
        try:
            got = transaction(d.port, "someone@example.test")
            assert got == ("mail", 451, "4.3.2 Please try again later")
            assert all_queued(sm_root) == []
            assert wait_for(lambda: "junk" in d.log_text() and "to error state" in
                            d.log_text(), 5)
        finally:
            d.stop()
    finally:
        g.close()


def test_bad_x_line_refuses_to_start(sm_root):
    write_milter_cf(sm_root, [("bad", "tcp:1@127.0.0.1", "T")])
    d = SMTPDaemon(sm_root, ["-odq"], wait_banner=False)
    d.proc.wait(20)
    out, err = d.stop()
    assert d.proc.returncode == 78
    assert b"Xbad: unknown socket type tcp" in err

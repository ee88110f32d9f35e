"""Outbound SMTP delivery end to end: the installed `sendmail -q` against real peers.

Every test runs a private instance (sm_root) whose etc/sendmail.cf is the shipped cf with
one routing change, and delivers to Postfix's smtp-sink (tests/peers.py) on loopback:

  * smart host:   `DS[127.0.0.1]:PORT` (the relay mailer, `[host]:port`, no MX lookup)
  * per domain:   ParseLocal (ruleset 98) rules `$#esmtp $@ [127.0.0.1]:PORT` per domain
  * MX:           the esmtp mailer's `A=TCP $h PORT` and a real DNS server (dns_helpers)
                  answering MX/A records that name 127.0.0.1; the instance's
                  etc/resolv.conf names only that server

Messages are queued with `sendmail -odq` and delivered with `sendmail -q`. The sender is
the local user root, so DSNs land in the instance's mailbox of root and are read with the
`email` package. Time-dependent paths (Timeout.queuewarn / queuereturn) move a message's
creation time back through the spool API instead of waiting. Nothing here may query the
machine's real resolver: conftest points PYSENDMAIL_RESOLV_CONF at 127.0.0.1, and the
DNS tests write their own resolv.conf.
"""
import email
import email.policy
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import REPO
from dns_helpers import dns_zone  # noqa: F401  (fixture)
from peers import SmtpSink, peer_dir, smtp_sink  # noqa: F401  (fixture)
from smtpd_helpers import free_port, no_syslog, wait_for

CF_SOURCE = os.path.join(REPO, "etc", "sendmail.cf")
MYNAME = "client.example.test"          # $j of the instances
SENDER = "root@" + MYNAME


# ---- instance helpers -----------------------------------------------------------------

def write_cf(inst, smarthost=None, esmtp_port=None, routes=None, options=None):
    """Write inst's etc/sendmail.cf: the shipped cf with $j = MYNAME and
    smarthost  "[127.0.0.1]:PORT" for `DS`;
    esmtp_port the esmtp mailer's `A=TCP $h PORT`;
    routes     {domain: port}: ParseLocal rules sending that domain by esmtp to
               [127.0.0.1]:port;
    options    {name: value}: O lines."""
    with open(CF_SOURCE) as f:
        text = f.read()
    text = text.replace("#Dj mail.example.com\n", "Dj%s\n" % MYNAME, 1)
    assert ("Dj%s\n" % MYNAME) in text
    if smarthost:
        text = text.replace("\nDS\n", "\nDS%s\n" % smarthost, 1)
    if esmtp_port:
        head, sep, tail = text.partition("\nMesmtp,")
        assert sep
        tail = tail.replace("A=TCP $h\n", "A=TCP $h %d\n" % esmtp_port, 1)
        text = head + sep + tail
    if routes:
        rules = "".join("R$* < @ %s > $*\t$#esmtp $@ [127.0.0.1]:%d $: $1 < @ %s > $2\n"
                        % (domain, port, domain) for domain, port in routes.items())
        text = text.replace("SParseLocal=98\n", "SParseLocal=98\n" + rules, 1)
    if options:
        lines = "".join("O %s=%s\n" % kv for kv in options.items())
        text = text.replace("O SuperSafe=True\n", "O SuperSafe=True\n" + lines, 1)
    etc = os.path.join(inst.path, "etc")
    os.makedirs(etc, exist_ok=True)
    with open(os.path.join(etc, "sendmail.cf"), "w") as f:
        f.write(text)


def sm(inst, args, input=b"", check=True, timeout=60):
    """Run the installed sendmail of `inst` (logging to its maillog, never to syslog)."""
    proc = subprocess.run(no_syslog([inst.command()] + list(args)), input=input,
                          capture_output=True, env=inst.env, timeout=timeout)
    if check:
        assert proc.returncode == 0, "sendmail %s exited %d\nstdout: %r\nstderr: %r" % (
            " ".join(args), proc.returncode, proc.stdout, proc.stderr)
    return proc


def submit(inst, recipients, body="Hello.\n", subject="test", extra=(), headers=""):
    """Queue one message from root (-odq); returns its queue id."""
    before = set(queue_ids(inst))
    msg = ("Subject: %s\n%s\n%s" % (subject, headers, body)).encode()
    sm(inst, ["-odq", "-i", "-f", "root"] + list(extra) + list(recipients), input=msg)
    new = set(queue_ids(inst)) - before
    assert len(new) == 1, new
    return new.pop()


def queue_ids(inst):
    qdir = os.path.join(inst.path, "spool", "queue")
    try:
        return sorted(n[2:] for n in os.listdir(qdir) if n.startswith("qf"))
    except FileNotFoundError:
        return []


def maillog(inst):
    try:
        with open(os.path.join(inst.path, "state", "log", "maillog"), encoding="utf-8",
                  errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def load_env(inst, qid):
    from pysendmail.queue.spool import Spool
    return Spool(os.path.join(inst.path, "spool", "queue")).load(qid)


def age_message(inst, qid, seconds):
    """Move message qid's creation time `seconds` into the past (the clock, for
    Timeout.queuewarn / queuereturn), through the spool's own API."""
    from pysendmail.queue.spool import Spool
    spool = Spool(os.path.join(inst.path, "spool", "queue"))
    env = spool.load(qid)
    env.created -= seconds
    spool.save(env)


def dsns(inst, user="root"):
    """The DSNs in user's mailbox, parsed (email.message.EmailMessage)."""
    out = []
    for m in inst.messages(user):
        parsed = email.message_from_bytes(m.as_bytes(), policy=email.policy.default)
        if parsed.get_content_type() == "multipart/report":
            out.append(parsed)
    return out


def dsn_parts(msg):
    """(human text, [per-message fields, per-recipient fields...], returned part)."""
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert parts[1].get_content_type() == "message/delivery-status"
    groups = [dict(g.items()) for g in parts[1].get_payload()]
    return parts[0].get_content(), groups, parts[2] if len(parts) > 2 else None


@pytest.fixture
def respawn():
    """respawn(old_sink, **faults) -> a new smtp-sink on old_sink's port (old_sink is
    stopped first): "the remote host was fixed" without touching the queued routes."""
    started = []

    def start(old, **options):
        old.stop()
        sink = SmtpSink(peer_dir("sink"), **options)
        sink.port = old.port
        sink.args[-2] = "127.0.0.1:%d" % old.port
        started.append(sink)
        return sink.start()
    yield start
    for sink in started:
        sink.stop()


def pairs(sink):
    """Every (Subject, recipient) the sink accepted, one per delivered copy."""
    out = []
    for m in sink.messages():
        for r in m.recipients:
            out.append((m.header("Subject"), r))
    return out


# ---- 1. plain delivery -----------------------------------------------------------------

def test_delivery_to_smarthost_envelope_content_log(sm_root, smtp_sink):
    sink = smtp_sink()
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % sink.port)
    body = "first line\n.\n..two dots\n. dot space\nlast line\n"
    qid = submit(sm_root, ["user@remote.test", "Joe Bloggs <joe@remote.test>"], body=body,
                 subject="plain delivery")
    proc = sm(sm_root, ["-q", "-v"])
    out = proc.stdout.decode()
    assert "user@remote.test... Sent" in out and "<joe@remote.test>... Sent" in out, out
    [m] = sink.messages()
    assert m.proto == "ESMTP" and m.helo == MYNAME
    assert m.sender == SENDER                       # root, qualified by the cf
    assert sorted(m.recipients) == ["joe@remote.test", "user@remote.test"]
    head, _, got_body = m.data.partition(b"\n\n")
    assert got_body == body.encode()                # dot-stuffed on the wire, intact here
    assert m.header("Subject") == "plain delivery"
    assert m.header("Message-Id") and qid in m.header("Message-Id")
    assert m.header("From") == "root <%s>" % SENDER
    log = maillog(sm_root)
    sent = [line for line in log.splitlines() if "stat=Sent" in line and qid in line]
    assert len(sent) == 2, log
    assert all("mailer=relay" in line and "127.0.0.1" in line for line in sent), sent
    assert queue_ids(sm_root) == []
    assert "is empty" in sm_root.mailq()


# ---- 2. mixed outcomes over three destinations ----------------------------------------------

def test_mixed_outcomes_three_destinations(sm_root, smtp_sink, respawn):
    ok = smtp_sink()
    hard = smtp_sink(hard_reject="RCPT", hard_reply="550 5.1.1 No such user here")
    soft = smtp_sink(soft_reject="RCPT", soft_reply="450 4.2.1 Mailbox busy, try later")
    routes = {"ok.test": ok.port, "hard.test": hard.port, "soft.test": soft.port}
    write_cf(sm_root, routes=routes)
    rcpts = ["a@ok.test", "b@ok.test", "c@ok.test", "x@hard.test", "y@soft.test"]
    qid = submit(sm_root, rcpts, subject="mixed")
    sm(sm_root, ["-q"])
    assert sorted(pairs(ok)) == [("mixed", "a@ok.test"), ("mixed", "b@ok.test"),
                                 ("mixed", "c@ok.test")]
    assert len(ok.messages()) == 1                  # one transaction for the domain
    assert pairs(soft) == [] and pairs(hard) == []
    # the hard failure bounced to root, the soft one waits in the queue
    [dsn] = dsns(sm_root)
    _text, groups, _ = dsn_parts(dsn)
    assert [g["Final-Recipient"].lower() for g in groups[1:]] == ["rfc822; x@hard.test"]
    assert queue_ids(sm_root) == [qid]
    q = sm_root.mailq()
    assert "y@soft.test" in q and "Mailbox busy" in q, q
    assert "a@ok.test" not in q and "x@hard.test" not in q, q
    env = load_env(sm_root, qid)
    states = {r.address: r.state for r in env.recipients}
    assert states["y@soft.test"] == "deferred", states
    log = maillog(sm_root)
    assert re.search(r"to=y@soft.test,.*stat=Deferred: 450 4.2.1 Mailbox busy", log), log
    assert re.search(r"to=x@hard.test,.*dsn=5.1.1, stat=550 5.1.1 No such user", log), log

    # the soft domain is fixed: only its recipient goes out, nobody gets a second copy
    # (a new sink on the same port: the queue keeps each recipient's route as ruleset 0
    # gave it at submission, so a changed cf would not reach this recipient)
    fixed = respawn(soft)
    sm(sm_root, ["-q"])
    assert pairs(fixed) == [("mixed", "y@soft.test")]
    assert len(ok.messages()) == 1 and pairs(soft) == [] and pairs(hard) == []
    assert len(dsns(sm_root)) == 1
    assert queue_ids(sm_root) == []
    sm(sm_root, ["-q"])                             # nothing left: nothing more goes out
    assert len(ok.messages()) == 1 and len(fixed.messages()) == 1


# ---- 3. DSNs ----------------------------------------------------------------------------

HARD_REPLY = "550 5.1.1 No such user here"


def smtp_submit(inst, mail, rcpts, message):
    """Queue a message through `sendmail -bs -odq` with raw MAIL/RCPT argument texts
    (ESMTP DSN parameters); asserts every command is accepted."""
    lines = ["EHLO client.test", "MAIL FROM:" + mail] + ["RCPT TO:" + r for r in rcpts]
    script = "\r\n".join(lines + ["DATA"]) + "\r\n" + message.replace("\n", "\r\n") \
        + ".\r\nQUIT\r\n"
    out = sm(inst, ["-bs", "-odq"], input=script.encode()).stdout.decode()
    codes = [line[:3] for line in out.splitlines() if line[3:4] == " "]
    assert codes == ["220", "250", "250"] + ["250"] * len(rcpts) + ["354", "250", "221"], out


def test_failure_dsn_structure_full_return(sm_root, smtp_sink):
    hard = smtp_sink(hard_reject="RCPT", hard_reply=HARD_REPLY)
    write_cf(sm_root, routes={"hard.test": hard.port})
    submit(sm_root, ["x@hard.test"], subject="returned whole",
           body="the body comes back\n", extra=["-V", "envid-42", "-N", "failure,delay"])
    sm(sm_root, ["-q"])
    [dsn] = dsns(sm_root)
    assert dsn["To"] == "root"
    assert dsn["From"].addresses[0].username == "MAILER-DAEMON"
    assert dsn["Subject"] == "Returned mail: see transcript for details"
    text, groups, returned = dsn_parts(dsn)
    assert "x@hard.test" in text and HARD_REPLY in text
    msg_fields, rcpt_fields = groups[0], groups[1:]
    assert msg_fields["Reporting-MTA"] == "dns; " + MYNAME
    assert msg_fields["Original-Envelope-Id"] == "envid-42"
    [r] = rcpt_fields
    assert r["Final-Recipient"].lower() == "rfc822; x@hard.test"
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert "127.0.0.1" in r["Remote-MTA"] and r["Remote-MTA"].lower().startswith("dns;")
    assert r["Diagnostic-Code"].lower() == "smtp; " + HARD_REPLY.lower()
    # RET defaults to FULL for a failure: the whole original comes back
    assert returned.get_content_type() == "message/rfc822"
    original = returned.get_payload()[0]
    assert original["Subject"] == "returned whole"
    assert original.get_content() == "the body comes back\n"
    assert queue_ids(sm_root) == []


def test_failure_dsn_ret_hdrs(sm_root, smtp_sink):
    hard = smtp_sink(hard_reject="RCPT", hard_reply=HARD_REPLY)
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % hard.port)
    submit(sm_root, ["x@far.test"], subject="headers only", body="SECRET BODY\n",
           extra=["-R", "hdrs"])
    sm(sm_root, ["-q"])
    [dsn] = dsns(sm_root)
    _text, groups, returned = dsn_parts(dsn)
    assert groups[1]["Action"] == "failed" and groups[1]["Status"] == "5.1.1"
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: headers only" in returned.get_content()
    assert b"SECRET BODY" not in dsn.as_bytes()


def test_dsn_parameters_go_to_dsn_aware_peer(sm_root, smtp_sink):
    """ENVID, RET, NOTIFY and ORCPT travel on to a DSN-aware next hop, which then owns
    the success notification: no local "relayed" DSN (RFC 3461 5.2.2, Sendmail's
    deliver.c: a success DSN only when the mailer is local or the peer lacks DSN)."""
    sink = smtp_sink()
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % sink.port)
    smtp_submit(sm_root, "<root@%s> RET=HDRS ENVID=env+2Bid" % MYNAME,
                ["<u@ok.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Bu@ok.test"],
                "Subject: dsn params\n\nbody\n")
    sm(sm_root, ["-q"])
    [m] = sink.messages()
    assert "RET=HDRS" in m.mail_args and "ENVID=env+2Bid" in m.mail_args, m.mail_args
    [rcpt_args] = m.rcpt_args
    assert "NOTIFY=SUCCESS,FAILURE" in rcpt_args, rcpt_args
    assert "ORCPT=rfc822;orig+2Bu@ok.test" in rcpt_args, rcpt_args
    assert dsns(sm_root) == []
    assert queue_ids(sm_root) == []


def test_success_dsn_relayed_to_non_dsn_peer(sm_root, smtp_sink):
    sink = smtp_sink(no_dsn=True)
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % sink.port)
    smtp_submit(sm_root, "<root@%s> ENVID=receipt-1" % MYNAME,
                ["<u@ok.test> NOTIFY=SUCCESS ORCPT=rfc822;u@ok.test"],
                "Subject: receipt please\n\nbody\n")
    sm(sm_root, ["-q"])
    [m] = sink.messages()
    assert "NOTIFY" not in m.rcpt_args[0] and "ENVID" not in m.mail_args
    [dsn] = dsns(sm_root)
    assert dsn["Subject"] == "Return receipt"
    text, groups, returned = dsn_parts(dsn)
    assert groups[0]["Original-Envelope-Id"] == "receipt-1"
    [r] = groups[1:]
    assert r["Action"] == "relayed" and r["Status"].startswith("2.")
    assert r["Original-Recipient"].lower().replace(" ", "") == "rfc822;u@ok.test"
    assert "relayed to non-DSN-aware mailer" in text
    assert returned.get_content_type() == "text/rfc822-headers"     # receipts: headers only


def test_notify_never_gives_no_dsn(sm_root, smtp_sink):
    hard = smtp_sink(hard_reject="RCPT", hard_reply=HARD_REPLY)
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % hard.port)
    submit(sm_root, ["x@far.test"], extra=["-N", "never"])
    sm(sm_root, ["-q"])
    assert queue_ids(sm_root) == []
    assert sm_root.messages("root") == []
    assert re.search(r"to=x@far.test,.*stat=550 5.1.1", maillog(sm_root))


def test_null_sender_bounce_goes_to_postmaster(sm_root, smtp_sink):
    hard = smtp_sink(hard_reject="RCPT", hard_reply=HARD_REPLY)
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % hard.port)
    before = set(queue_ids(sm_root))
    sm(sm_root, ["-odq", "-i", "-f", "<>", "x@far.test"],
       input=b"Subject: a bounce that bounces\n\nbody\n")
    [qid] = set(queue_ids(sm_root)) - before
    assert load_env(sm_root, qid).sender == ""
    sm(sm_root, ["-q"])
    assert queue_ids(sm_root) == []
    # postmaster is root here (the default aliases): a double bounce, never to <>
    [dsn] = dsns(sm_root)
    assert dsn["Subject"] == "Postmaster notify: see transcript for details"
    assert dsn["To"] == "postmaster"
    _text, groups, _ = dsn_parts(dsn)
    assert groups[1]["Final-Recipient"].lower() == "rfc822; x@far.test"
    log = maillog(sm_root)
    assert not re.search(r"to=<>", log), log
    # only the one transaction: MAIL FROM:<> for the original, nothing else to the peer
    assert all(m.sender == "" for m in hard.messages())

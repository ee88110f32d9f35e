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
import shutil
import signal
import subprocess
import time

import pytest

from conftest import REPO
from dns_helpers import dns_zone  # noqa: F401  (fixture)
from peers import SmtpSink, peer_dir, smtp_sink  # noqa: F401  (fixture)
from smtpd_helpers import free_port, no_syslog

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
    """respawn(old_sink_or_port, **faults) -> a new smtp-sink on that port (an old sink
    is stopped first): "the remote host was fixed" without touching the queued routes."""
    started = []

    def start(old, **options):
        if isinstance(old, int):
            port = old
        else:
            old.stop()
            port = old.port
        sink = SmtpSink(peer_dir("sink"), **options)
        sink.port = port
        sink.args[-2] = "127.0.0.1:%d" % port
        started.append(sink)
        return sink.start()
    yield start
    for sink in started:
        sink.stop()
        shutil.rmtree(sink.directory, ignore_errors=True)


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


# ---- 4. delay warning and queuereturn --------------------------------------------------------

def test_delay_warning_then_queuereturn_bounce(sm_root, smtp_sink):
    soft = smtp_sink(soft_reject="RCPT", soft_reply="450 4.2.1 Mailbox busy, try later")
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % soft.port,
             options={"Timeout.queuewarn": "1h", "Timeout.queuereturn": "2d"})
    qid = submit(sm_root, ["slow@far.test"], subject="takes long", body="still here\n")
    sm(sm_root, ["-q"])
    assert queue_ids(sm_root) == [qid] and dsns(sm_root) == []     # young: no warning yet

    age_message(sm_root, qid, 2 * 3600)             # past queuewarn, not queuereturn
    sm(sm_root, ["-q"])
    [warning] = dsns(sm_root)
    assert warning["Subject"] == "Warning: could not send message for past 1 hour"
    text, groups, returned = dsn_parts(warning)
    assert "THIS IS A WARNING MESSAGE ONLY" in text
    [r] = groups[1:]
    assert r["Action"] == "delayed" and r["Status"] == "4.2.1"
    assert "Will-Retry-Until" in r
    assert returned.get_content_type() == "text/rfc822-headers"
    assert queue_ids(sm_root) == [qid]
    sm(sm_root, ["-q"])
    assert len(dsns(sm_root)) == 1                  # warned once per message

    age_message(sm_root, qid, 3 * 86400)            # past queuereturn
    sm(sm_root, ["-q"])
    assert queue_ids(sm_root) == []
    warning2, bounce = dsns(sm_root)
    assert bounce["Subject"] == "Returned mail: see transcript for details"
    text, groups, returned = dsn_parts(bounce)
    [r] = groups[1:]
    assert r["Action"] == "failed" and r["Status"] == "4.4.7"
    assert "could not be delivered for 2 days" in text
    assert "Mailbox busy" in text
    assert returned.get_content_type() == "message/rfc822"
    assert soft.messages() == []


# ---- 5. DNS: MX records ---------------------------------------------------------------------

def test_mx_resolution(sm_root, smtp_sink, dns_zone):
    dns_zone.require_port_53()
    sink = smtp_sink()
    dead = free_port()      # nothing listens there on 127.0.0.2 (nor anywhere)
    assert dead != sink.port
    dns_zone.add("mx.test", "MX", "10 down.mx.test.", "20 up.mx.test.")
    dns_zone.add("down.mx.test", "A", "127.0.0.2")
    dns_zone.add("up.mx.test", "A", "127.0.0.1")
    dns_zone.add("nullmx.test", "MX", "0 .")
    dns_zone.add("amx.test", "A", "127.0.0.1")
    dns_zone.add("other.test", "A", "127.0.0.1")    # the zone exists; nx.test does not
    dns_zone.servfail.add("fail.test")
    dns_zone.write_resolv_conf(os.path.join(sm_root.path, "etc", "resolv.conf"))
    write_cf(sm_root, esmtp_port=sink.port)
    rcpts = ["u@mx.test", "u@nullmx.test", "u@nx.test", "u@fail.test", "u@amx.test"]
    qid = submit(sm_root, rcpts, subject="mx")
    sm(sm_root, ["-q"], timeout=60)
    # the lower preference host was tried first and refused; the next one took it
    assert dns_zone.asked("down.mx.test", "A") and dns_zone.asked("up.mx.test", "A")
    assert sorted(pairs(sink)) == [("mx", "u@amx.test"), ("mx", "u@mx.test")]
    log = maillog(sm_root)
    assert re.search(r"to=u@mx.test,.*relay=up.mx.test.? \[127.0.0.1\].*stat=Sent", log), log
    assert re.search(r"to=u@amx.test,.*relay=amx.test.? \[127.0.0.1\].*stat=Sent", log), log
    [dsn] = dsns(sm_root)
    _text, groups, _ = dsn_parts(dsn)
    by_rcpt = {g["Final-Recipient"].split(";")[1].strip(): g for g in groups[1:]}
    assert sorted(by_rcpt) == ["u@nullmx.test", "u@nx.test"]
    assert by_rcpt["u@nullmx.test"]["Status"] == "5.1.10"
    assert by_rcpt["u@nx.test"]["Status"] == "5.1.2"
    assert "Host unknown" in by_rcpt["u@nx.test"]["Diagnostic-Code"]
    # SERVFAIL is temporary: deferred, not bounced
    assert queue_ids(sm_root) == [qid]
    env = load_env(sm_root, qid)
    states = {r.address: r.state for r in env.recipients}
    assert states["u@fail.test"] == "deferred", states
    assert "u@fail.test" in sm_root.mailq()
    # the refused MX host is remembered
    assert "down.mx.test" in sm(sm_root, ["-bh"]).stdout.decode()


# ---- 6. peers with faults and without extensions ------------------------------------------

def test_disconnect_during_data_defers_then_delivers_once(sm_root, smtp_sink, respawn):
    flaky = smtp_sink(disconnect="DATA")
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % flaky.port)
    qid = submit(sm_root, ["u@far.test"], subject="flaky")
    sm(sm_root, ["-q"])
    assert queue_ids(sm_root) == [qid]
    [r] = load_env(sm_root, qid).recipients
    assert r.state == "deferred" and r.status.startswith("4."), (r.status, r.diag)
    assert re.search(r"to=u@far.test,.*stat=Deferred", maillog(sm_root))
    assert flaky.messages() == []
    good = respawn(flaky)
    sm(sm_root, ["-q"])
    assert pairs(good) == [("flaky", "u@far.test")]
    assert queue_ids(sm_root) == [] and dsns(sm_root) == []


def test_421_defers(sm_root, smtp_sink):
    sink = smtp_sink(disconnect_421="MAIL")
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % sink.port)
    qid = submit(sm_root, ["u@far.test", "v@far.test"], subject="421")
    sm(sm_root, ["-q"])
    assert queue_ids(sm_root) == [qid] and dsns(sm_root) == []
    env = load_env(sm_root, qid)
    assert [r.state for r in env.recipients] == ["deferred", "deferred"]
    assert all("421" in r.diag for r in env.recipients), [r.diag for r in env.recipients]
    assert "421" in sm_root.mailq()


@pytest.mark.parametrize("faults,proto", [({"no_pipelining": True}, "ESMTP"),
                                          ({"no_esmtp": True}, "SMTP")])
def test_plain_peers(sm_root, smtp_sink, faults, proto):
    sink = smtp_sink(**faults)
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % sink.port)
    submit(sm_root, ["u@far.test", "v@far.test"], subject="plain peer", body="a\n.\nb\n")
    sm(sm_root, ["-q"])
    [m] = sink.messages()
    assert m.proto == proto and m.helo == MYNAME
    assert sorted(m.recipients) == ["u@far.test", "v@far.test"]
    assert m.data.partition(b"\n\n")[2] == b"a\n.\nb\n"
    if proto == "SMTP":     # HELO, not EHLO: no parameters on MAIL/RCPT
        assert m.mail_args == "<%s>" % SENDER, m.mail_args
        assert sorted(m.rcpt_args) == ["<u@far.test>", "<v@far.test>"], m.rcpt_args
    assert queue_ids(sm_root) == []


def test_8bit_to_7bit_for_peer_without_8bitmime(sm_root, smtp_sink):
    sink = smtp_sink(no_8bitmime=True)
    write_cf(sm_root, routes={"far.test": sink.port})    # esmtp mailer: no F=8
    body = "Gr\\u00fc\\u00dfe aus K\\u00f6ln, \\u00e7a va\\n".encode().decode("unicode_escape")
    headers = ("MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
               "Content-Transfer-Encoding: 8bit\n")
    before = set(queue_ids(sm_root))
    sm(sm_root, ["-odq", "-i", "-f", "root", "-B", "8BITMIME", "u@far.test"],
       input=("Subject: eight bit\n" + headers + "\n" + body).encode("utf-8"))
    assert len(set(queue_ids(sm_root)) - before) == 1
    sm(sm_root, ["-q"])
    [m] = sink.messages()
    assert m.data.isascii()
    assert "BODY=8BITMIME" not in m.mail_args
    assert m.header("X-MIME-Autoconverted")
    cte = m.header("Content-Transfer-Encoding").lower()
    assert cte in ("quoted-printable", "base64")
    parsed = email.message_from_bytes(m.data, policy=email.policy.default)
    # text in canonical form: base64 carries CRLF line ends (Sendmail's MapNLtoCRLF)
    assert parsed.get_content().replace("\r\n", "\n") == body, m.data
    assert queue_ids(sm_root) == []


# ---- 7. connection reuse --------------------------------------------------------------------

class CountingProxy:
    """A TCP relay on 127.0.0.1 in front of a sink that counts the connections it
    accepts and the most open at once (the sink itself cannot tell sessions apart)."""

    def __init__(self, target_port):
        import socket
        import threading
        self.target = target_port
        self.lock = threading.Lock()
        self.accepted = self.open = self.max_open = 0
        self.stopping = False
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(128)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import socket
        import threading
        while not self.stopping:
            try:
                client, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.open += 1
                self.max_open = max(self.max_open, self.open)
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=30)
            done = threading.Event()
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, done), daemon=True).start()

    def _pump(self, src, dst, done):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(1)
            except OSError:
                pass
            if done.is_set():
                src.close()
                dst.close()
                with self.lock:
                    self.open -= 1
            else:
                done.set()

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def counting_proxy():
    made = []

    def make(port):
        p = CountingProxy(port)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


def queue_many(inst, n, rcpt="u@far.test", subject="bulk %d"):
    """Queue n messages quickly (-odq), returns nothing; subjects carry the index."""
    for i in range(n):
        sm(inst, ["-odq", "-i", "-f", "root", rcpt],
           input=("Subject: %s\n\nmessage %d\n" % (subject % i, i)).encode())


@pytest.mark.parametrize("max_host", [None, 1])
def test_connection_reuse(sm_root, smtp_sink, counting_proxy, max_host):
    sink = smtp_sink()
    proxy = counting_proxy(sink.port)
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % proxy.port,
             options={"MaxHostConnections": max_host} if max_host else None)
    queue_many(sm_root, 50)
    sm(sm_root, ["-q"])
    got = pairs(sink)
    assert sorted(got) == sorted(("bulk %d" % i, "u@far.test") for i in range(50))
    assert len(sink.messages()) == 50               # one transaction each, none twice
    assert queue_ids(sm_root) == []
    if max_host == 1:
        assert proxy.accepted == 1 and proxy.max_open == 1
    else:
        # connections open as the destination's line grows (at most 20 at once, the
        # default MaxHostConnections) and each carries message after message
        assert proxy.max_open <= 20
        assert proxy.accepted <= 20, proxy.accepted
        assert proxy.accepted < 50 // 2
    print("connections: %d, at most %d at once" % (proxy.accepted, proxy.max_open))


# ---- 8. host status -------------------------------------------------------------------------

def test_host_status_cache(sm_root, respawn):
    port = free_port()          # nothing listens yet: connection refused
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % port)
    qid = submit(sm_root, ["u@far.test"], subject="host down")
    sm(sm_root, ["-q"])
    [r] = load_env(sm_root, qid).recipients
    assert r.state == "deferred" and "refused" in r.diag.lower(), r.diag
    listing = sm(sm_root, ["-bh"]).stdout.decode()
    assert "[127.0.0.1]" in listing and "refused" in listing.lower(), listing
    # the host is up now, but its status is fresh: the next run does not even connect
    sink = respawn(port)
    log_before = maillog(sm_root)
    sm(sm_root, ["-q"])
    assert sink.messages() == [] and queue_ids(sm_root) == [qid]
    new = maillog(sm_root)[len(log_before):]
    assert re.search(r"to=u@far.test,.*stat=Deferred: .*refused", new, re.I), new
    # purgestat forgets it; the next run delivers
    sm(sm_root, ["-bH"])
    assert "[127.0.0.1]" not in sm(sm_root, ["-bh"]).stdout.decode()
    sm(sm_root, ["-q"])
    assert pairs(sink) == [("host down", "u@far.test")]
    assert queue_ids(sm_root) == []
    # a success is remembered as OK
    listing = sm(sm_root, ["-bh"]).stdout.decode()
    assert "refused" not in listing.lower(), listing


# ---- 10. queue run filters ------------------------------------------------------------------

def test_queue_run_filters(sm_root, smtp_sink):
    sink = smtp_sink()
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % sink.port)
    q1 = submit(sm_root, ["a@one.test"], subject="one")
    q2 = submit(sm_root, ["b@two.test"], subject="two")
    others = {}
    for sender, rcpt, subject in (("alice@elsewhere.test", "c@three.test", "three"),
                                  ("bob@elsewhere.test", "d@four.test", "four")):
        before = set(queue_ids(sm_root))
        sm(sm_root, ["-odq", "-i", "-f", sender, rcpt],
           input=("Subject: %s\n\nbody\n" % subject).encode())
        [others[subject]] = set(queue_ids(sm_root)) - before
    sm(sm_root, ["-qRtwo.test"])
    assert pairs(sink) == [("two", "b@two.test")]
    assert queue_ids(sm_root) == sorted([q1, others["three"], others["four"]])
    sm(sm_root, ["-qSalice"])
    assert sorted(pairs(sink)) == [("three", "c@three.test"), ("two", "b@two.test")]
    sm(sm_root, ["-qI" + q2])                       # already gone: nothing
    sm(sm_root, ["-q!Sroot"])                       # negated: everything but root's
    assert sorted(pairs(sink)) == [("four", "d@four.test"), ("three", "c@three.test"),
                                   ("two", "b@two.test")]
    assert queue_ids(sm_root) == [q1]
    sm(sm_root, ["-qI" + q1])
    assert sorted(pairs(sink)) == [("four", "d@four.test"), ("one", "a@one.test"),
                                   ("three", "c@three.test"), ("two", "b@two.test")]
    assert queue_ids(sm_root) == []


# ---- 9. kill -9 in the middle of a queue run ------------------------------------------------

def test_kill_9_mid_run_loses_nothing(sm_root, smtp_sink, respawn):
    """SIGKILL the queue run while two connections wait for the reply to the final dot.

    What may repeat: a transaction whose data the peer already holds when we die (it
    answers 250 to a dead socket) has no recorded outcome, so the next run sends it
    again. Outcomes are saved as each transaction ends, so only transactions in flight
    at the kill can repeat: at most MaxHostConnections (2) messages, each as a whole
    (all three recipients of one transaction). Nothing may be lost."""
    slow = smtp_sink(delays={".": 1})
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % slow.port,
             options={"MaxHostConnections": 2})
    rcpts = ["r1@far.test", "r2@far.test", "r3@far.test"]
    for i in range(20):
        sm(sm_root, ["-odq", "-i", "-f", "root"] + rcpts,
           input=("Subject: crash %d\n\nmessage %d\n" % (i, i)).encode())
    assert len(queue_ids(sm_root)) == 20
    proc = subprocess.Popen(no_syslog([sm_root.command(), "-q"]), env=sm_root.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        slow.wait_messages(count=4, timeout=30)
        time.sleep(0.5)         # the next two transactions are now waiting for their dot
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    first = pairs(slow)
    left = queue_ids(sm_root)
    assert 0 < len(left) < 20, left
    fast = respawn(slow)        # stops the slow sink: its captures stay readable
    first = pairs(slow)         # (and now include what it took after the kill)
    sm(sm_root, ["-q"])
    assert queue_ids(sm_root) == []
    every = first + pairs(fast)
    wanted = {("crash %d" % i, r) for i in range(20) for r in rcpts}
    assert set(every) == wanted                     # nothing lost
    counts = {}
    for pair in every:
        counts[pair] = counts.get(pair, 0) + 1
    repeated = {subject for (subject, _), n in counts.items() if n > 1}
    assert all(n <= 2 for n in counts.values()), counts
    assert len(repeated) <= 2, sorted(repeated)
    for subject in repeated:                        # whole transactions, not single RCPTs
        assert all(counts[(subject, r)] == 2 for r in rcpts), counts
    transactions = len(slow.messages()) + len(fast.messages())
    assert transactions == 20 + len(repeated)
    print("kill -9: %d left queued, %d message(s) sent twice" % (len(left), len(repeated)))
    assert dsns(sm_root) == []


# ---- 6b. SIZE: smtp-sink cannot advertise it, pysendmail's own daemon does ----------------------

def test_size_limit_bounces_5_3_4(sm_root, sm_bin, tmp_path):
    """A peer advertising SIZE 2000 (pysendmail's own daemon: smtp-sink has no SIZE): a
    larger message is refused at MAIL from the SIZE= we declare (552 5.3.4), before any
    data goes out, and bounces."""
    from conftest import Instance
    from smtpd_helpers import SMTPDaemon
    peer_root = tmp_path / "peer"
    peer_root.mkdir()
    # M=S: no STARTTLS (this test is about SIZE; see the report on STARTTLS stalls)
    peer = SMTPDaemon(Instance(sm_bin, peer_root), ["-odq", "-O", "MaxMessageSize=2000"],
                      modifiers="S")
    try:
        write_cf(sm_root, smarthost="[127.0.0.1]:%d" % peer.port)
        submit(sm_root, ["big@far.test"], subject="too big", body=("y" * 70 + "\n") * 60)
        sm(sm_root, ["-q"])
        assert queue_ids(sm_root) == []
        [dsn] = dsns(sm_root)
        _text, groups, _ = dsn_parts(dsn)
        [r] = groups[1:]
        assert r["Action"] == "failed" and r["Status"] == "5.3.4", r
        assert r["Diagnostic-Code"].lower().startswith("smtp; 552 5.3.4"), r
        assert re.search(r"to=big@far.test,.*dsn=5.3.4", maillog(sm_root))
    finally:
        peer.stop()

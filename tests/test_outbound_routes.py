"""Routing choices of outbound delivery, end to end with the installed `sendmail`:

  * the shipped cf's mailertable: per-domain routes (exact domain, `.parent`, `.`,
    `error:`), built with our `makemap` as an administrator would, delivered to
    Postfix's smtp-sink;
  * port 587 means STARTTLS is required: a submission port that does not offer it
    gets nothing in clear, the message stays queued;
  * MinQueueAge: a queue run leaves alone a message tried less than that long ago.

Helpers come from test_outbound_smtp (the same private-instance set-up).
"""
import os
import socket
import subprocess
import threading

from conftest import unavailable
from peers import smtp_sink  # noqa: F401  (fixture)
from test_outbound_smtp import (load_env, maillog, queue_ids, sm, submit,
                                write_cf)


def _mailertable(inst, lines):
    """The instance's mailertable (the shipped cf names /etc/mail/mailertable; the
    test cf points at the instance's etc/), built with the installed makemap."""
    etc = os.path.join(inst.path, "etc")
    path = os.path.join(etc, "mailertable")
    cf = os.path.join(etc, "sendmail.cf")
    with open(cf) as f:
        text = f.read()
    if ("Kmailertable hash -o %s\n" % path) not in text:
        assert "Kmailertable hash -o /etc/mail/mailertable\n" in text
        with open(cf, "w") as f:
            f.write(text.replace("/etc/mail/mailertable", path))
    src = "".join(line + "\n" for line in lines).encode()
    p = subprocess.run([inst.command("makemap"), "hash", path], input=src,
                       capture_output=True, env=inst.env, timeout=30)
    assert p.returncode == 0, p


def test_mailertable_routes_per_domain(sm_root, smtp_sink):
    a, b = smtp_sink(), smtp_sink()
    write_cf(sm_root)
    _mailertable(sm_root, [
        "a.test relay:[127.0.0.1]:%d" % a.port,             # the domain itself
        ".b.test relay:[127.0.0.1]:%d" % b.port,            # any subdomain of b.test
        "bad.test error:5.1.2:550 No such domain here",
    ])
    # -bt shows ruleset 0's choice, as Sendmail's would
    out = sm(sm_root, ["-bt"], input=b"3,0 u@a.test\n3,0 u@x.y.b.test\n3,0 u@b.test\n").stdout
    assert b"$# relay $@ [ 127 . 0 . 0 . 1 ] : %d $: u < @ a . test >" % a.port in out
    assert b"$# relay $@ [ 127 . 0 . 0 . 1 ] : %d $: u < @ x . y . b . test >" % b.port in out
    assert b"$# esmtp $@ b . test $: u < @ b . test >" in out      # .b.test: subdomains only
    proc = sm(sm_root, ["-odq", "-i", "-f", "root", "bob@a.test", "carol@x.y.b.test",
                        "dan@bad.test"], input=b"Subject: routes\n\nper domain\n", check=False)
    assert b"dan@bad.test... No such domain here" in proc.stdout
    sm(sm_root, ["-q"])
    got_a = a.wait_messages(1)
    got_b = b.wait_messages(1)
    assert [m.recipients for m in got_a] == [["bob@a.test"]]
    assert [m.recipients for m in got_b] == [["carol@x.y.b.test"]]
    assert queue_ids(sm_root) == []
    # "." is every other domain
    _mailertable(sm_root, [". relay:[127.0.0.1]:%d" % a.port])
    a.clear()
    submit(sm_root, ["erin@elsewhere.test"])
    sm(sm_root, ["-q"])
    assert [m.recipients for m in a.wait_messages(1)] == [["erin@elsewhere.test"]]


class _PlainSubmissionServer:
    """A port-587 stand-in that speaks ESMTP without STARTTLS and records what it
    reads: the client must not send a message (or credentials) in clear to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.42", 587))
        self.sock.listen(5)
        self.seen = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                f = conn.makefile("rwb")
                f.write(b"220 plain.example ESMTP\r\n")
                f.flush()
                for line in f:
                    self.seen.append(line)
                    cmd = line[:4].upper()
                    if cmd in (b"EHLO", b"HELO"):
                        f.write(b"250-plain.example\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")
                    elif cmd == b"QUIT":
                        f.write(b"221 bye\r\n")
                        f.flush()
                        break
                    else:
                        f.write(b"250 ok\r\n")
                    f.flush()

    def close(self):
        self.sock.close()


def test_port_587_requires_starttls(sm_root):
    try:
        server = _PlainSubmissionServer()
    except OSError as e:        # 587 on 127.0.0.42 needs root (the tests run as root in CI)
        unavailable("cannot listen on 127.0.0.42:587: %s" % e)
    try:
        write_cf(sm_root, smarthost="[127.0.0.42]:587")
        qid = submit(sm_root, ["bob@far.test"])
        sm(sm_root, ["-q"])
        cmds = [line.split(b" ")[0].strip().upper() for line in server.seen]
        assert cmds[:1] == [b"EHLO"] and b"MAIL" not in cmds and b"AUTH" not in cmds, cmds
        assert queue_ids(sm_root) == [qid]          # deferred, not bounced
        env = load_env(sm_root, qid)
        assert env.recipients[0].state == "deferred"
        assert "TLS required" in env.recipients[0].diag
        assert "dsn=4.7.0" in maillog(sm_root)
    finally:
        server.close()


def test_min_queue_age_leaves_recent_attempts_alone(sm_root):
    # nothing answers DNS for the tests (conftest): each attempt is deferred
    fast_dns = {"Timeout.resolver.retrans": "1s", "Timeout.resolver.retry": "1"}
    write_cf(sm_root, options=dict(fast_dns, MinQueueAge="1h"))
    qid = submit(sm_root, ["bob@far.test"])
    out = sm(sm_root, ["-q", "-v"]).stdout.decode()
    assert "bob@far.test... Deferred" in out
    assert load_env(sm_root, qid).attempts == 1
    # tried a moment ago: the next runs skip it
    assert sm(sm_root, ["-q", "-v"]).stdout == b""
    assert load_env(sm_root, qid).attempts == 1
    # without the option it is tried again
    write_cf(sm_root, options=fast_dns)
    assert "bob@far.test... Deferred" in sm(sm_root, ["-q", "-v"]).stdout.decode()
    assert load_env(sm_root, qid).attempts == 2

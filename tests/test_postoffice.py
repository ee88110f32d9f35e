"""Handing mail to the post office and to a smarthost, with the real peers (tests/peers.py).

* LMTP to Dovecot: the cf's local mailer made an IPC one (FEATURE(local_lmtp) with
  P=[IPC], A=FILE <Dovecot's LMTP socket>), and a separate `lmtp` mailer on TCP chosen
  per recipient by a ParseLocal rule while another recipient of the same message goes to
  a local Maildir. Read back over IMAP and POP3; Dovecot's per-recipient 550 ends in the DSN.
* Local Maildir delivery into the Maildir Dovecot serves (user1's), as the mail uid
  (PEERS.md section 3: owner, modes, an exact S= size), read back over IMAP and POP3.
* A Postfix smarthost (DS[127.0.0.1]:port) that requires STARTTLS and AUTH: credentials
  from the instance's authinfo file; no credentials or a wrong password defer (as
  Sendmail, which treats a failed or impossible AUTH as temporary); implicit TLS (465 style)
  with AUTH LOGIN; certificate verification (TLSVerifyHosts + CACertFile) against the
  right and a wrong CA: a failed verification sends nothing in clear.
* Opportunistic STARTTLS to a remote MX (Postfix): its Received field says TLS was used.

Every test runs the installed `sendmail` on a private instance (sm_root) as root (Postfix
and Dovecot need root); no test queries a resolver (only [127.0.0.1] literal hosts).
"""
import os
import re
import shutil
import time

import pytest

from conftest import REPO, unavailable
from peers import (Dovecot, dovecot, peer_dir, mail_ids, postfix_mx,  # noqa: F401 (fixtures)
                   postfix_smarthost, smarthost_sink, smtp_sink)

SHIPPED_CF = os.path.join(REPO, "etc", "sendmail.cf")

# FEATURE(local_lmtp)'s local mailer (cf/mailer/local.m4 with _LOCAL_LMTP_: flags
# lsDFMAw5:/|@q + SXfmnz9 + P, S=EnvFromSMTP/HdrFromL, T=DNS/RFC822/SMTP), with
# LOCAL_MAILER_PATH `[IPC]' and LOCAL_MAILER_ARGS `FILE <socket>'.
LOCAL_LMTP = ("Mlocal,\t\tP=[IPC], F={flags}, S=EnvFromSMTP/HdrFromL, R=EnvToL/HdrToL,\n"
              "\t\tT=DNS/RFC822/SMTP,\n\t\tA={args}\n")
LMTP_FLAGS = "lsDFMAw5:/|@qPSXfmnz9"
LMTP_MAILER = ("Mlmtp,\t\tP=[IPC], F=lsDFMnz9SXm, S=EnvFromSMTP/HdrFromL, R=EnvToL/HdrToL,\n"
               "\t\tT=DNS/RFC822/SMTP,\n\t\tA=TCP 127.0.0.1 {port}\n")


# ---- helpers ---------------------------------------------------------------------------------

def write_cf(sm_root, local=None, options=(), parse_local=(), mailers="", macros=()):
    """The shipped cf in the instance, with the local mailer replaced by `local` (text),
    `options` ("Name=value") and `macros` ("Sx..." lines) added, rules added to ParseLocal
    and `mailers` appended."""
    with open(SHIPPED_CF) as f:
        text = f.read()
    if local is not None:
        text, n = re.subn(r"^Mlocal,.*\n(?:[ \t].*\n)*", lambda m: local, text, count=1,
                          flags=re.M)
        assert n == 1
    for line in macros:
        name = line[:2]
        text, n = re.subn(r"^%s.*$" % re.escape(name), lambda m: line, text, count=1, flags=re.M)
        assert n == 1, name
    extra = ""
    for o in options:
        name = o.split("=", 1)[0]
        text, n = re.subn(r"^O %s=.*$" % re.escape(name), lambda m: "O " + o, text, count=1,
                          flags=re.M)
        if not n:
            extra += "O %s\n" % o
    text = text.replace("SParseLocal=98\n", "SParseLocal=98\n" + "".join(
        "R%s\n" % r for r in parse_local) + "\n", 1)
    text = extra + text + mailers
    etc = os.path.join(sm_root.path, "etc")
    os.makedirs(etc, exist_ok=True)
    with open(os.path.join(etc, "sendmail.cf"), "w") as f:
        f.write(text)


def write_aliases(sm_root, entries):
    path = os.path.join(sm_root.path, "etc", "aliases")
    with open(path, "w") as f:
        for name, value in entries.items():
            f.write("%s: %s\n" % (name, value))
    sm_root.run(["-bi"], check=True)


def message(subject, body=b"Line one.\nLine two with a tab\there.\n.leading dot\n", to="x"):
    mid = "<%s.%d@test.example>" % (subject.replace(" ", "-"), time.time_ns())
    head = ("From: Sender <sender@example.org>\nTo: %s\nSubject: %s\nMessage-Id: %s\n"
            "Date: Thu, 1 Jan 2025 00:00:00 +0000\n" % (to, subject, mid)).encode()
    return head + b"\n" + body, mid


def submit(sm_root, rcpts, data, sender="sender@example.org", extra=()):
    sm_root.run(["-odq", "-f", sender] + list(extra) + list(rcpts), input=data, check=True)


def queue_run(sm_root, *extra):
    return sm_root.run(["-q"] + list(extra), timeout=60)


def find(messages, mid):
    """The messages (bytes) whose Message-Id is `mid`."""
    return [m for m in messages if mid.encode() in m]


def header_block(raw):
    return raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]


def body_of(raw):
    return raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]


def queue_files(sm_root, prefix="qf"):
    q = os.path.join(sm_root.path, "spool", "queue")
    try:
        return [os.path.join(q, n) for n in os.listdir(q) if n.startswith(prefix)]
    except FileNotFoundError:
        return []


def diag(sm_root):
    """The instance's maillog and mailq, for assertion messages."""
    try:
        with open(os.path.join(sm_root.path, "state", "log", "maillog"), "rb") as f:
            log = f.read().decode("utf-8", "replace")[-4000:]
    except OSError:
        log = "(no maillog)"
    return "--- maillog\n%s\n--- mailq\n%s" % (log, sm_root.run([], prog="mailq").stdout.decode(
        "utf-8", "replace"))


def sink_dsn_route(sink):
    """ParseLocal rule: addresses @[127.0.0.1] go to the smtp-sink (DSNs are read there); [127.0.0.1] itself is one of our names."""
    return "$* < @ [ 127 . 0 . 0 . 2 ] > $*\t$#esmtp $@ [127.0.0.1]:%d $: $1 < @ [127.0.0.2] > $2" \
        % sink.port


# ---- 1. LMTP over Dovecot's Unix socket ------------------------------------------------------

@pytest.fixture(scope="module")
def passwd_dovecot():
    """A Dovecot of its own whose users are also passwd users (mail, news): Sendmail's stock
    local_lmtp mailer has F=w, so a local user must have a passwd entry before LMTP."""
    d = Dovecot(peer_dir("dovecot-pw"), users={"mail": "mailpw", "news": "newspw"})
    d.start()
    yield d
    d.stop()
    shutil.rmtree(d.directory, ignore_errors=True)


def test_local_lmtp_unix_socket_stock_flags(sm_root, passwd_dovecot, smtp_sink):
    """FEATURE(local_lmtp) as shipped (F=w): local users go to Dovecot over its Unix socket;
    an alias expands first; a passwd user Dovecot does not know gets Dovecot's own 550 in the
    DSN; the message read back over IMAP and POP3 is the one sent."""
    dc = passwd_dovecot
    sink = smtp_sink()
    write_cf(sm_root, local=LOCAL_LMTP.format(flags=LMTP_FLAGS, args="FILE " + dc.lmtp_socket),
             parse_local=[sink_dsn_route(sink)])
    write_aliases(sm_root, {"postbox": "news"})
    data, mid = message("lmtp socket")
    submit(sm_root, ["mail", "postbox", "daemon"], data, sender="owner@[127.0.0.2]")
    assert queue_files(sm_root)
    proc = queue_run(sm_root)
    assert proc.returncode == 0, proc
    for user in ("mail", "news"):
        imap = find(dc.imap_messages(user), mid)
        pop = find(dc.pop3_messages(user), mid)
        assert len(imap) == 1 and len(pop) == 1, (user, imap, pop)
        assert imap[0] == pop[0]
        got = imap[0].replace(b"\r\n", b"\n")
        assert body_of(got) == body_of(data)
        head = header_block(got)
        assert head.startswith(b"Return-Path: <owner@[127.0.0.2]>\n")
        assert re.search(rb"\nReceived: from .*\n\tby imap\.example\.test with LMTP\n", head)
        for line in header_block(data).split(b"\n"):
            assert line in head                           # every original field kept
    # daemon is a passwd user but not Dovecot's: its per-recipient 550 comes back in a DSN
    dsn = sink.wait_messages(1, lambda m: b"daemon" in m.data)[0]
    assert dsn.sender == "" and dsn.recipients == ["owner@[127.0.0.2]"]
    assert b"Status: 5.1.1" in dsn.data
    # Dovecot's own words (its 550 after RCPT), not pysendmail's "User unknown".
    # (Sendmail writes the T= type "smtp;" here; bounce.py says X-Unix: reported.)
    assert re.search(rb"Diagnostic-Code: [-\w]+; 550 5\.1\.1 <daemon> User doesn't exist",
                     dsn.data), dsn.data
    assert not queue_files(sm_root)


def test_local_lmtp_virtual_users_without_w(sm_root, dovecot, smtp_sink):
    """With MODIFY_MAILER_FLAGS(`LOCAL', `-w') Dovecot's virtual users (no passwd entry)
    are handed to LMTP as they are; an unknown one gets Dovecot's 550."""
    sink = smtp_sink()
    write_cf(sm_root, local=LOCAL_LMTP.format(flags=LMTP_FLAGS.replace("w", ""),
                                              args="FILE " + dovecot.lmtp_socket),
             parse_local=[sink_dsn_route(sink)])
    write_aliases(sm_root, {"first": "user1"})
    data, mid = message("lmtp virtual")
    submit(sm_root, ["first", "user2", "nosuchuser"], data, sender="owner@[127.0.0.2]")
    queue_run(sm_root)
    for user in ("user1", "user2"):
        got = find(dovecot.imap_messages(user), mid)
        assert len(got) == 1 and body_of(got[0]) == body_of(data)
        assert find(dovecot.pop3_messages(user), mid) == got
    dsn = sink.wait_messages(1, lambda m: b"nosuchuser" in m.data)[0]
    assert re.search(rb"Diagnostic-Code: [-\w]+; 550 5\.1\.1 <nosuchuser> User doesn't exist",
                     dsn.data), dsn.data


# ---- 2. LMTP over TCP and a local Maildir in one message --------------------------------------

def test_lmtp_tcp_and_maildir_per_recipient(sm_root, dovecot):
    """A ParseLocal rule sends user2 to the `lmtp` mailer (A=TCP 127.0.0.1 <Dovecot's LMTP
    port>, F=z); root, in the same message, stays with the local mailer (Maildir)."""
    write_cf(sm_root, options=["MailboxFormat=maildir"],
             parse_local=["user2\t$#lmtp $@ localhost $: user2"],
             mailers=LMTP_MAILER.format(port=dovecot.lmtp_port))
    data, mid = message("lmtp tcp")
    submit(sm_root, ["user2", "root"], data)
    proc = queue_run(sm_root)
    assert proc.returncode == 0, proc
    got = find(dovecot.imap_messages("user2"), mid)
    assert len(got) == 1, diag(sm_root)
    assert body_of(got[0]) == body_of(data)
    assert b"Return-Path: <sender@example.org>" in got[0]
    maildir = os.path.join(sm_root.path, "mail", "root", "Maildir", "new")
    files = [os.path.join(maildir, n) for n in os.listdir(maildir)]
    assert len(files) == 1
    with open(files[0], "rb") as f:
        local = f.read()
    assert body_of(local) == body_of(data) and mid.encode() in local
    assert not queue_files(sm_root)
    with open(os.path.join(sm_root.path, "state", "log", "maillog"), "rb") as f:
        log = f.read()
    assert re.search(rb"to=user2,.*mailer=lmtp,.*stat=Sent", log), log
    assert re.search(rb"to=root,.*mailer=local,.*stat=Sent", log), log


# ---- 3. local Maildir delivery read by Dovecot -----------------------------------------------

def test_local_maildir_read_by_dovecot(sm_root, dovecot):
    """pysendmail's local Maildir delivery into the Maildir Dovecot serves for user1.
    Dovecot's users are virtual (passwd-file, owned by the mail uid `nobody`), the local agent
    needs a passwd user: the local user is nobody (the mail uid), MaildirPath is user1's
    Maildir. The file is the mail uid's, 0600, its S= the exact size; IMAP and POP3 serve it
    unchanged, with no flags; RFC822.SIZE is the CRLF size."""
    import imaplib
    uid, gid = mail_ids()
    write_cf(sm_root, options=["MailboxFormat=maildir",
                               "MaildirPath=" + dovecot.maildir("user1")])
    body = b"Maildir body.\n" + b"x" * 100 + b"\n\n.dot line\nlast\n"
    data, mid = message("maildir dovecot", body=body)
    before = set(os.listdir(os.path.join(dovecot.maildir("user1"), "new")))
    submit(sm_root, ["nobody"], data)
    proc = queue_run(sm_root)
    assert proc.returncode == 0, proc
    new_dir = os.path.join(dovecot.maildir("user1"), "new")
    names = [n for n in os.listdir(new_dir) if n not in before]
    assert len(names) == 1, diag(sm_root)
    path = os.path.join(new_dir, names[0])
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (uid, gid)
    assert st.st_mode & 0o777 == 0o600
    size = int(re.search(r",S=(\d+)", names[0]).group(1))
    assert size == st.st_size
    assert ":2," not in names[0]
    with open(path, "rb") as f:
        disk = f.read()
    assert b"\r\n" not in disk
    assert disk.endswith(data.split(b"\n\n", 1)[1])
    crlf_size = len(disk.replace(b"\n", b"\r\n"))
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30) as imap:
        imap.login("user1", "pass1")
        imap.select("INBOX", readonly=True)
        typ, found = imap.search(None, "HEADER", "Message-Id", mid)
        assert typ == "OK" and len(found[0].split()) == 1, found
        num = found[0].split()[0]
        typ, parts = imap.fetch(num, "(FLAGS RFC822.SIZE RFC822)")
        assert typ == "OK"
        meta = parts[0][0]
        # no \Seen or any other stored flag (\Recent is the session's, not the message's)
        assert re.search(rb"FLAGS \((\\Recent)?\)", meta), meta
        assert int(re.search(rb"RFC822\.SIZE (\d+)", meta).group(1)) == crlf_size
        assert parts[0][1] == disk.replace(b"\n", b"\r\n")
        imap.logout()
    assert find(dovecot.pop3_messages("user1"), mid) == [disk.replace(b"\n", b"\r\n")]
    # Dovecot's own files and ours share the owner; nothing of ours is left in tmp/
    assert not [n for n in os.listdir(os.path.join(dovecot.maildir("user1"), "tmp"))
                if "Q" in n and "R0" in n]


# ---- 4. smarthost: STARTTLS + AUTH -----------------------------------------------------------

def write_authinfo(sm_root, text, mode=0o600):
    path = os.path.join(sm_root.path, "etc", "authinfo")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def smarthost_cf(sm_root, port, options=()):
    write_cf(sm_root, macros=["DS[127.0.0.1]:%d" % port], options=options)


def relayed(sink, mid, timeout=20):
    return sink.wait_messages(1, lambda m: mid.encode() in m.data, timeout=timeout)


def test_smarthost_starttls_auth_plain(sm_root, postfix_smarthost):
    pf = postfix_smarthost
    smarthost_cf(sm_root, pf.port)
    write_authinfo(sm_root, 'AuthInfo:127.0.0.1 "U:user1" "P:pass1" "M:PLAIN"\n')
    data, mid = message("smarthost plain", to="far@example.com")
    submit(sm_root, ["far@example.com", "other@example.net"], data)
    proc = queue_run(sm_root)
    assert proc.returncode == 0, proc
    got = relayed(pf.sink, mid)
    assert len(got) == 1
    m = got[0]
    assert m.sender == "sender@example.org"
    assert sorted(m.recipients) == ["far@example.com", "other@example.net"]
    received = m.header("Received")
    assert "ESMTPSA" in received and "TLS" in received.upper(), received
    assert body_of(m.data) == body_of(data)
    assert not queue_files(sm_root)
    assert "sasl_username=user1" in pf.log_text()


def test_smarthost_without_credentials_bounces(sm_root, postfix_smarthost, smtp_sink):
    """No authinfo entry: STARTTLS is still used (offered: opportunistic), no AUTH, and the
    smarthost refuses to relay with a 554 at RCPT. A 5xx RCPT reply bounces (Sendmail's
    smtprcptstat: EX_UNAVAILABLE), with the smarthost's words in the DSN; nothing relayed."""
    pf = postfix_smarthost
    sink = smtp_sink()
    write_cf(sm_root, macros=["DS[127.0.0.1]:%d" % pf.port], parse_local=[sink_dsn_route(sink)])
    data, mid = message("smarthost noauth", to="far@example.com")
    submit(sm_root, ["far@example.com"], data, sender="owner@[127.0.0.2]")
    queue_run(sm_root)
    dsn = sink.wait_messages(1, lambda m: b"far@example.com" in m.data)[0]
    assert re.search(rb"(?i)Diagnostic-Code: smtp; 554 5\.7\.1 <far@example\.com>: Recipient "
                     rb"address rejected", dsn.data), dsn.data
    assert not [m for m in pf.sink.messages() if mid.encode() in m.data]
    assert not queue_files(sm_root), diag(sm_root)


def test_smarthost_wrong_password_bounces(sm_root, postfix_smarthost):
    """A 535 to AUTH: nothing is relayed and the message is not retried for days (Sendmail
    returns EX_NOPERM for a 5xx AUTH reply and goes on without AUTH, so the smarthost's
    relay refusal bounces it; only a 4xx AUTH reply defers). pysendmail bounces with the
    535 itself, which tells the sender's postmaster what is wrong. (The DSN goes to the
    same smarthost here and fails the same way.)"""
    pf = postfix_smarthost
    smarthost_cf(sm_root, pf.port)
    write_authinfo(sm_root, 'AuthInfo:127.0.0.1 "U:user1" "P:wrong" "M:PLAIN"\n')
    data, mid = message("smarthost badpw", to="far@example.com")
    submit(sm_root, ["far@example.com"], data, sender="owner@example.org")
    queue_run(sm_root)
    with open(os.path.join(sm_root.path, "state", "log", "maillog"), "rb") as f:
        log = f.read()
    assert re.search(rb"to=far@example\.com, .*mailer=relay, .*dsn=5\.7\.8, stat=535 5\.7\.8 ",
                     log), log
    assert b"from=<>" in log                   # the DSN was queued
    assert b"wrong" not in log
    assert not [m for m in pf.sink.messages() if mid.encode() in m.data]


class Forwarder:
    """A TCP relay on `listen` (host, port) to `target`: lets the agent see port 465 (the
    port that means implicit TLS) in front of the fixture's implicit-TLS port. Threads,
    stopped by close(); every socket has a timeout, so no thread outlives the test for long."""

    def __init__(self, listen, target):
        import socket
        import threading
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        import socket
        import threading
        while not self.stopping:
            try:
                client, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=30)
            except OSError:
                client.close()
                continue
            client.settimeout(30)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        import socket
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()
        for s in self.conns:
            s.close()


def test_authinfo_mechanism_list_honoured(sm_root, postfix_smarthost):
    """authinfo's "M:LOGIN" restricts the client to AUTH LOGIN (Sendmail intersects the
    server's list with it)."""
    pf = postfix_smarthost
    smarthost_cf(sm_root, pf.port)
    write_authinfo(sm_root, 'AuthInfo:127.0.0.1 "U:user2" "P:pass2" "M:LOGIN"\n')
    data, mid = message("mech login", to="far@example.com")
    submit(sm_root, ["far@example.com"], data)
    queue_run(sm_root)
    relayed(pf.sink, mid)
    assert re.search(r"sasl_method=LOGIN, sasl_username=user2", pf.log_text())


def test_smarthost_implicit_tls_port_465_auth(sm_root, postfix_smarthost):
    """DS[127.0.0.46]:465: TLS from the first byte (no STARTTLS), then AUTH LOGIN with the
    authinfo entry of that address; Postfix (smtpd_tls_wrappermode) relays it."""
    pf = postfix_smarthost
    try:
        fwd = Forwarder(("127.0.0.46", 465), ("127.0.0.1", pf.tls_port))
    except OSError as e:
        unavailable("cannot listen on 127.0.0.46:465: %s" % e)
    try:
        smarthost_cf(sm_root, 465)
        with open(os.path.join(sm_root.path, "etc", "sendmail.cf")) as f:
            cf = f.read().replace("DS[127.0.0.1]:465", "DS[127.0.0.46]:465")
        with open(os.path.join(sm_root.path, "etc", "sendmail.cf"), "w") as f:
            f.write(cf)
        write_authinfo(sm_root, 'AuthInfo:127.0.0.46 "U:user2" "P:pass2" "M:LOGIN"\n')
        data, mid = message("smarthost implicit", to="far@example.com")
        submit(sm_root, ["far@example.com"], data)
        proc = queue_run(sm_root)
        assert proc.returncode == 0, diag(sm_root)
        m = relayed(pf.sink, mid)[0]
        assert "ESMTPSA" in m.header("Received")
        assert re.search(r"sasl_method=\w+, sasl_username=user2", pf.log_text())
        assert not queue_files(sm_root)
    finally:
        fwd.close()


# ---- 5. TLS verification; 6. opportunistic STARTTLS to an MX ----------------------------------

def test_starttls_opportunistic_to_mx(sm_root, postfix_mx):
    mx = postfix_mx
    smarthost_cf(sm_root, mx.port)
    data, mid = message("mx starttls", to="far@example.com")
    submit(sm_root, ["far@example.com"], data)
    proc = queue_run(sm_root)
    assert proc.returncode == 0, diag(sm_root)
    m = relayed(mx.sink, mid)[0]
    received = m.header("Received")
    assert "ESMTPS" in received and "(using TLS" in received, received
    assert "ESMTPSA" not in received


def test_tls_verify_with_right_ca(sm_root, postfix_mx):
    mx = postfix_mx
    smarthost_cf(sm_root, mx.port, options=["TLSVerifyHosts=[127.0.0.1] 127.0.0.1",
                                            "CACertFile=" + mx.cert])
    data, mid = message("verify ok", to="far@example.com")
    submit(sm_root, ["far@example.com"], data)
    queue_run(sm_root)
    assert not queue_files(sm_root), diag(sm_root)
    m = relayed(mx.sink, mid)[0]
    assert "(using TLS" in m.header("Received")
    assert not queue_files(sm_root), diag(sm_root)


def test_tls_verify_with_wrong_ca_defers(sm_root, postfix_mx, tmp_path):
    """The MX's certificate does not verify against another CA: deferred, and the message
    is not sent in clear either (the MX would take it without TLS)."""
    from peers import make_certificate
    other_ca, _ = make_certificate(str(tmp_path), "other.example")
    mx = postfix_mx
    smarthost_cf(sm_root, mx.port, options=["TLSVerifyHosts=[127.0.0.1] 127.0.0.1",
                                            "CACertFile=" + other_ca])
    data, mid = message("verify bad", to="far@example.com")
    submit(sm_root, ["far@example.com"], data)
    queue_run(sm_root)
    q = sm_root.mailq()
    assert len(queue_files(sm_root)) == 1, diag(sm_root)
    assert re.search(r"(?i)certificate|TLS", q), q
    time.sleep(1)
    assert not [m for m in mx.sink.messages() if mid.encode() in m.data]

"""Real third-party peers on loopback for the outbound-delivery tests: fixtures and helpers.

    from peers import smtp_sink, dovecot, postfix_smarthost, smarthost_sink, postfix_mx  # fixtures
    from peers import SmtpSink, Dovecot, PostfixSmarthost, lmtp_deliver, USERS

* `smtp_sink` (function scope) is a factory: `smtp_sink(hard_reject="RCPT", ...)` starts a
  Postfix smtp-sink on 127.0.0.1:<free port> (or a Unix socket) that captures every mail
  transaction; `.messages()` parses what arrived (envelope and content). No STARTTLS: smtp-sink
  cannot do TLS at all.
* `dovecot` (session scope): a private Dovecot (IMAP, POP3, LMTP on TCP and on a Unix socket,
  SASL auth socket) with the users of USERS; `.imap_messages(user)`, `.pop3_messages(user)`,
  `.maildir(user)`.
* `postfix_smarthost` (session scope): a private Postfix that requires STARTTLS (`port`) or
  implicit TLS (`tls_port`) and SMTP AUTH (checked by the `dovecot` fixture) before it relays,
  and relays everything to its own smtp-sink (`.sink`), where the test reads what arrived.
* `postfix_mx` (session scope): the same Postfix as a STARTTLS-capable remote MX (TLS
  optional, no AUTH, accepts everything), relaying to its own `.sink`.

Every peer runs in its own 0755 directory under the checkout's run/peers/ (Postfix and Dovecot
hand work to other users, so pytest's 0700 tmp dirs cannot be used), keeps its config, state,
mail and log there, and is stopped by the PID this module started (Postfix: `postfix -c DIR
stop`, the daemon's own command for its own instance). Nothing system-wide is read or changed.
Dovecot and Postfix need root; a missing program or missing root skips the test, or fails it
under CI=true (conftest.require_program).
"""
import itertools
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess

import pytest

from conftest import IS_ROOT, REPO, check_peer_ancestors, require_program, unavailable
from smtpd_helpers import banner_ready, children_of, free_port, wait_for

# user -> password, for Dovecot (IMAP/POP3/LMTP/SASL) and so for the Postfix smarthost's AUTH.
USERS = {"user1": "pass1", "user2": "pass2"}
DOMAIN = "example.test"

_serial = itertools.count(1)


# ---- small helpers ---------------------------------------------------------------------------

def require_root(what):
    """Skip (fail under CI=true) unless running as root."""
    if not IS_ROOT:
        unavailable("%s needs root" % what)


def peer_dir(name):
    """A fresh 0755 directory run/peers/<name>-<pid>-<n>/ in the checkout. Every ancestor must
    be searchable by others and not group/world-writable (Postfix, Dovecot and smtp-sink run
    parts of themselves as other users)."""
    check_peer_ancestors(REPO)
    path = os.path.join(REPO, "run", "peers", "%s-%d-%d" % (name, os.getpid(), next(_serial)))
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    for p in (os.path.join(REPO, "run"), os.path.join(REPO, "run", "peers"), path):
        os.chmod(p, 0o755)
    return path


def mail_ids():
    """(uid, gid) owning Dovecot's mail: nobody's when root (as PEERS.md §3), else our own."""
    if IS_ROOT:
        import pwd
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    return os.getuid(), os.getgid()


def port_open(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def unix_open(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(1)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def read_text(path, tail=6000):
    try:
        with open(path, "rb") as f:
            return f.read()[-tail:].decode("utf-8", "replace")
    except OSError:
        return "(no %s)" % path


def make_certificate(directory, cn="localhost"):
    """A self-signed RSA certificate for `cn` (SAN DNS:localhost, IP:127.0.0.1) written with
    openssl as directory/cert.pem and directory/key.pem (0600); returns (cert, key)."""
    openssl = require_program("openssl")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    proc = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
         "-subj", "/CN=%s" % cn, "-addext", "subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1" % cn,
         "-keyout", key, "-out", cert], capture_output=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail("openssl req failed: %r" % proc.stderr)
    os.chmod(key, 0o600)
    return cert, key


def tls_context(cafile=None):
    """A client SSL context: verifying against `cafile` when given, else verifying nothing."""
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def stop_process(proc, timeout=10):
    """TERM the Popen `proc` we started, KILL it after `timeout` s; reaps it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def lmtp_deliver(target, sender, recipients, message, port=None, timeout=30):
    """Deliver `message` (bytes) over LMTP to `target` (a Unix socket path, or a host with
    `port`). Returns (rcpt_replies, data_replies): {recipient: (code, text)} for every RCPT and
    {recipient: (code, text)} for the replies after the final dot, one per accepted recipient
    in RCPT order (smtplib.LMTP.data() reads only the first; the rest are read here)."""
    conn = smtplib.LMTP(local_hostname="client.example.test", timeout=timeout)
    code, text = conn.connect(target, port or 0)
    if code != 220:
        conn.close()
        raise AssertionError("LMTP greeting: %d %r" % (code, text))
    try:
        code, text = conn.ehlo()
        if code != 250:
            raise AssertionError("LHLO: %d %r" % (code, text))
        code, text = conn.mail(sender)
        if code != 250:
            raise AssertionError("MAIL: %d %r" % (code, text))
        rcpt_replies, accepted = {}, []
        for r in recipients:
            rcpt_replies[r] = conn.rcpt(r)
            if rcpt_replies[r][0] == 250:
                accepted.append(r)
        data_replies = {}
        if accepted:
            code, text = conn.docmd("DATA")
            if code != 354:
                raise AssertionError("DATA: %d %r" % (code, text))
            lines = message.replace(b"\r\n", b"\n").split(b"\n")
            if lines[-1] == b"":
                lines.pop()
            conn.send(b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines)
                      + b".\r\n")
            for r in accepted:
                data_replies[r] = conn.getreply()
        conn.quit()
        return rcpt_replies, data_replies
    finally:
        conn.close()


# ---- smtp-sink ---------------------------------------------------------------------------------

class SinkMessage:
    """One transaction smtp-sink captured. Attributes: sender (str, '' for <>), recipients
    (list of str), mail_args / rcpt_args (the raw MAIL and RCPT argument texts, with their
    ESMTP parameters), helo, proto ('SMTP'/'ESMTP'/'LMTP'), client_addr, data (the message
    bytes as received, after dot-unstuffing; smtp-sink normalizes line ends to LF), path.
    Caution: smtp-sink also writes the file for a transaction it then rejects at '.'."""

    def __init__(self, path, raw):
        self.path = path
        self.raw = raw
        fields, received, rest = {}, [], raw
        lines = raw.split(b"\n")
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith(b"Received: ") and b"(smtp-sink)" in b"".join(lines[i:i + 2]):
                received = lines[i:i + 3]
                i += 3
                break
            name, _, value = line.partition(b": ")
            fields.setdefault(name.decode("ascii", "replace"), []).append(value.decode("utf-8", "replace"))
            i += 1
        rest = b"\n".join(lines[i:])
        if rest.endswith(b"\n\n"):          # smtp-sink appends an empty line
            rest = rest[:-1]
        self.received = b"\n".join(received)
        self.data = rest
        self.client_addr = fields.get("X-Client-Addr", [""])[0]
        self.proto = fields.get("X-Client-Proto", [""])[0]
        self.helo = fields.get("X-Helo-Args", [None])[0]
        self.mail_args = fields.get("X-Mail-Args", [""])[0]
        self.rcpt_args = fields.get("X-Rcpt-Args", [])
        self.sender = _angle(self.mail_args)
        self.recipients = [_angle(a) for a in self.rcpt_args]

    def header(self, name):
        """The first header field `name` of the message (unfolded str), or None."""
        import email.parser
        import email.policy
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(self.data)
        value = msg.get(name)
        return None if value is None else " ".join(str(value).split())

    def __repr__(self):
        return "<SinkMessage from %r to %r, %d bytes>" % (self.sender, self.recipients, len(self.data))


def _angle(args):
    args = args.strip()
    if args.startswith("<") and ">" in args:
        return args[1:args.index(">")]
    return args.split(" ", 1)[0] if args else ""


class SmtpSink:
    """Postfix's smtp-sink as a remote MX (or LMTP server), capturing each transaction.

    SmtpSink(directory, hostname="sink.example.test", unix=False, **faults).start()
    faults (each a command name or list of them, e.g. "RCPT", ["MAIL", "."]):
      hard_reject (-f, 5xx; implies no PIPELINING), soft_reject (-r, 4xx; implies no
      PIPELINING), disconnect (-q, hang up without a reply), disconnect_421 (-Q)
    booleans: no_pipelining (-p), no_esmtp (-e), no_8bitmime (-8), lmtp (-L), no_auth (-a),
      no_dsn (-N), no_enhancedstatuscodes (-E), no_xclient (-C), no_xforward (-F)
    hard_reply / soft_reply: the reject texts (-B / -b); delays: {"RCPT": 2} (-W cmd:delay);
    data_delay (-w); extra: more raw smtp-sink arguments.
    Attributes: host, port (None for unix), socket_path (unix only), address (for smtplib),
    directory, dumps (capture dir), log, proc, pid."""

    FLAGS = {"no_pipelining": "-p", "no_esmtp": "-e", "no_8bitmime": "-8", "lmtp": "-L",
             "no_auth": "-a", "no_dsn": "-N", "no_enhancedstatuscodes": "-E",
             "no_xclient": "-C", "no_xforward": "-F"}
    LISTS = {"hard_reject": "-f", "soft_reject": "-r", "disconnect": "-q", "disconnect_421": "-Q"}

    def __init__(self, directory, hostname="sink.example.test", unix=False, hard_reply=None,
                 soft_reply=None, delays=None, data_delay=None, extra=(), **options):
        self.exe = require_program("smtp-sink")
        self.directory = directory
        self.hostname = hostname
        self.host = "127.0.0.1"
        self.dumps = os.path.join(directory, "msgs")
        self.log = os.path.join(directory, "smtp-sink.log")
        self.proc = None
        args = ["-h", hostname, "-d", os.path.join(self.dumps, "m.")]
        for key, value in options.items():
            if key in self.FLAGS:
                if value:
                    args.append(self.FLAGS[key])
            elif key in self.LISTS:
                if value:
                    args += [self.LISTS[key], value if isinstance(value, str) else ",".join(value)]
            else:
                raise TypeError("SmtpSink: unknown option %r" % key)
        if hard_reply:
            args += ["-B", hard_reply]
        if soft_reply:
            args += ["-b", soft_reply]
        for cmd, delay in (delays or {}).items():
            args += ["-W", "%s:%s" % (cmd.lower(), delay)]
        if data_delay is not None:
            args += ["-w", str(data_delay)]
        args += list(extra)
        if unix:
            self.port = None
            self.socket_path = os.path.join(directory, "sink.sock")
            listen = "unix:" + self.socket_path
        else:
            self.port = free_port()
            self.socket_path = None
            listen = "127.0.0.1:%d" % self.port
        self.args = args + [listen, "64"]

    @property
    def address(self):
        """What smtplib.SMTP/LMTP takes as host: the socket path (unix) or the IP."""
        return self.socket_path or self.host

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, timeout=10):
        os.makedirs(self.dumps, exist_ok=True)
        argv = [self.exe]
        if IS_ROOT:     # smtp-sink refuses to keep root: it drops to -u after binding
            argv += ["-u", "nobody"]
            os.chown(self.dumps, mail_ids()[0], -1)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv + self.args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.directory)
        ready = (lambda: unix_open(self.socket_path)) if self.socket_path else \
            (lambda: port_open(self.port))
        if not wait_for(lambda: self.proc.poll() is not None or ready(), timeout, 0.02) \
                or self.proc.poll() is not None:
            self.stop()
            pytest.fail("smtp-sink did not start (status %r): %s\n%s" % (
                self.proc.returncode, " ".join(self.args), read_text(self.log)))
        return self

    def stop(self):
        stop_process(self.proc)

    def messages(self):
        """Every captured transaction as SinkMessage, oldest first by the capture file's mtime.
        File times are coarse (a clock tick of a few ms): transactions that ended within one
        tick come in an arbitrary order, so pick messages by content, not by position."""
        out = []
        try:
            names = os.listdir(self.dumps)
        except FileNotFoundError:
            return out
        for name in names:
            path = os.path.join(self.dumps, name)
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                key = (os.stat(path).st_mtime_ns, name)
            except OSError:
                continue
            out.append((key, SinkMessage(path, raw)))
        return [m for _, m in sorted(out, key=lambda kv: kv[0])]

    def wait_messages(self, count=1, predicate=None, timeout=20):
        """Wait until at least `count` captured messages satisfy `predicate` (default: all do);
        returns those. Fails the test with the sink's log on timeout."""
        found = []

        def check():
            found[:] = [m for m in self.messages() if predicate is None or predicate(m)]
            return len(found) >= count
        if not wait_for(check, timeout, 0.05):
            pytest.fail("smtp-sink got %d matching message(s) of %d wanted within %ss; all: %r\n%s"
                        % (len(found), count, timeout, self.messages(), read_text(self.log)))
        return list(found)

    def clear(self):
        """Forget the transactions captured so far."""
        for name in os.listdir(self.dumps):
            os.unlink(os.path.join(self.dumps, name))


@pytest.fixture
def smtp_sink():
    """smtp_sink(**options) -> a started SmtpSink (see its options); all stopped at teardown."""
    started = []

    def start(**options):
        sink = SmtpSink(peer_dir("sink"), **options)
        started.append(sink)
        return sink.start()
    yield start
    for sink in started:
        sink.stop()
        shutil.rmtree(sink.directory, ignore_errors=True)


# ---- Dovecot -----------------------------------------------------------------------------------

DOVECOT_CONF = """\
# Private Dovecot for pysendmail's tests: nothing here reads /etc/dovecot.
protocols = imap pop3 lmtp
listen = 127.0.0.1
base_dir = {base}
state_dir = {state}
instance_name = pysendmail-test-{serial}
log_path = {log}
auth_verbose = yes
# no 2 s pause after a failed login: the tests check failures on purpose
auth_failure_delay = 0
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
mail_location = maildir:{mail}/%u/Maildir
first_valid_uid = {first_uid}
first_valid_gid = {first_gid}
default_internal_user = {internal_user}
default_login_user = {login_user}
postmaster_address = postmaster@{domain}
hostname = imap.{domain}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
# no auth penalty: after a failed login Dovecot would delay every later login from 127.0.0.1
# (Postfix's SASL ones too) by 2 to 15 s; without this listener the auth process skips it
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service auth {{
  unix_listener auth-client {{
    mode = 0666
  }}
  unix_listener auth-userdb {{
    mode = 0666
  }}
  inet_listener auth-inet {{
    address = 127.0.0.1
    port = {auth_port}
  }}
}}
"""


class Dovecot:
    """A private Dovecot 2.3 (root only) in `directory`, users USERS ({PLAIN} passwords), mail in
    maildir:<directory>/mail/%u/Maildir owned by mail_ids(). LMTP maps RCPT <user@any> to user.
    Attributes: host, imap_port, pop3_port, lmtp_port, lmtp_socket (Unix), auth_socket (Unix,
    Dovecot SASL: Postfix's smtpd_sasl_path), auth_port (the same on TCP), users, log,
    directory, pid."""

    def __init__(self, directory, users=None):
        require_root("a private Dovecot")
        self.exe = require_program("dovecot")
        self.directory = directory
        self.users = dict(users or USERS)
        self.host = "127.0.0.1"
        self.imap_port, self.pop3_port, self.lmtp_port, self.auth_port = (
            free_port(), free_port(), free_port(), free_port())
        self.base = os.path.join(directory, "base")
        self.lmtp_socket = os.path.join(self.base, "lmtp")
        self.auth_socket = os.path.join(self.base, "auth-client")
        self.config = os.path.join(directory, "dovecot.conf")
        self.log = os.path.join(directory, "dovecot.log")
        self.out = os.path.join(directory, "dovecot.out")
        self.mail = os.path.join(directory, "mail")
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def maildir(self, user):
        """The Maildir of `user` (with new/, cur/, tmp/)."""
        return os.path.join(self.mail, user, "Maildir")

    def maildir_files(self, user):
        """Paths of the message files in the user's Maildir (new/ and cur/), sorted by name."""
        out = []
        for sub in ("new", "cur"):
            d = os.path.join(self.maildir(user), sub)
            out += [os.path.join(d, n) for n in sorted(os.listdir(d)) if not n.startswith(".")]
        return out

    def start(self, timeout=20):
        uid, gid = mail_ids()
        os.makedirs(os.path.join(self.directory, "state"))
        for user in self.users:
            for sub in ("new", "cur", "tmp"):
                os.makedirs(os.path.join(self.maildir(user), sub))
        for root, dirs, _ in os.walk(self.mail):
            os.chown(root, uid, gid)
        users = os.path.join(self.directory, "users")
        with open(users, "w") as f:
            for user, password in self.users.items():
                f.write("%s:{PLAIN}%s:%d:%d::%s::\n" % (user, password, uid, gid,
                                                        os.path.join(self.mail, user)))
        with open(self.config, "w") as f:
            f.write(DOVECOT_CONF.format(
                base=self.base, state=os.path.join(self.directory, "state"), log=self.log,
                mail=self.mail, users=users, domain=DOMAIN, serial=os.path.basename(self.directory),
                first_uid=min(uid, 100), first_gid=min(gid, 100), internal_user="dovecot",
                login_user="dovenull", imap_port=self.imap_port, pop3_port=self.pop3_port,
                lmtp_port=self.lmtp_port, auth_port=self.auth_port))
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen([self.exe, "-c", self.config, "-F"], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.directory)

        def ready():
            return self.proc.poll() is not None or (
                all(port_open(p) for p in (self.imap_port, self.pop3_port, self.lmtp_port,
                                           self.auth_port))
                and unix_open(self.lmtp_socket) and unix_open(self.auth_socket))
        if not wait_for(ready, timeout, 0.05) or self.proc.poll() is not None:
            self.stop()
            pytest.fail("Dovecot did not start (status %r)\n--- dovecot.out\n%s\n--- dovecot.log\n%s"
                        % (self.proc.returncode, read_text(self.out), read_text(self.log)))
        return self

    def stop(self, timeout=15):
        """doveadm stop, then TERM (KILL) the master we started and any child it left."""
        if self.proc is None or self.proc.poll() is not None:
            return
        kids = children_of(self.proc.pid)
        doveadm = shutil.which("doveadm", path=os.environ.get("PATH", "") + ":/usr/bin")
        if doveadm:
            subprocess.run([doveadm, "-c", self.config, "stop"], capture_output=True, timeout=30)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        for pid in kids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _password(self, user, password):
        return self.users[user] if password is None else password

    def imap_messages(self, user, password=None, mailbox="INBOX"):
        """The messages in `mailbox` of `user`, as bytes (RFC822 via IMAP, CRLF line ends)."""
        import imaplib
        out = []
        with imaplib.IMAP4(self.host, self.imap_port, timeout=30) as imap:
            imap.login(user, self._password(user, password))
            typ, data = imap.select(mailbox, readonly=True)
            assert typ == "OK", data
            typ, data = imap.search(None, "ALL")
            assert typ == "OK", data
            for num in data[0].split():
                typ, parts = imap.fetch(num, "(RFC822)")
                assert typ == "OK", parts
                out.append(parts[0][1])
            imap.logout()
        return out

    def pop3_messages(self, user, password=None):
        """The messages of `user` via POP3 (USER/PASS, RETR; nothing deleted), as bytes with CRLF."""
        import poplib
        out = []
        pop = poplib.POP3(self.host, self.pop3_port, timeout=30)
        try:
            pop.user(user)
            pop.pass_(self._password(user, password))
            count, _ = pop.stat()
            for i in range(1, count + 1):
                _, lines, _ = pop.retr(i)
                out.append(b"".join(line + b"\r\n" for line in lines))
        finally:
            pop.quit()
        return out


@pytest.fixture(scope="session")
def dovecot():
    """A started Dovecot (session scope; see Dovecot). Tests share it: use fresh message ids."""
    d = Dovecot(peer_dir("dovecot"))
    d.start()
    yield d
    d.stop()
    shutil.rmtree(d.directory, ignore_errors=True)


# ---- Postfix smarthost -------------------------------------------------------------------------

POSTFIX_MAIN = """\
# Private Postfix for pysendmail's tests (postfix -c {etc}); the system instance is untouched.
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
myhostname = {name}.{domain}
mydomain = {domain}
myorigin = $myhostname
syslog_name = pysendmail-test-postfix
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
relay_domains =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_banner = $myhostname ESMTP test-{name}
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_received_header = yes
biff = no
"""

POSTFIX_SASL = """\
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {sasl_path}
smtpd_sasl_security_options = noanonymous
smtpd_sasl_authenticated_header = yes
"""

POSTFIX_MX = """\
# a remote MX: STARTTLS offered, not required; takes mail for every domain from loopback
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = may
"""

POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
127.0.0.1:{tls_port} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixSmarthost:
    """A private Postfix (root only) in `directory`: a submission-style smarthost on
    127.0.0.1:`port` (STARTTLS required: smtpd_tls_security_level=encrypt) and on
    127.0.0.1:`tls_port` (implicit TLS, smtpd_tls_wrappermode=yes). AUTH (PLAIN, LOGIN) is
    offered only under TLS and checked by Dovecot SASL at `sasl_path` (the Dovecot fixture's
    auth_socket); only authenticated clients may relay, and everything accepted is relayed to
    `relay` ((host, port), an SmtpSink's) over plain SMTP.
    With sasl_path=None it is a remote MX instead: STARTTLS offered but optional, no AUTH,
    everything from anyone accepted and relayed (postfix_mx). Attributes: host, port, tls_port,
    cert (the self-signed certificate, CN/SAN localhost and 127.0.0.1: a CA file for
    verifying clients), etc (config dir), log (maillog), directory, pid (the master's)."""

    def __init__(self, directory, sasl_path, relay, name="smarthost"):
        require_root("a private Postfix")
        self.exe = require_program("postfix")
        self.directory = directory
        self.etc = os.path.join(directory, "etc")
        self.host = "127.0.0.1"
        self.port, self.tls_port = free_port(), free_port()
        self.sasl_path = sasl_path
        self.name = name
        self.relay = relay
        self.log = os.path.join(directory, "maillog")
        self.pid_file = os.path.join(directory, "queue", "pid", "master.pid")
        self.pid = None
        self.cert = None

    def _postfix(self, *args, timeout=60):
        argv = [self.exe, "-c", self.etc] + list(args)
        script = shutil.which("script")
        if script:      # postfix prints its errors only to a tty, else only to the maillog
            import shlex
            argv = [script, "-qec", " ".join(shlex.quote(a) for a in argv), "/dev/null"]
        return subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self, timeout=30):
        for sub in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.directory, sub))
        import pwd
        pf = pwd.getpwnam("postfix")
        os.chown(os.path.join(self.directory, "data"), pf.pw_uid, pf.pw_gid)
        self.cert, key = make_certificate(self.etc, "localhost")
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(POSTFIX_MAIN.format(etc=self.etc, dir=self.directory, domain=DOMAIN,
                                        relay_port=self.relay[1], cert=self.cert, key=key,
                                        name=self.name))
            if self.sasl_path:
                f.write(POSTFIX_SASL.format(sasl_path=self.sasl_path))
            else:
                f.write(POSTFIX_MX)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER.format(port=self.port, tls_port=self.tls_port))
        proc = self._postfix("start")
        if proc.returncode != 0:
            self.stop()
            pytest.fail("postfix start exited %d: %s\n%s" % (
                proc.returncode, proc.stdout.decode(errors="replace"), read_text(self.log)))

        def ready():
            if self.pid is None:
                try:
                    with open(self.pid_file) as f:
                        self.pid = int(f.read().strip())
                except (OSError, ValueError):
                    return False
            # a banner, not just a listening socket: smtpd checks its config per connection
            return banner_ready(self.port) and banner_ready(self.tls_port, tls=True)
        if not wait_for(ready, timeout, 0.05):
            self.stop()
            pytest.fail("postfix did not listen on %d/%d\n%s" % (
                self.port, self.tls_port, read_text(self.log)))
        return self

    def alive(self):
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def stop(self, timeout=20):
        """`postfix -c etc stop`, waiting for the master (pid) to exit; TERM it if it lingers."""
        if not os.path.exists(self.pid_file) and self.pid is None:
            return
        self._postfix("stop")
        if self.pid and not wait_for(lambda: not self.alive(), timeout, 0.05):
            os.kill(self.pid, signal.SIGTERM)
            wait_for(lambda: not self.alive(), 10, 0.05)

    def log_text(self):
        return read_text(self.log, tail=20000)

    def connect(self, implicit_tls=False, timeout=30):
        """An smtplib client connected to the STARTTLS port (SMTP) or the implicit-TLS port
        (SMTP_SSL, not verifying the certificate). The caller quits it."""
        if implicit_tls:
            return smtplib.SMTP_SSL(self.host, self.tls_port, timeout=timeout,
                                    local_hostname="client.example.test", context=tls_context())
        return smtplib.SMTP(self.host, self.port, timeout=timeout,
                            local_hostname="client.example.test")


@pytest.fixture(scope="session")
def smarthost_sink():
    """The SmtpSink the Postfix smarthost relays to (session scope)."""
    sink = SmtpSink(peer_dir("relay-sink"), hostname="mx.example.test").start()
    yield sink
    sink.stop()
    shutil.rmtree(sink.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postfix_smarthost(dovecot, smarthost_sink):
    """A started PostfixSmarthost (session scope) using `dovecot` for AUTH and relaying to
    `smarthost_sink` (also its `.sink`). Stopped before Dovecot (its smtpd holds auth links)."""
    pf = PostfixSmarthost(peer_dir("postfix"), dovecot.auth_socket,
                          (smarthost_sink.host, smarthost_sink.port))
    pf.sink = smarthost_sink
    pf.dovecot = dovecot
    pf.start()
    yield pf
    pf.stop()
    shutil.rmtree(pf.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postfix_mx():
    """A started PostfixSmarthost in MX mode (session scope): a STARTTLS-capable remote MX on
    127.0.0.1:port (implicit TLS on tls_port), no AUTH, relaying everything to its own
    SmtpSink `.sink` (smtp-sink itself cannot do TLS)."""
    sink = SmtpSink(peer_dir("mx-sink"), hostname="final.example.test").start()
    pf = PostfixSmarthost(peer_dir("postfix-mx"), None, (sink.host, sink.port), name="mx")
    pf.sink = sink
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()
        sink.stop()
        shutil.rmtree(pf.directory, ignore_errors=True)
        shutil.rmtree(sink.directory, ignore_errors=True)

"""The real callers of sendmail (sendmail-ref/CALLERS.md), with their exact argv and stdin.

Each caller's command line is run against the installed `sendmail` of a private
instance (PYSENDMAIL_ROOT), in the delivery mode its argv implies (background unless
it says -odi); then `sendmail -q` delivers whatever is still queued. Local recipients
are read back from DIR/mail/<user> with the `mailbox` module and checked header by
header and byte by byte; remote ones (example.org, ...) must stay queued and show in
`mailq`. Popen callers (cron, PHP, PHPMailer, logwatch) go through `/bin/sh -c`
exactly as they do. PHP's real mail() is run too.
"""
import email.utils
import mailbox
import os
import re
import shlex
import subprocess
import time

import pytest

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "callers")

# Headers a delivered message may carry beyond the submitted ones.
ADDED_OK = {"return-path", "received", "date", "message-id", "from", "x-authentication-warning",
            "delivered-to"}


def stdin_of(name, **replace):
    """The captured stdin `name` (data/callers/NAME.txt), with byte replacements old=new
    given as keyword pairs in `replace` (values are (old, new) tuples)."""
    with open(os.path.join(DATA, name + ".txt"), "rb") as f:
        data = f.read()
    for old, new in replace.values():
        assert old in data
        data = data.replace(old, new)
    return data


def split_message(raw):
    """(list of (name, raw header line(s) bytes), body bytes) of a message with LF line ends."""
    head, sep, body = raw.partition(b"\n\n")
    assert sep, "no blank line after the headers: %r" % raw
    headers = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, text = headers[-1]
            headers[-1] = (name, text + b"\n" + line)
        else:
            headers.append((line.split(b":", 1)[0].decode("ascii").lower(), line))
    return headers, body


class Delivered:
    """One message read back from an mbox: From_ line, raw headers, body bytes."""

    def __init__(self, from_line, raw):
        self.from_line = from_line
        self.raw = raw
        self.headers, self.body = split_message(raw)

    def values(self, name):
        return [line.split(b":", 1)[1].strip().decode("utf-8", "replace")
                for n, line in self.headers if n == name.lower()]

    def one(self, name):
        values = self.values(name)
        assert len(values) == 1, "%s: %r in %r" % (name, values, self.raw)
        return values[0]


def read_mbox(path):
    """The messages of an mbox, read under its lock (fcntl and dotlock, as a mail reader
    does): a background delivery may be appending at this moment."""
    if not os.path.exists(path):
        return []
    box = mailbox.mbox(path, create=False)
    deadline = time.monotonic() + 15
    while True:
        try:
            box.lock()
            break
        except mailbox.ExternalClashError:      # a delivery holds the dotlock right now
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        return [Delivered(box.get_message(k).get_from(), box.get_bytes(k)) for k in box.keys()]
    finally:
        box.unlock()
        box.close()


def deliver(inst, user, count, timeout=15):
    """Run the queue until `user` has `count` messages (bounded); return them."""
    deadline = time.monotonic() + timeout
    while True:
        inst.run(["-q"], check=True)
        got = read_mbox(inst.mailbox(user))
        if len(got) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    inst.run(["-q"], check=True)
    got = read_mbox(inst.mailbox(user))
    assert len(got) == count, "%s has %d messages, expected %d: %r" % (
        user, len(got), count, [m.raw for m in got])
    return got


def submit(inst, argv, data, shell=False, argv0=None):
    """Start the installed sendmail as the caller does: exec with `argv` (argv[0] = argv0 or
    the full path), or through /bin/sh -c when `shell` (popen). Exit status must be 0."""
    path = inst.command("sendmail")
    if shell:
        cmd = ["/bin/sh", "-c", " ".join([shlex.quote(path)] + argv)]
        proc = subprocess.run(cmd, input=data, capture_output=True, env=inst.env, timeout=60)
    else:
        proc = subprocess.run([argv0 or path] + argv, executable=path, input=data,
                              capture_output=True, env=inst.env, timeout=60)
    assert proc.returncode == 0, "sendmail %r exited %d: %r %r" % (
        argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def normalized(data):
    return data.replace(b"\r\n", b"\n")


def check_message(msg, submitted, sender, removed=("bcc",)):
    """Header by header: every submitted header (minus `removed`) is there, unchanged and in
    order; the only additions are ADDED_OK ones; Return-Path and Received come first; Date,
    Message-ID and From exist once. Byte by byte: the body is the submitted one."""
    sub_headers, sub_body = split_message(normalized(submitted))
    kept = [h for h in sub_headers if h[0] not in removed]
    got = [h for h in msg.headers]
    it = iter(got)
    for name, line in kept:
        for gname, gline in it:
            if gline == line:
                break
            assert gname in ADDED_OK, "unexpected header %r before %r" % (gline, line)
        else:
            raise AssertionError("submitted header %r missing or reordered in %r" % (line, msg.raw))
    submitted_lines = {line for _, line in kept}
    for name, line in got:
        assert line in submitted_lines or name in ADDED_OK, "unexpected header %r" % line
    for name in removed:
        assert not msg.values(name), "%s not removed: %r" % (name, msg.raw)
    assert [n for n, _ in got[:2]] == ["return-path", "received"], msg.raw
    assert len(msg.values("received")) >= 1
    msg.one("message-id")
    assert email.utils.parsedate_to_datetime(msg.one("date")) is not None
    msg.one("from")
    assert msg.body == sub_body, "body %r != submitted %r" % (msg.body, sub_body)
    assert b"\r" not in msg.raw
    check_sender(msg, sender)


def check_sender(msg, sender):
    """The envelope sender: Return-Path and the mbox From_ line. sender="root" matches root
    with or without a domain; "" is the null sender."""
    rp = msg.one("return-path")
    env_from = msg.from_line.split(" ", 1)[0]
    if sender == "":
        assert rp == "<>", rp
        assert env_from in ("MAILER-DAEMON", "<>", ""), msg.from_line
    elif "@" in sender:
        assert rp == "<%s>" % sender, rp
        assert env_from == sender, msg.from_line
    else:
        assert re.fullmatch(r"<%s(@[^>]+)?>" % re.escape(sender), rp), rp
        assert re.fullmatch(r"%s(@\S+)?" % re.escape(sender), env_from), msg.from_line


# ---- the callers, with local recipients: delivered and read back ----------------------------

TO_ROOT = {"to": (b"To: bob@example.org", b"To: root")}
# Only root is used as a local recipient: a private instance lives under pytest's 0700
# tmp directory, which other users' delivery processes cannot enter.
MAILX_LOCAL = {"to": (b"To: bob@example.org", b"To: root")}

# (id, argv as the caller builds it, stdin, popen?, argv[0], envelope sender, extra checks)
CALLERS = [
    ("debian-cron", ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "", "root"], "cron", {}, True, "root"),
    ("cronie", ["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"], "cron", {}, True, "root"),
    ("systemd-cron", ["-i", "-B8BITMIME", "root"], "cron", {}, False, "root"),
    ("atd", ["-i", "root"], "at", {}, False, "root"),
    ("php-mail", ["-t", "-i"], "php", TO_ROOT, True, "root"),
    ("php-mail-f", ["-t", "-i", "-fweb@example.com"], "php", TO_ROOT, True, "web@example.com"),
    ("phpmailer-sender", ["-t", "-i", "-oi", "-falice@example.com", "-t"], "phpmailer", TO_ROOT, True,
     "alice@example.com"),
    ("phpmailer", ["-oi", "-t"], "phpmailer", TO_ROOT, True, "root"),
    ("bsd-mailx", ["-i", "-t"], "mailx", MAILX_LOCAL, False, "root"),
    ("bsd-mailx-r", ["-i", "-t", "-f", "alice@example.com"], "mailx", MAILX_LOCAL, False, "alice@example.com"),
    ("bsd-mailx-metoo", ["-i", "-m", "-t"], "mailx", MAILX_LOCAL, False, "root"),
    ("s-nail", ["-i", "-f", "alice@example.com", "--", "root"], "mailx", MAILX_LOCAL, False, "alice@example.com"),
    ("mailutils", ["-oi", "-f", "alice@example.com", "root"], "mailx", MAILX_LOCAL, False, "alice@example.com"),
    ("mutt", ["-oem", "-oi", "-B8BITMIME", "-f", "alice@example.com", "-N", "success,failure", "-R", "hdrs",
              "--", "root"], "mailx", MAILX_LOCAL, False, "alice@example.com"),
    ("git-send-email", ["-f", "alice@example.com", "-i", "root"], "phpmailer", TO_ROOT, False,
     "alice@example.com"),
    ("logwatch-mdadm-sudo", ["-t"], "at", {}, True, "root"),
    ("unattended-upgrades", ["-oi", "-t"], "cron", {}, False, "root"),
]


@pytest.mark.parametrize("name,argv,stdin,replace,popen,sender", CALLERS, ids=[c[0] for c in CALLERS])
def test_caller_delivers_locally(sm_root, name, argv, stdin, replace, popen, sender):
    data = stdin_of(stdin, **replace)
    # debian-cron: the "" makes the two blanks of cron's "%s -FCronDaemon -i -B8BITMIME -oem  %s"
    submit(sm_root, argv, data, shell=popen, argv0="sendmail" if name == "atd" else None)
    if "-odi" in argv:  # delivered before sendmail exited
        assert len(read_mbox(sm_root.mailbox("root"))) == 1
    [msg] = deliver(sm_root, "root", 1)
    check_message(msg, data, sender)
    if stdin == "mailx":
        # Cc: carol@example.net and Bcc: dave@example.net are remote: with -t they stay
        # queued for the SMTP agent (and the Bcc: line went nowhere).
        # mutt's -N success,failure: the delivery to root sends a success DSN to the sender.
        want = ["carol@example.net", "dave@example.net"] if "-t" in argv else []
        if "-N" in argv and "success" in argv[argv.index("-N") + 1]:
            want.append(sender)
        queued = re.findall(r"^\t+ ?(\S+)$", sm_root.mailq(), re.M)
        assert sorted(queued) == sorted(want), queued


def test_cron_message_exact(sm_root):
    """The whole delivered cron message, line by line, besides the variable added values."""
    data = stdin_of("cron")
    submit(sm_root, ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], data, shell=True)
    [msg] = deliver(sm_root, "root", 1)
    assert msg.one("from") == "root (Cron Daemon)"
    assert msg.one("subject") == "Cron <root@mail> /usr/local/bin/job"
    assert msg.one("x-cron-env") == "<SHELL=/bin/sh>"
    assert msg.body == b"job output\n"


def test_at_message_gets_from_and_keeps_subject_spacing(sm_root):
    data = stdin_of("at")
    submit(sm_root, ["-i", "root"], data, argv0="sendmail")
    [msg] = deliver(sm_root, "root", 1)
    assert b"Subject: Output from your job        7" in msg.raw
    assert re.search(r"\broot\b", msg.one("from")), msg.one("from")
    assert msg.body == b"at output\n"


def test_phpmailer_date_and_message_id_kept(sm_root):
    data = stdin_of("phpmailer", **TO_ROOT)
    submit(sm_root, ["-t", "-i", "-oi", "-falice@example.com", "-t"], data, shell=True)
    [msg] = deliver(sm_root, "root", 1)
    assert msg.one("date") == "Thu, 26 Nov 2026 12:00:00 +0000"
    assert msg.one("message-id") == "<x@example.com>"
    assert msg.one("from") == "Alice <alice@example.com>"


def test_php_crlf_normalized(sm_root):
    data = stdin_of("php", **TO_ROOT)
    assert data.count(b"\r\n") == 5
    submit(sm_root, ["-t", "-i"], data, shell=True)
    [msg] = deliver(sm_root, "root", 1)
    assert msg.body == b"body from php\n"
    with open(sm_root.mailbox("root"), "rb") as f:
        assert b"\r" not in f.read()


def test_dot_line_without_i_ends_the_message(sm_root):
    """`sendmail -t < mailx.txt`: a lone "." ends the input (5-byte body), with -i it is data."""
    data = stdin_of("mailx", **MAILX_LOCAL)
    submit(sm_root, ["-t"], data)
    [msg] = deliver(sm_root, "root", 1)
    assert msg.body == b"body\n"
    submit(sm_root, ["-i", "-t"], data)
    msgs = deliver(sm_root, "root", 2)
    assert msgs[1].body == b"body\n.\nmore\n"


def test_dot_line_with_oi_is_data(sm_root):
    data = b"Subject: dots\n\n.\n..\n. \nend\n"
    submit(sm_root, ["-oi", "root"], data)
    [msg] = deliver(sm_root, "root", 1)
    assert msg.body == b".\n..\n. \nend\n"


def test_t_adds_argument_recipients_once(sm_root):
    """Sendmail 8.17 adds argv recipients to the header ones; one also in To: gets one copy."""
    data = stdin_of("mailx", **MAILX_LOCAL)
    submit(sm_root, ["-i", "-t", "extra@example.net", "root"], data)
    [msg] = deliver(sm_root, "root", 1)
    check_message(msg, data, "root")
    queued = re.findall(r"^\t+ ?(\S+)$", sm_root.mailq(), re.M)
    assert sorted(queued) == ["carol@example.net", "dave@example.net", "extra@example.net"], queued


@pytest.mark.parametrize("null", ["<>", ""])
def test_null_sender(sm_root, null):
    data = stdin_of("msg1")
    submit(sm_root, ["-i", "-f", null, "root"], data)
    [msg] = deliver(sm_root, "root", 1)
    check_sender(msg, "")
    assert msg.body == b"hello\n"


def test_minimal_message_gets_date_message_id_from(sm_root):
    data = stdin_of("msg1")
    submit(sm_root, ["-i", "root"], data)
    [msg] = deliver(sm_root, "root", 1)
    check_message(msg, data, "root")
    assert msg.one("subject") == "test one"


def test_full_name_with_f(sm_root):
    """s-nail's `-f from -F name`: with no From: header, From: is built from both."""
    data = stdin_of("msg1")
    submit(sm_root, ["-i", "-f", "alice@example.com", "-F", "Alice Example", "--", "root"], data)
    [msg] = deliver(sm_root, "root", 1)
    name, addr = email.utils.parseaddr(msg.one("from"))
    assert (name, addr) == ("Alice Example", "alice@example.com"), msg.one("from")
    check_sender(msg, "alice@example.com")


# ---- as captured: remote recipients stay queued ---------------------------------------------

# (argv, stdin, envelope sender shown by mailq, recipients shown by mailq); from 11_callers.txt
AS_CAPTURED = [
    (["-t", "-i"], "php", "root", ["bob@example.org"]),
    (["-t", "-i", "-fweb@example.com"], "php", "web@example.com", ["bob@example.org"]),
    (["-t", "-i", "-oi", "-falice@example.com", "-t"], "phpmailer", "alice@example.com", ["bob@example.org"]),
    (["-i", "-t"], "mailx", "root", ["bob@example.org", "carol@example.net", "dave@example.net"]),
    (["-i", "-t", "-f", "alice@example.com"], "mailx", "alice@example.com",
     ["bob@example.org", "carol@example.net", "dave@example.net"]),
    (["-i", "--", "bob@example.org", "carol@example.net", "dave@example.net"], "mailx", "root",
     ["bob@example.org", "carol@example.net", "dave@example.net"]),
    (["-oem", "-oi", "-B8BITMIME", "-f", "alice@example.com", "-N", "success,failure", "-R", "hdrs", "--",
      "bob@example.org", "carol@example.net"], "mailx", "alice@example.com",
     ["bob@example.org", "carol@example.net"]),
    (["-i", "-t", "extra@example.net"], "mailx", "root",
     ["extra@example.net", "bob@example.org", "carol@example.net", "dave@example.net"]),
]


@pytest.mark.parametrize("argv,stdin,sender,rcpts", AS_CAPTURED,
                         ids=["%s:%s" % (c[1], " ".join(c[0])) for c in AS_CAPTURED])
def test_remote_recipients_stay_queued(sm_root, argv, stdin, sender, rcpts):
    submit(sm_root, argv, stdin_of(stdin), shell=stdin in ("php", "phpmailer"))
    sm_root.run(["-q"], check=True)
    out = sm_root.mailq()
    assert "Total requests: 1" in out, out
    lines = out.splitlines()
    # The queue line holds the sender; the recipients follow, one per line, once each.
    first = [line for line in lines if re.match(r"^[0-9A-Za-z]{8,}[ *!X]?\s+\d+\s", line)]
    assert len(first) == 1, out
    shown = first[0].split()[-1]
    assert shown == sender or ("@" not in sender and shown.startswith(sender + "@")), out
    listed = [line.strip() for line in lines if line.startswith("\t")]
    listed = [entry for entry in listed if "@" in entry]
    assert sorted(listed) == sorted(rcpts), out
    assert not os.path.exists(sm_root.mailbox("root"))


# ---- PHP's own mail() ------------------------------------------------------------------------

PHP_SCRIPT = r'''
$ok = mail("root", "PHP subject", "Line one\nLine two\n.\nlast", "From: php@example.test\r\nX-Extra: 1"%s);
echo $ok ? "sent" : "failed";
'''


@pytest.mark.parametrize("extra,sender", [("", "root"), (', "-fbounce@example.test"', "bounce@example.test")],
                         ids=["default", "5th-parameter"])
def test_php_mail_function(sm_root, require_program, extra, sender):
    php = require_program("php")
    sendmail_path = "%s -t -i" % sm_root.command("sendmail")
    proc = subprocess.run([php, "-n", "-d", "sendmail_path=" + sendmail_path, "-r", PHP_SCRIPT % extra],
                          capture_output=True, env=sm_root.env, timeout=60)
    assert proc.stdout == b"sent", proc
    [msg] = deliver(sm_root, "root", 1)
    assert msg.one("subject") == "PHP subject"
    assert msg.one("x-extra") == "1"
    assert msg.one("from") == "php@example.test"
    assert msg.one("to") == "root"
    # PHP 8 separates the headers with CRLF and leaves the body's bare LFs as written; with
    # -i the lone "." line is data.
    assert msg.body == b"Line one\nLine two\n.\nlast\n"
    assert b"\r" not in msg.raw
    check_sender(msg, sender)


def test_cron_mailto_list_is_split_on_commas(sm_root):
    """MAILTO=root,extra@example.net reaches sendmail as ONE argument (Debian cron)."""
    data = stdin_of("cron")
    submit(sm_root, ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "", "root,extra@example.net"], data,
           shell=True)
    [msg] = deliver(sm_root, "root", 1)
    check_message(msg, data, "root")
    queued = re.findall(r"^\t+ ?(\S+)$", sm_root.mailq(), re.M)
    assert queued == ["extra@example.net"], queued


def test_php_raw_utf8_header_and_mixed_line_ends(sm_root):
    """As observed from PHP 8.2 mail(): CRLF headers, a raw UTF-8 Subject, bare LFs in the
    body and a final CRLF. The 8-bit header bytes arrive unchanged."""
    data = (b"To: root\r\nSubject: \xc3\x9cn\xc3\xafcode subj\r\nFrom: php@example.test\r\n"
            b"Reply-To: r@example.test\r\n\r\nLine one\nLine two\n.\nlast\r\n")
    submit(sm_root, ["-t", "-i", "-fbounce@example.test"], data, shell=True)
    [msg] = deliver(sm_root, "root", 1)
    check_message(msg, data, "bounce@example.test")
    assert b"\nSubject: \xc3\x9cn\xc3\xafcode subj\n" in msg.raw
    assert msg.body == b"Line one\nLine two\n.\nlast\n"

"""Sendmail-format logging: syslog datagrams, or a log file when there is no syslog.

Every line looks like Sendmail's, so log readers written for Sendmail (logwatch,
pflogsumm-style scripts, fail2ban's sendmail-auth / sendmail-reject filters)
read ours unchanged:

    <22>Nov 26 14:45:26 sendmail[19689]: 6AQEjQR0019689: from=alice@example.com, size=25, ...

* ident "sendmail" (option `-L tag` changes it), the pid of the writing process,
  facility LOG_MAIL; the text is "QID: text", "NOQUEUE: text" when the message has
  no queue id yet (qid None), or plain text for qid "" (Sendmail's NOQID).
* When the syslog socket (/dev/log) exists, each line is one datagram
  "<PRI>Mmm dd hh:mm:ss tag[pid]: text" sent on an AF_UNIX socket made with the
  `_socket` C module (what glibc's syslog(3) sends; a stream socket gets the same
  bytes ended by NUL). We do not use the `syslog` module: it cannot be pointed at
  another socket (tests bind their own) and its openlog() state is process-wide.
  Import costs measured on this host (python3.11 -X importtime): `_socket` 1.5 ms,
  `socket` 11.5 ms, `syslog` 1.0 ms; `_socket` is imported lazily, on the first
  line sent, so merely importing this module costs nothing but os and time.
* Otherwise (no socket, or the receiver refuses) the line is appended to the log
  file as "Mmm dd hh:mm:ss host tag[pid]: text\\n", the format rsyslog writes:
  directory created 0750, file opened O_APPEND|O_NOFOLLOW (mode 0640) and written
  with a single write() per line, so concurrent processes never interleave.
  The file is opened per line, so log rotation needs no signal.

Security: text comes from the network (addresses, HELO names, replies). Control
characters are escaped the way rsyslog does ("#012" for LF), so nobody can forge
a second log line (and with it a fail2ban match against someone else's address).
Logging never raises: a line that cannot be written anywhere is counted in
`Logger.lost` and dropped. Imports only os and time (it is on the submission path).
"""
import os
import time

# syslog(3) severities and the mail facility.
LOG_CRIT = 2
LOG_ERR = 3
LOG_WARNING = 4
LOG_NOTICE = 5
LOG_INFO = 6
LOG_DEBUG = 7
LOG_MAIL = 2 << 3

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_S_IFMT = 0o170000
_S_IFSOCK = 0o140000

# Longest text in one datagram; Sendmail itself splits at about 1000 bytes, and
# syslog receivers commonly cut at 1024 (RFC 3164) to 8192. Longer text is cut.
MAX_TEXT = 8000

# Escape every control character except TAB (rsyslog's "#ooo" convention).
_ESCAPES = {c: "#%03o" % c for c in list(range(0, 9)) + list(range(10, 32)) + [127]}


def clean(text):
    """`text` with control characters escaped (LF -> "#012"), so it stays one line."""
    if text.isprintable():
        return text
    return text.translate(_ESCAPES)


def syslog_time(now):
    """Local time as syslog writes it: "Nov 26 14:45:26", "Nov  6 04:05:06"."""
    t = time.localtime(now)
    return "%s %2d %02d:%02d:%02d" % (_MONTHS[t.tm_mon - 1], t.tm_mday,
                                      t.tm_hour, t.tm_min, t.tm_sec)


def format_delay(seconds):
    """Sendmail's pintvl() for delay=/xdelay=: "00:00:05", "1+02:03:04"."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    text = "%02d:%02d:%02d" % (rest // 3600, rest % 3600 // 60, rest % 60)
    return "%d+%s" % (days, text) if days else text


def _precedence_class(env):
    """The class= field: the Precedence header's value in Sendmail's default cf."""
    value = env.header("Precedence")
    if not value:
        return 0
    return {b"special-delivery": 100, b"first-class": 0, b"list": -30,
            b"bulk": -60, b"junk": -100}.get(value.strip().lower(), 0)


_SMTP_PROTOS = ("SMTP", "ESMTP", "ESMTPA", "ESMTPS", "ESMTPSA", "LMTP")


def from_line(env, nrcpts, msgid, relay, proto=None, bodytype=None, daemon=None,
              sender=None, size=None):
    """The text of Sendmail's sender line for `env` (without "QID: "), e.g.
    "from=root, size=25, class=0, nrcpts=1, msgid=<x@y>, relay=root@localhost".

    `sender` overrides the from= value (the address as the client gave it); by
    default it is env.sender, "<>" for the null sender, and in angle brackets
    when the message came by SMTP (as Sendmail logs what the client typed).
    `msgid` is the Message-Id header value (omitted when empty).
    """
    if sender is None:
        sender = env.sender
        if not sender:
            sender = "<>"
        elif proto and proto.upper() in _SMTP_PROTOS and not sender.startswith("<"):
            sender = "<%s>" % sender
    parts = ["from=%s" % sender,
             "size=%d" % (env.size if size is None else size),
             "class=%d" % _precedence_class(env),
             "nrcpts=%d" % nrcpts]
    if msgid:
        parts.append("msgid=%s" % msgid)
    if bodytype:
        parts.append("bodytype=%s" % bodytype)
    if proto:
        parts.append("proto=%s" % proto)
    if daemon:
        parts.append("daemon=%s" % daemon)
    if relay:
        parts.append("relay=%s" % relay)
    return ", ".join(parts)


def to_line(rcpt_addrs, delay_seconds, mailer, pri, stat, dsn=None, reply=None,
            xdelay=None, relay=None, ctladdr=None):
    """The text of Sendmail's delivery line (without "QID: "), e.g.
    "to=root, ctladdr=root (0/0), delay=00:00:00, xdelay=00:00:00, mailer=local,
    pri=30209, dsn=2.0.0, stat=Sent".

    `rcpt_addrs` is one address or a list (joined with ","); `delay_seconds` the
    time since the message was queued, `xdelay` (seconds) the time this attempt
    took; `relay` "host [ip]" of the next hop; `reply` the SMTP reply.
    """
    if not isinstance(rcpt_addrs, str):
        rcpt_addrs = ",".join(rcpt_addrs)
    parts = ["to=%s" % rcpt_addrs]
    if ctladdr:
        parts.append("ctladdr=%s" % ctladdr)
    parts.append("delay=%s" % format_delay(delay_seconds))
    if xdelay is not None:
        parts.append("xdelay=%s" % format_delay(xdelay))
    parts.append("mailer=%s" % mailer)
    parts.append("pri=%d" % pri)
    if relay:
        parts.append("relay=%s" % relay)
    if dsn:
        parts.append("dsn=%s" % dsn)
    if reply:
        parts.append("reply=%s" % reply)
    parts.append("stat=%s" % stat)
    return ", ".join(parts)


def dsn_line(dsn_qid, what, reason):
    """The text Sendmail logs when it queues a DSN, after the original's "QID: ":
    "6AQFjQS0019700: DSN: User unknown". `what` is "DSN" (a bounce), "sender
    notify" (a delay warning), "return to sender" or "postmaster notify"."""
    return "%s: %s: %s" % (dsn_qid, what, reason)


class Logger:
    """Writes Sendmail-format log lines to syslog or, failing that, to `log_file`.

    `tag` is the syslog ident (-L); `syslog_socket` the datagram socket to use
    (None: never syslog); `hostname` the name written in file lines (default the
    short node name); `pid` a fixed pid (default: the writing process's, looked
    up per line so children that fork log their own pid, as Sendmail's do).
    """

    def __init__(self, tag="sendmail", log_file=None, syslog_socket="/dev/log",
                 hostname=None, pid=None):
        self.tag = tag
        self.log_file = log_file
        self.syslog_socket = syslog_socket
        self.hostname = hostname or os.uname().nodename.split(".")[0] or "localhost"
        self.pid = pid
        self.lost = 0          # lines that could be written nowhere
        self._sock = None
        self._sock_pid = None
        self._stream = False
        self._held_fd = None   # keep_open(): the log file opened once, before a privilege drop
        self._no_syslog_until = 0.0

    # -- the level methods ------------------------------------------------

    def log(self, severity, qid, text, now=None):
        """Log `text` for message `qid` (None: "NOQUEUE", "": no id) at `severity`."""
        if qid is None:
            text = "NOQUEUE: " + text
        elif qid:
            text = "%s: %s" % (qid, text)
        text = clean(text)
        if len(text) > MAX_TEXT:
            text = text[:MAX_TEXT]
        if now is None:
            now = time.time()
        pid = self.pid if self.pid is not None else os.getpid()
        stamp = syslog_time(now)
        if self.syslog_socket and self._send(severity, stamp, pid, text):
            return
        self._append("%s %s %s[%d]: %s\n" % (stamp, self.hostname, self.tag, pid, text))

    def info(self, qid, text, now=None):
        self.log(LOG_INFO, qid, text, now)

    def notice(self, qid, text, now=None):
        self.log(LOG_NOTICE, qid, text, now)

    def warning(self, qid, text, now=None):
        self.log(LOG_WARNING, qid, text, now)

    def err(self, qid, text, now=None):
        self.log(LOG_ERR, qid, text, now)

    def crit(self, qid, text, now=None):
        self.log(LOG_CRIT, qid, text, now)

    def debug(self, qid, text, now=None):
        self.log(LOG_DEBUG, qid, text, now)

    def syserr(self, qid, user, text, now=None):
        """Sendmail's syserr(): "QID: SYSERR(user): text" at LOG_CRIT."""
        self.log(LOG_CRIT, qid, "SYSERR(%s): %s" % (user, text), now)

    # -- the two sinks ----------------------------------------------------

    def datagram(self, severity, stamp, pid, text):
        """The bytes of one syslog datagram, as glibc's syslog(3) makes them."""
        line = "<%d>%s %s[%d]: %s" % (LOG_MAIL | severity, stamp, self.tag, pid, text)
        return line.encode("utf-8", "surrogateescape")

    def _syslog_available(self):
        """Is there a syslog socket? A "no" is trusted for a second (a process with no
        syslog, as a private instance's, would otherwise look for it at every line)."""
        now = time.monotonic()
        if now < self._no_syslog_until:
            return False
        try:
            mode = os.stat(self.syslog_socket).st_mode
        except OSError:
            mode = 0
        if mode & _S_IFMT == _S_IFSOCK:
            return True
        self._no_syslog_until = now + 1.0
        return False

    def _connect(self):
        import _socket
        for kind in (_socket.SOCK_DGRAM, _socket.SOCK_STREAM):
            sock = _socket.socket(_socket.AF_UNIX, kind | _socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(2.0)
                sock.connect(self.syslog_socket)
            except OSError:
                sock.close()
                continue
            self._sock, self._sock_pid = sock, os.getpid()
            self._stream = kind == _socket.SOCK_STREAM
            return True
        return False

    def _send(self, severity, stamp, pid, text):
        if self._sock is not None and self._sock_pid != os.getpid():
            # A child after fork may keep using a datagram socket, but a stream
            # connection must not be shared: reconnect in each process (closing
            # the child's copy of the fd leaves the parent's connection alone).
            if self._stream:
                self.close()
            else:
                self._sock_pid = os.getpid()
        if self._sock is None:
            if not self._syslog_available() or not self._connect():
                return False
        data = self.datagram(severity, stamp, pid, text)
        for attempt in (1, 2):
            try:
                if self._stream:
                    self._sock.sendall(data + b"\0")
                else:
                    self._sock.send(data)
                return True
            except OSError:
                self.close()
                if attempt == 2 or not self._syslog_available() or not self._connect():
                    return False
        return False

    def keep_open(self):
        """Open the log file now and write every later file line through that descriptor:
        for a process about to give up the privilege of opening it (the SMTP workers).
        The syslog socket, when there is one, is connected now for the same reason."""
        if self.syslog_socket and self._syslog_available():
            self._connect()
        if not self.log_file or self._held_fd is not None:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            os.makedirs(os.path.dirname(self.log_file), mode=0o750, exist_ok=True)
            self._held_fd = os.open(self.log_file, flags, 0o640)
        except OSError:
            self._held_fd = None

    def _append(self, line):
        if not self.log_file:
            self.lost += 1
            return
        data = line.encode("utf-8", "surrogateescape")
        if self._held_fd is not None:
            try:
                os.write(self._held_fd, data)
                return
            except OSError:
                self.lost += 1
                return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self.log_file, flags, 0o640)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(self.log_file), mode=0o750, exist_ok=True)
                fd = os.open(self.log_file, flags, 0o640)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError:
            self.lost += 1

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def __del__(self):
        # A long-lived Logger is normally collected at exit; close quietly then
        # (an unclosed socket would otherwise raise a ResourceWarning).
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "Logger(tag=%r, log_file=%r, syslog_socket=%r)" % (
            self.tag, self.log_file, self.syslog_socket)


_default = None


def set_default(logger):
    """Make `logger` the one that module-level Channels write to (the queue run sets it)."""
    global _default
    _default = logger


class Channel:
    """A stand-in for a stdlib logger in modules that have no Logger object in hand
    (the delivery agents): `log.warning("%s: ...", path)` goes to the Logger set by
    set_default, in Sendmail's format, or nowhere. It avoids importing `logging`
    (11 ms, pulling in re and traceback) on the delivery path."""

    __slots__ = ("qid",)

    def __init__(self, qid=None):
        self.qid = qid

    def _emit(self, method, fmt, args):
        logger = _default
        if logger is not None:
            getattr(logger, method)(self.qid, fmt % args if args else fmt)

    def debug(self, fmt, *args):
        pass

    def info(self, fmt, *args):
        self._emit("info", fmt, args)

    def warning(self, fmt, *args):
        self._emit("warning", fmt, args)

    def error(self, fmt, *args):
        self._emit("err", fmt, args)

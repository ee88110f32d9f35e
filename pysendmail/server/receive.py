"""The cleanup step of the SMTP daemon: one accepted transaction becomes a queue entry.

`Incoming` is opened at DATA/BDAT with a fresh queue id (its df file created and
locked), fed the message octets as the protocol core hands them over (dot-unstuffed,
CRLF line ends: the core has already refused bare CR and bare LF), and finished at
the end of data. The header block is kept in memory (bounded by MaxHeadersLength;
what does not fit goes to the body, as in Sendmail), the body is written straight to
the df file with LF line ends, so a large message goes through in bounded memory.

`finish()` builds the control file's Envelope: Sendmail's Received field on top
(`from HELO (NAME [ADDR]) by $j (pysendmail V) with PROTO id QID (TLS) for <rcpt>;
DATE`), Date and Message-Id added when missing (Sendmail's H?D? and H?M? lines),
the ESMTP parameters of MAIL (BODY, RET, ENVID, SMTPUTF8) and of each RCPT (NOTIFY,
ORCPT). Recipients are queued unrouted (`mailer` empty): the queue manager, which
runs as root, expands aliases and .forward files; the daemon has only checked that
each recipient is acceptable. Nothing here syncs: the group committer does that.
"""
import os
import time

from .. import __version__, dates
from ..cleanup import headers as hdr
from ..cleanup.collect import is_field_name
from ..model import Envelope, Recipient
from ..queue import qfile
from ..queue.pool import cut_to
from .access import relay_field


class Incoming:
    """One message being received: its queue id, df descriptor and header block."""

    def __init__(self, spool, max_headers=32768):
        self.spool = spool
        self.qid, self.fd = spool.allocate()
        self.max_headers = max_headers
        self.head = bytearray()        # the header block until its end is seen
        self.in_body = False
        self.held_cr = False           # a chunk ended in CR: its LF may start the next
        self.headers = []
        self.header_overflow = False
        self.body_size = 0
        self.eight_bit = False
        self.size = 0                  # octets as received (CRLF counted as 2)
        self._tail = b"\n"

    # -- feeding -------------------------------------------------------------------------
    def feed(self, chunk):
        self.size += len(chunk)
        if self.held_cr:
            chunk = b"\r" + chunk
            self.held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self.held_cr = True
        data = chunk.replace(b"\r\n", b"\n")
        if self.in_body:
            self._body(data)
            return
        self.head += data
        if self.head.startswith(b"\n"):          # no header block at all
            self._split(0, 1)
            return
        end = self.head.find(b"\n\n")
        if end >= 0:
            self._split(end + 1, end + 2)
        elif len(self.head) > self.max_headers:
            cut = self.head.rfind(b"\n", 0, self.max_headers)
            self.header_overflow = True
            self._split(cut + 1 if cut >= 0 else 0, cut + 1 if cut >= 0 else 0)

    def _split(self, head_end, body_start):
        """The header block ends at head_end; the body starts at body_start."""
        block = bytes(self.head[:head_end])
        rest = bytes(self.head[body_start:])
        self.head = bytearray()
        self.in_body = True
        extra = self._parse_headers(block)
        if extra:
            rest = extra + (b"\n" + rest if body_start > head_end else rest)
        if rest:
            self._body(rest)

    def _parse_headers(self, block):
        """Fields into self.headers; returns the text from the first line that is not a
        header (it and what follows belong to the body)."""
        lines = block.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        headers = self.headers
        for i, line in enumerate(lines):
            if line[:1] in (b" ", b"\t") and headers:
                headers[-1] += b"\n" + line
                continue
            name, colon, _ = line.partition(b":")
            if colon and is_field_name(name.rstrip(b" \t")):
                headers.append(line)
                continue
            return b"\n".join(lines[i:]) + b"\n"
        return b""

    def _body(self, data):
        if not data:
            return
        if not self.eight_bit and not data.isascii():
            self.eight_bit = True
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.body_size += len(data)
        self._tail = data[-1:]

    def abandon(self):
        if self.fd is not None:
            self.spool.discard(self.qid, self.fd)
            self.fd = None

    # -- the end of data ---------------------------------------------------------------------
    def finish(self, sender, recipients, mail_params, session, now=None):
        """Complete the body and build the Envelope. `recipients` is a list of
        (address, params); `session` a SessionFacts. Returns the Envelope."""
        if self.held_cr:
            self.held_cr = False
            self.feed(b"")
            self._body(b"\r")
        if not self.in_body:
            self._split(len(self.head), len(self.head))
        if self.body_size and self._tail != b"\n":
            self._body(b"\n")
        cut_to(self.fd, self.body_size)     # a recycled df may be longer
        now = int(now if now is not None else time.time())
        qid = self.qid
        single = recipients[0][0] if len(recipients) == 1 else None
        added = [received(session, qid, now, single)]
        headers = self.headers
        if not hdr.has(headers, "date"):
            added.append(("Date: %s" % dates.rfc5322(now)).encode())
        if not hdr.has(headers, "message-id"):
            added.append(("Message-Id: %s" % hdr.message_id(qid, session.hostname, now)).encode())
        body_type = (mail_params.get("BODY") or "").upper()
        if body_type == "8BITMIME" and not self.eight_bit:
            body_type = "7BIT"
        env = Envelope(
            qid=qid, created=now, sender=sender, headers=added + headers,
            user=session.daemon_user, body_type=body_type,
            envid=mail_params.get("ENVID") or "", ret=(mail_params.get("RET") or "").upper(),
            protocol=session.protocol, relay=session.relay, error_mode="m")
        if mail_params.get("SMTPUTF8"):
            env.macros["{smtputf8}"] = "1"
        if session.auth_authen:
            env.macros["{auth_authen}"] = session.auth_authen
            env.macros["{auth_type}"] = session.auth_type or ""
        env.recipients = [Recipient(addr, addr, notify=(p.get("NOTIFY") or "").upper(),
                                    orcpt=p.get("ORCPT") or "") for addr, p in recipients]
        env.size = self.body_size
        env.priority = self.size + 30000 * len(env.recipients)
        return env

    def write_control(self, env):
        """Write the tf file (not synced); the committer renames it to qf."""
        tf = os.path.join(self.spool.path, "tf" + self.qid)
        fd = self.spool.files.take(tf, check=False, keep=True)   # tfQID: ours, as dfQID
        if fd is None:
            fd = os.open(tf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            data = qfile.dumps(env)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            cut_to(fd, len(data))    # a recycled file may be longer
        finally:
            os.close(fd)
        return tf


class SessionFacts:
    """What the Received field and the envelope need to know about the session."""

    __slots__ = ("hostname", "helo", "client_name", "client_addr", "protocol", "tls",
                 "auth_type", "auth_authen", "daemon_user", "forged")

    def __init__(self, hostname, helo, client_name, client_addr, protocol, tls=None,
                 auth_type=None, auth_authen=None, daemon_user="", forged=False):
        self.hostname = hostname
        self.helo = helo
        self.client_name = client_name
        self.client_addr = client_addr
        self.protocol = protocol
        self.tls = tls or {}
        self.auth_type = auth_type
        self.auth_authen = auth_authen
        self.daemon_user = daemon_user
        self.forged = forged

    @property
    def relay(self):
        """Sendmail's $_ / relay= value: "name [addr]" or "[addr]"."""
        return relay_field(self.client_name, self.client_addr, self.forged)


def _clean(text):
    text = str(text)
    if text.isprintable() and "(" not in text and ")" not in text and "\\" not in text:
        return text
    return "".join(c for c in text if c.isprintable() and c not in "()\\")


def received(session, qid, now, rcpt=None):
    """Sendmail's Received field for a message received by SMTP."""
    helo = _clean(session.helo or session.client_name or "[%s]" % session.client_addr)
    lines = ["Received: from %s (%s)" % (helo, _clean(session.relay)),
             "\tby %s (pysendmail %s) with %s id %s" % (
                 session.hostname, __version__, session.protocol, qid)]
    t = session.tls
    if t.get("tls_version"):
        lines.append("\t(version=%s cipher=%s bits=%s verify=%s)" % (
            _clean(t.get("tls_version", "")), _clean(t.get("cipher", "")),
            _clean(t.get("cipher_bits", "")), _clean(t.get("verify", "NO"))))
    date = dates.rfc5322(now)
    if rcpt:
        lines.append("\tfor <%s>; %s" % (_clean(rcpt).replace("<", "").replace(">", ""), date))
    else:
        lines[-1] += ";"
        lines.append("\t%s" % date)
    return "\n".join(lines).encode("utf-8", "surrogateescape")

"""Delivery status notifications (RFC 3464): bounces, delay warnings, return receipts.

    write_dsn(out, env, recipients, kind, body_path, hostname, now, ...) -> to | None
    make_dsn(env, recipients, kind, body_path, hostname, now, ...) -> (to, bytes) | None

`kind` is "failure", "delay" or "success". The message is shaped like Sendmail's
(savemail.c's returntosender/errbody): From "Mail Delivery Subsystem
<MAILER-DAEMON@host>", Subject "Returned mail: see transcript for details" /
"Warning: could not send message for past 4 hours" / "Return receipt" /
"Postmaster notify: see transcript for details", Auto-Submitted "auto-generated
(failure)" (Sendmail's value, RFC 3834 style), a multipart/report with three
parts: the human text with Sendmail's "----- The following addresses had
permanent fatal errors -----" sections and transcript, the message/delivery-status
fields, and the returned message (message/rfc822) or only its header
(text/rfc822-headers).

Who gets one (RFC 3461 and Sendmail's rules):
* only recipients whose NOTIFY asks for this kind are reported (NOTIFY=NEVER: none);
  with nobody left there is no DSN (None);
* never a DSN to the null sender: a failed bounce (a "double bounce") goes to the
  postmaster instead, and a failed postmaster notice is dropped (None) so two
  MTAs can never ping-pong; delays and receipts for <> are dropped;
* the body is returned on failure unless RET=HDRS; for delay warnings and return
  receipts only the header is returned unless RET=FULL (as Sendmail does).

The original is streamed from the body file in 64 KB chunks, so a 20 MB message
costs no more memory than a small one when written with write_dsn() to a file.
Lines end in LF, like every message in our queue; the SMTP client adds the CRs.
The boundary is Sendmail's "QID.TIME/host", checked against the returned message
(made unique if the message happens to contain it). Text from the network
(replies, addresses) is kept to one line per field, so no reply can forge a
delivery-status field or a header.
"""
import os
import time

from .. import dates

KINDS = ("failure", "delay", "success")
CHUNK = 65536

# Mailers whose DSN types (Sendmail's T= mtatype/addrtype/diagtype) are Unix ones.
DEFAULT_MAILER_TYPES = {
    "local": ("DNS", "RFC822", "X-Unix"),
    "prog": ("X-Unix", "X-Unix", "X-Unix"),
    "*file*": ("X-Unix", "X-Unix", "X-Unix"),
    "*include*": ("X-Unix", "X-Unix", "X-Unix"),
}
SMTP_TYPES = ("DNS", "RFC822", "SMTP")
LOCAL_MAILERS = ("local", "prog", "*file*", "*include*", "file")

arpadate = dates.rfc5322



def interval(seconds):
    """Sendmail's pintvl(.., brief): "4 hours", "1 day, 12 hours", "30 minutes"."""
    seconds = int(seconds)
    parts = []
    for size, name in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append("%d %s%s" % (n, name, "" if n == 1 else "s"))
    return ", ".join(parts) or "0 seconds"


def _one_line(text):
    """`text` as one printable ASCII line: CR/LF and controls become spaces,
    other non-ASCII '?' (keeps header and status fields unforgeable)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = []
    for ch in text:
        o = ord(ch)
        if o < 32 or o == 127:
            out.append(" ")
        elif o > 126:
            out.append("?")
        else:
            out.append(ch)
    return "".join(out).strip()


def _unxtext(value):
    """Decode RFC 3461 xtext ("+2B" -> "+") as used in ENVID and ORCPT."""
    if "+" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "+" and _ishex(value[i + 1:i + 3]):
            out.append(chr(int(value[i + 1:i + 3], 16)))
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _ishex(s):
    return len(s) == 2 and all(c in "0123456789abcdefABCDEF" for c in s)


def _wanted(kind):
    return {"failure": "FAILURE", "delay": "DELAY", "success": "SUCCESS"}[kind]


def _types(mailer, mailer_types):
    table = mailer_types if mailer_types is not None else DEFAULT_MAILER_TYPES
    return table.get(mailer, DEFAULT_MAILER_TYPES.get(mailer, SMTP_TYPES))


def _split_reply(diag):
    """"550 5.1.1 User unknown" -> ("550", "5.1.1", "User unknown")."""
    parts = diag.split(" ", 2)
    code = dsn = ""
    if parts and len(parts[0]) == 3 and parts[0].isdigit():
        code = parts.pop(0)
        if parts and parts[0].count(".") == 2 and parts[0].replace(".", "").isdigit():
            dsn = parts.pop(0)
    return code, dsn, " ".join(parts)


def _address(text):
    """An address for a header or an envelope: control characters removed."""
    return "".join(ch for ch in text if ord(ch) >= 32 and ord(ch) != 127).strip()


def _is_postmaster_notice(env):
    subject = env.header("Subject") or b""
    auto = env.header("Auto-Submitted") or b""
    return subject.startswith(b"Postmaster notify") or b"postmaster-notification" in auto


def plan(env, recipients, kind, postmaster="postmaster"):
    """Who gets the DSN and about whom: (to_address, reported_recipients, pm_notify),
    or None when no DSN may be sent."""
    if kind not in KINDS:
        raise ValueError("unknown DSN kind %r" % (kind,))
    want = _wanted(kind)
    reported = [r for r in recipients if r.wants(want)]
    if not reported:
        return None
    if env.sender:
        return _address(env.sender), reported, False
    # Null sender: never a DSN to <>. A failed bounce goes to the postmaster once.
    if kind != "failure" or not postmaster or _is_postmaster_notice(env):
        return None
    return _address(postmaster), reported, True


def _scan(env, body_path, full, boundary):
    """(has 8-bit data, boundary occurs in the returned part), reading the body
    file in chunks so memory stays bounded."""
    head = env.header_block()
    needle = b"--" + boundary.encode()
    has8 = not head.isascii() or env.body_type.upper() in ("8BITMIME", "BINARYMIME")
    found = needle in head
    if full and body_path:
        tail = b""
        with open(body_path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                if not has8 and not chunk.isascii():
                    has8 = True
                if not found and needle in tail + chunk:
                    found = True
                tail = chunk[-len(needle):]
    return has8, found


def _human_part(env, reported, kind, pm_notify, transcript, warn_after, return_after):
    lines = []
    if kind == "delay":
        lines += ["    **********************************************",
                  "    **      THIS IS A WARNING MESSAGE ONLY      **",
                  "    **  YOU DO NOT NEED TO RESEND YOUR MESSAGE  **",
                  "    **********************************************",
                  ""]
    lines.append("The original message was received at %s" % arpadate(env.created))
    lines.append("from %s" % _one_line(env.relay or "localhost"))
    if pm_notify and env.qid:
        lines.append("with id %s" % env.qid)
    lines.append("")
    heading = {
        "failure": "   ----- The following addresses had permanent fatal errors -----",
        "delay": "   ----- The following addresses had transient non-fatal errors -----",
        "success": "   ----- The following addresses had successful delivery notifications -----",
    }[kind]
    lines.append(heading)
    for r in reported:
        address = _one_line(r.address)
        if kind == "success":
            local = r.mailer in LOCAL_MAILERS
            lines.append("%s  (%s)" % (address, "successfully delivered to mailbox"
                                       if local else "relayed to non-DSN-aware mailer"))
        else:
            lines.append(address)
            if kind == "failure" and r.diag:
                lines.append("    (reason: %s)" % _one_line(r.diag))
        if r.parent:
            lines.append("    (expanded from: %s)" % _one_line(r.parent))
    lines.append("")
    if transcript is None:
        transcript = _transcript(reported, kind, warn_after, return_after)
    if transcript:
        lines.append("   ----- Transcript of session follows -----")
        lines += [_one_line(t) for t in transcript]
    else:
        lines.append("   ----- Transcript of session is unavailable -----")
    return lines


def _transcript(reported, kind, warn_after, return_after):
    out = []
    for r in reported:
        address = _one_line(r.address)
        diag = _one_line(r.diag)
        code, dsn, text = _split_reply(diag)
        if kind == "success":
            out.append("%s... Successfully delivered" % address)
        elif kind == "delay":
            out.append("%s... Deferred%s" % (address, ": " + text if text else ""))
        else:
            if r.host and r.mailer not in LOCAL_MAILERS and code:
                out.append("... while talking to %s.:" % _one_line(r.host))
                out.append("<<< %s" % diag)
            if text.startswith(address + "..."):
                text = text[len(address) + 3:].lstrip()
            prefix = " ".join(p for p in (code, dsn) if p)
            out.append("%s%s... %s" % (prefix + " " if prefix else "", address,
                                        text or "Unable to deliver mail"))
    if kind == "delay":
        out.append("Warning: message still undelivered after %s" % interval(warn_after))
        out.append("Will keep trying until message is %s old" % interval(return_after))
    return out


def _status_part(env, reported, kind, hostname, now, return_after, mailer_types):
    lines = []
    if env.envid:
        lines.append("Original-Envelope-Id: %s" % _one_line(_unxtext(env.envid)))
    lines.append("Reporting-MTA: dns; %s" % hostname)
    if env.protocol and env.relay and "SMTP" in env.protocol.upper():
        relay_host = _one_line(env.relay).split(" ")[0]
        if relay_host:
            lines.append("Received-From-MTA: DNS; %s" % relay_host)
    lines.append("Arrival-Date: %s" % arpadate(env.created))
    for r in reported:
        mtatype, addrtype, diagtype = _types(r.mailer, mailer_types)
        lines.append("")
        if r.orcpt:
            lines.append("Original-Recipient: %s" % _one_line(_unxtext(r.orcpt)))
        final = _one_line(r.addr or r.address)
        if final.startswith("<") and final.endswith(">"):
            final = final[1:-1]
        if addrtype.upper() == "RFC822" and "@" not in final:
            final = "%s@%s" % (final, hostname)
        lines.append("Final-Recipient: %s; %s" % (addrtype, final))
        if kind == "failure":
            action, default = "failed", "5.0.0"
        elif kind == "delay":
            action, default = "delayed", "4.0.0"
        else:
            local = r.mailer in LOCAL_MAILERS
            action, default = ("delivered" if local else "relayed"), "2.0.0"
        lines.append("Action: %s" % action)
        status = _one_line(r.status) or default
        lines.append("Status: %s" % status)
        diag = _one_line(r.diag)
        if diag and r.host and r.mailer not in LOCAL_MAILERS and _split_reply(diag)[0]:
            lines.append("Remote-MTA: %s; %s" % (mtatype, _one_line(r.host).rstrip(".")))
        if diag:
            lines.append("Diagnostic-Code: %s; %s" % (diagtype, diag))
        lines.append("Last-Attempt-Date: %s" % arpadate(now))
        if kind == "delay":
            lines.append("Will-Retry-Until: %s" % arpadate(env.created + return_after))
    return lines


def write_dsn(out, env, recipients, kind, body_path, hostname, now,
              postmaster="postmaster", dsn_qid=None, transcript=None,
              warn_after=4 * 3600, return_after=5 * 86400, mailer_types=None):
    """Write the DSN about `recipients` of `env` to the binary file `out`.

    Returns the address it must be sent to (the sender, or `postmaster` for a
    double bounce), or None, having written nothing, when no DSN may be sent.
    `body_path` is the message body file (the df file; the header is
    env.headers); `dsn_qid` the queue id the DSN will get (names its boundary and
    Message-Id; default the original's); `transcript` the lines of the session
    transcript (default: made from each recipient's diag); `warn_after` /
    `return_after` the Timeout.queuewarn / queuereturn seconds; `mailer_types`
    mailer name -> (mtatype, addrtype, diagtype), Sendmail's T= values.
    """
    planned = plan(env, recipients, kind, postmaster)
    if planned is None:
        return None
    to, reported, pm_notify = planned
    ret = (env.ret or "").upper()
    if kind == "failure" or pm_notify:
        full = ret != "HDRS"
    else:
        full = ret == "FULL"
    if body_path is None or not os.path.isfile(body_path):
        full = False            # the body is lost: still tell the sender, with the header
    qid = dsn_qid or env.qid or "NOQUEUE"
    boundary = "%s.%d/%s" % (qid, int(now), hostname)
    has8, clash = _scan(env, body_path, full, boundary)
    while clash:
        boundary = "%s.%d.%s/%s" % (qid, int(now), os.urandom(4).hex(), hostname)
        has8, clash = _scan(env, body_path, full, boundary)

    if pm_notify:
        subject, auto = "Postmaster notify: see transcript for details", "postmaster-notification"
    elif kind == "failure":
        subject, auto = "Returned mail: see transcript for details", "failure"
    elif kind == "delay":
        subject = "Warning: could not send message for past %s" % interval(warn_after)
        auto = "warning-timeout"
    else:
        subject, auto = "Return receipt", "return-receipt"
    lt = time.localtime(now)
    msgid = "<%04d%02d%02d%02d%02d.%s@%s>" % (lt.tm_year, lt.tm_mon, lt.tm_mday,
                                             lt.tm_hour, lt.tm_min, qid, hostname)
    if dsn_qid is None:
        # The original's qid would repeat its Message-Id; make ours unique.
        msgid = msgid.replace("@", ".%s@" % os.urandom(3).hex(), 1)

    head = [
        "Date: %s" % arpadate(now),
        "From: Mail Delivery Subsystem <MAILER-DAEMON@%s>" % hostname,
        "Message-Id: %s" % msgid,
        "To: %s" % to,
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        '\tboundary="%s"' % boundary,
    ]
    if has8:
        head.append("Content-Transfer-Encoding: 8bit")
    head += ["Subject: %s" % subject, "Auto-Submitted: auto-generated (%s)" % auto, ""]
    head.append("This is a MIME-encapsulated message")
    head.append("")
    head.append("--" + boundary)
    head.append("")
    head += _human_part(env, reported, kind, pm_notify, transcript, warn_after,
                        return_after)
    head.append("")
    head.append("--" + boundary)
    head.append("Content-Type: message/delivery-status")
    head.append("")
    head += _status_part(env, reported, kind, hostname, now, return_after, mailer_types)
    head.append("")
    head.append("--" + boundary)
    head.append("Content-Type: %s" % ("message/rfc822" if full else "text/rfc822-headers"))
    if has8:
        head.append("Content-Transfer-Encoding: 8bit")
    head.append("")
    out.write(("\n".join(head) + "\n").encode("utf-8", "surrogateescape"))

    header_block = env.header_block()
    out.write(header_block)
    last = header_block[-1:] or b"\n"
    if full:
        out.write(b"\n")
        last = b"\n"
        with open(body_path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                last = chunk[-1:]
    if last != b"\n":
        out.write(b"\n")
    out.write(("\n--%s--\n" % boundary).encode("ascii"))
    return to


def make_dsn(env, recipients, kind, body_path, hostname, now, postmaster="postmaster",
             **options):
    """write_dsn() into memory, for small messages: (to_address, message_bytes) or None."""
    import io
    buf = io.BytesIO()
    to = write_dsn(buf, env, recipients, kind, body_path, hostname, now,
                   postmaster=postmaster, **options)
    if to is None:
        return None
    return to, buf.getvalue()

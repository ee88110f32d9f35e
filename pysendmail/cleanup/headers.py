"""Header fix-ups of the cleanup role (what Sendmail does to a submitted message).

- `-t`: recipients from To, Cc and Bcc (or the Resent- set when one is present);
  Bcc fields are removed before the message is queued.
- Date, Message-Id and From are added when missing; a Received field is put on top.
- Return-Path is added only at final delivery (by the delivery agent).
Header fields are raw bytes ("Name: value", folded lines joined by LF).
"""
import time

from .. import __version__, dates

rfc5322_date = dates.rfc5322
ctime_date = dates.ctime


def field_name(header):
    return header.split(b":", 1)[0].strip().lower()


def field_value(header):
    """Unfolded value of a raw header field, as str (undecodable bytes kept as escapes)."""
    value = header.split(b":", 1)[1] if b":" in header else b""
    return value.replace(b"\r", b"").replace(b"\n", b"").strip().decode("utf-8", "surrogateescape")


def has(headers, name):
    key = name.lower().encode()
    return any(field_name(h) == key for h in headers)


RECIPIENT_FIELDS = (b"to", b"cc", b"bcc")
RESENT_FIELDS = (b"resent-to", b"resent-cc", b"resent-bcc")


def recipient_texts(headers):
    """The address-list texts that -t reads: Resent-To/Cc/Bcc if any exist, else To/Cc/Bcc."""
    names = {field_name(h) for h in headers}
    fields = RESENT_FIELDS if names & set(RESENT_FIELDS) else RECIPIENT_FIELDS
    return [field_value(h) for h in headers if field_name(h) in fields]


def strip_bcc(headers):
    return [h for h in headers if field_name(h) not in (b"bcc", b"resent-bcc")]


def received(qid, hostname, user, now, rcpt=None, protocol=None):
    """Sendmail's Received field for a local submission."""
    text = "Received: (from %s@localhost)\n\tby %s (pysendmail %s) id %s" % (
        user, hostname, __version__, qid)
    if rcpt:
        text += "\n\tfor %s; %s" % (rcpt, rfc5322_date(now))
    else:
        text += ";\n\t%s" % rfc5322_date(now)
    return text.encode("utf-8", "surrogateescape")


def message_id(qid, hostname, now):
    t = time.gmtime(now)
    return "<%04d%02d%02d%02d%02d.%s@%s>" % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min,
                                            qid, hostname)


def _sanitize(text):
    return text.replace("\r", "").replace("\n", "")


def fix_up(headers, *, qid, hostname, now, user, from_address, full_name, single_rcpt=None,
           auth_warning=None):
    """Return the header list as queued: Received on top, then the fields that were
    missing (Date, From, Message-Id), then the original fields in their order."""
    added = [received(qid, hostname, user, now, single_rcpt)]
    if auth_warning:
        added.append(("X-Authentication-Warning: %s: %s" % (hostname, _sanitize(auth_warning)))
                     .encode("utf-8", "surrogateescape"))
    if not has(headers, "date"):
        added.append(("Date: %s" % rfc5322_date(now)).encode())
    if not has(headers, "from"):
        addr = _sanitize(from_address) or "MAILER-DAEMON@" + hostname
        name = _sanitize(full_name or "")
        if name:
            if any(c in name for c in '()<>[]:;@\\,."'):
                name = '"%s"' % name.replace("\\", "\\\\").replace('"', '\\"')
            added.append(("From: %s <%s>" % (name, addr)).encode("utf-8", "surrogateescape"))
        else:
            added.append(("From: %s" % addr).encode("utf-8", "surrogateescape"))
    if not has(headers, "message-id"):
        added.append(("Message-Id: %s" % message_id(qid, hostname, now)).encode())
    return added + headers

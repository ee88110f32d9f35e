"""Queueing the messages the MTA writes itself: DSNs (bounces, delay warnings, return
receipts) made by delivery/bounce.py, routed and committed like any message.

    queue_bounce(layout, options, ident, log, env, recipients, spool, kind) -> qid | None
    inject_file(layout, options, ident, log, spool, sender, rcpt_texts, f, notify) -> qid

The DSN is written straight to a file in the queue directory and its body copied with
sendfile, so returning a large original costs no memory. Its recipients get the
default NOTIFY: when a bounce fails, bounce.plan() sends the double bounce to the
postmaster (never to <>); a postmaster notice that fails is dropped.
"""
import os
import time

from .. import log as logfmt
from ..cleanup.headers import rfc5322_date
from ..config.options import interval_option
from ..model import FAILED, Envelope


def queue_bounce(layout, options, ident, log, env, recipients, spool, kind="failure"):
    """Queue the DSN owed for `recipients` of `env` (never to the null sender; a failed
    bounce goes to postmaster). The DSN is written straight to disk, so returning a
    large original costs no memory. Returns the new message's queue id or None."""
    from ..delivery.bounce import write_dsn
    tmp_path = os.path.join(spool.path, ".dsn.%d.%s" % (os.getpid(), env.qid))
    with open(tmp_path, "w+b") as tmp:
        try:
            to_addr = write_dsn(tmp, env, recipients, kind, spool.df(env.qid), ident.j,
                                int(time.time()),
                                warn_after=interval_option(options, "Timeout.queuewarn", "4h"),
                                return_after=interval_option(options, "Timeout.queuereturn", "5d"),
                                mailer_types=_mailer_types(layout, options, ident,
                                                           recipients))
            if to_addr is None:
                return None
            tmp.flush()
            return inject_file(layout, options, ident, log, spool, "", [to_addr], tmp,
                               notify="NEVER" if not env.sender else "")
        finally:
            os.unlink(tmp_path)


def _mailer_types(layout, options, ident, recipients):
    """The cf's T= values (mtatype/addrtype/diagtype) of the recipients' mailers, for the
    DSN's Remote-MTA, Final-Recipient and Diagnostic-Code types (None: the defaults)."""
    from ..delivery.bounce import DEFAULT_MAILER_TYPES
    from ..delivery.mailer_view import CF_NAMES
    from ..delivery.router import load_rules
    from ..errors import ConfigError
    try:
        rules = load_rules(layout, options, ident.j)
    except ConfigError:
        return None
    table = dict(DEFAULT_MAILER_TYPES)
    for r in recipients:
        m = rules.mailer(CF_NAMES.get(r.mailer, r.mailer)) if r.mailer else None
        types = (m.field("T") or "") if m is not None else ""
        parts = [p.strip() for p in types.split("/")]
        if len(parts) == 3 and all(parts):
            table[r.mailer] = tuple(parts)
    return table


def _read_header_block(f, limit=1 << 20):
    """(headers, body offset) of a message file: raw fields split at the first blank line."""
    f.seek(0)
    head = b""
    while b"\n\n" not in head and len(head) < limit:
        chunk = f.read(65536)
        if not chunk:
            break
        head += chunk
    block, sep, _ = head.partition(b"\n\n")
    offset = len(block) + len(sep)
    headers = []
    for line in block.split(b"\n"):
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1] += b"\n" + line
        elif line:
            headers.append(line)
    return headers, offset


def inject_file(layout, options, ident, log, spool, sender, rcpt_texts, f, notify=""):
    """Queue a message we generated ourselves (a DSN) from an open file, routed now."""
    from ..delivery.router import RouteContext, resolve, to_recipient
    headers, offset = _read_header_block(f)
    total = os.fstat(f.fileno()).st_size
    now = int(time.time())
    qid, fd = spool.allocate(now)
    committed = False
    try:
        pos = offset
        while pos < total:
            sent = os.sendfile(fd, f.fileno(), pos, min(total - pos, 1 << 24))
            if sent <= 0:
                break
            pos += sent
        env = Envelope(qid=qid, created=now, sender=sender, headers=headers,
                       uid=os.getuid(), user="", relay="localhost", size=total - offset,
                       error_mode="m")
        ctx = RouteContext(layout, options, ident)
        for text in rcpt_texts:
            try:
                targets = resolve(text, ctx)
            except Exception:
                targets = []
            for t in targets:
                if t.mailer == "discard":
                    continue
                r = to_recipient(t, t.address, notify=notify)
                if r.state == FAILED:
                    r.reported = "failure"
                env.recipients.append(r)
        if not env.recipients:
            return None
        env.headers.insert(0, ("Received: from localhost by %s (pysendmail) id %s; %s" % (
            ident.j, qid, rfc5322_date(now))).encode())
        env.priority = total + 30000 * len(env.recipients)
        spool.commit(env, fd)
        committed = True
        msgid = env.header("Message-Id")
        log.info(qid, logfmt.from_line(env, len(env.recipients),
                                       msgid.decode("utf-8", "replace") if msgid else "",
                                       relay="localhost", size=total))
    finally:
        if committed:
            os.close(fd)
        else:
            spool.discard(qid, fd)
    return qid

"""The filters' end-of-message changes applied to a queued message: its Envelope (headers,
sender, recipients, quarantine reason) and its df file (a new body).

Role: one place for what Sendmail's milter.c does with SMFIR_* modifications once the
last filter has answered, shared by the SMTP daemon (server.milters) and the submission
path (milter.submission).  Nothing is committed here: the caller writes the control file
afterwards, so a failure leaves the message as it was, never half-edited.

Headers travel between the queue's form (b"Name: value\\n\\tmore", bytes) and the chain's
(("Name", " value\\n\\tmore"), str); a filter's folded value always continues with white
space, so a bare line break from a filter cannot start a new header field.
"""
import os

from ..model import Recipient


def header_pair(raw):
    """b'Name: value\\n\\tmore' -> ('Name', ' value\\n\\tmore')."""
    name, _, value = raw.partition(b":")
    return (name.decode("ascii", "replace").rstrip(" \t"),
            value.decode("utf-8", "surrogateescape"))


def header_bytes(name, value):
    """('Name', ' value') -> b'Name: value' with safe folding (see the module docstring)."""
    lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    value = "\n".join([lines[0]] + [x if x[:1] in (" ", "\t") else "\t" + x
                                     for x in lines[1:]])
    return ("%s:%s" % (name, value)).encode("utf-8", "surrogateescape")


def notify_orcpt(args):
    """The NOTIFY and ORCPT values of a recipient's ESMTP arguments ('' when absent)."""
    notify = orcpt = ""
    for arg in args:
        key, _, value = arg.partition("=")
        if key.upper() == "NOTIFY":
            notify = value.upper()
        elif key.upper() == "ORCPT":
            orcpt = value
    return notify, orcpt


def write_body(fd, body):
    """Replace the df file's content by `body` (LF line ends, ending in a line end)."""
    if body and not body.endswith(b"\n"):
        body += b"\n"
    view, off = memoryview(body), 0
    while off < len(body):
        off += os.pwrite(fd, view[off:], off)
    os.ftruncate(fd, len(body))
    return len(body)


def apply_to_envelope(env, message, df_fd, own_headers=0):
    """milter.chain.Message's changes into env and the df file.  own_headers: how many of
    env.headers (on top) the filters were not shown; they stay first.  A recipient the
    filters kept keeps its queue state; an added one comes unrouted (the queue manager
    routes it).  Returns env."""
    changed = message.changed
    if "headers" in changed:
        env.headers = env.headers[:own_headers] + [header_bytes(n, v)
                                                   for n, v in message.headers]
    if "body" in changed:
        env.size = write_body(df_fd, message.body)
    if "sender" in changed:
        env.sender = message.sender
    if "recipients" in changed:
        old = {}
        for r in env.recipients:
            old.setdefault(r.address.strip("<>").lower(), r)
            old.setdefault(r.addr.lower(), r)
        rcpts = []
        for r in message.recipients:
            kept = old.get(r.address.lower())
            if kept is not None and not r.args:
                rcpts.append(kept)
                continue
            notify, orcpt = notify_orcpt(r.args)
            rcpts.append(Recipient(r.address, r.address, notify=notify, orcpt=orcpt))
        env.recipients = rcpts
    if message.quarantine:
        env.hold_reason = " ".join(message.quarantine.split())
    return env

"""`sendmail -bv addr...`: say where each address would go, without sending anything.

Output as Sendmail's: `root... deliverable: mailer local, user root`, errors such as
`nosuchuser... User unknown` first, exit 67 when any address is undeliverable.
"""
import os

from .. import addr as addrmod
from ..errors import EX_NOUSER, EX_OK, EX_USAGE, AddressError
from ..delivery.router import RouteContext, display_mailer, resolve


def _out(text):
    os.write(1, (text + "\n").encode("utf-8", "surrogateescape"))


def _qid():
    """A queue id for the log lines of this run, as Sendmail assigns one to -bv."""
    import time
    from ..queue.spool import make_qid
    return make_qid(time.time(), os.getpid(), int.from_bytes(os.urandom(2), "big") % 3600)


def describe(t):
    """Sendmail's "deliverable" line: the mailer, host and user ruleset 0 chose."""
    mailer = display_mailer(t.mailer)
    if t.mailer == "prog":
        return '"|%s"... deliverable: mailer prog, user |%s' % (t.user, t.user)
    if t.mailer == "file":
        return "%s... deliverable: mailer *file*, user %s" % (t.user, t.user)
    if t.host:
        return "%s... deliverable: mailer %s, host %s, user %s" % (
            t.address, mailer, t.host, t.user)
    return "%s... deliverable: mailer %s, user %s" % (t.address, mailer, t.user)


def main(inv, layout, options, ident, log):
    words = []
    for w in inv.recipients:
        words.extend(addrmod.split_list(w))
    if not words:
        _out("Recipient names must be specified")
        return EX_USAGE
    ctx = RouteContext(layout, options, ident, no_alias=inv.no_alias)
    qid = _qid()
    status = EX_OK

    def tell(text):
        _out(text)
        log.notice(qid, text)

    # readcf's complaints come first, and their status sticks (Sendmail's ExitStat)
    for _line, text in ctx.rules.complaints:
        tell(text)
        if status == EX_OK:
            status = 71 if "fileclass: cannot open" in text else 70
    good = []
    seen = set()
    for text in words:
        try:
            targets = resolve(text, ctx)
        except AddressError as e:
            tell(e.message)
            tell("%s... User unknown" % text)
            status = status or EX_NOUSER
            continue
        for t in targets:
            if t.mailer == "error":
                reason = (t.diag or "550 5.1.1 User unknown").split(" ", 2)[-1]
                tell("%s... %s" % (t.address or text, reason))
                status = status or EX_NOUSER
            elif t.key() not in seen:
                seen.add(t.key())
                good.append(t)
    for t in good:
        _out(describe(t))
    return status

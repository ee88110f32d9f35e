"""The router: decides, for one recipient address, which mailer delivers it where.

One function, `resolve`, so that the sendmail.cf engine's ruleset 0 can take its
place without touching its callers. Today it does what a stock Sendmail cf does for
a host without a smart host: addresses in a local domain ($=w) go through aliases
and ~/.forward (delivery.expand) to the local, prog or file mailers; every other
domain goes to the SMTP mailer (esmtp), whose agent picks it up from the queue.
"""
from .. import addr as addrmod
from ..errors import AddressError

# Sendmail's names for our mailers, as -bv and logs print them.
MAILER_NAMES = {"local": "local", "prog": "prog", "file": "*file*", "esmtp": "esmtp",
                "relay": "relay", "error": "error", "remote": "esmtp"}


class RouteContext:
    """What the router needs to know: paths, options, local host names, a log callback."""

    __slots__ = ("layout", "options", "ident", "log", "no_alias", "smart_host")

    def __init__(self, layout, options, ident, log=None, no_alias=False):
        self.layout = layout
        self.options = options
        self.ident = ident
        self.log = log or (lambda msg: None)
        self.no_alias = no_alias
        self.smart_host = getattr(ident, "smart_host", "")

    def is_local(self, domain):
        return self.ident.is_local(domain)


def host_of(target, ctx):
    """The destination host of a remote target: the smart host for `relay`, else the
    domain of its address."""
    if target.mailer == "relay":
        return ctx.smart_host
    if target.mailer != "esmtp":
        return ""
    return addrmod.Address(target.user, target.user).domain.lower().rstrip(".")


def _is_literal(address):
    return addrmod.Address(address, address).domain.startswith("[")


def _remote(target, ctx):
    """A remote target goes to the smart host ($S, the cf's DS line) when there is one."""
    if ctx.smart_host and not _is_literal(target.user):
        target.mailer = "relay"        # a domain literal ([192.0.2.10]) goes there directly
    else:
        target.mailer = "esmtp"
    return target


def resolve(text, ctx):
    """Resolve one address (str) to a list of expand.Target whose mailer is local, prog,
    file, esmtp or error. Raises AddressError on bad syntax."""
    from .expand import Target, expand
    a = addrmod.parse(text)
    bare = a.bare
    if bare in ("", "<>"):
        raise AddressError(text, "User address required")
    if not ctx.is_local(a.domain):
        return [_remote(Target(address=bare, mailer="esmtp", user=bare), ctx)]
    if ctx.no_alias:
        if _local_user(a.local):
            return [Target(address=a.local, mailer="local", user=a.local)]
        return [Target(address=a.local, mailer="error", user=a.local, status="5.1.1",
                       diag="550 5.1.1 User unknown")]
    targets = expand(bare, ctx)
    for t in targets:
        if t.mailer == "remote":
            _remote(t, ctx)
    return targets


def _local_user(name):
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False

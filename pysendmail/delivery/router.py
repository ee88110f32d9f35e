"""The router: which mailer delivers an address where, as the cf's ruleset 0 decides.

`resolve(text, ctx)` turns one recipient into its final delivery targets.  The address
goes through rulesets 3 and 0 of the cf (config/rules.py: Sendmail's parseaddr() and
buildaddr()) to a (mailer, host, user) triple.  Users of the local mailer then go
through aliases, :include: files and ~/.forward (delivery/expand.py), whose addresses
are routed the same way again, as Sendmail's recipient() does.  The mailers:

  local                  the local delivery agent (mbox or Maildir)
  prog, *file*           from aliases and .forward ("|cmd", "/path"), chosen by the
                         local mailer's F=| and F=/ flags; "file" in the queue
  *include*              ":include:/path" (F=:), expanded here
  error                  $#error $@ 5.1.1 $: "550 User unknown": fails with that reply
  discard                $#discard: accepted and dropped
  any other cf mailer    esmtp, smtp, relay, ...: queued with ruleset 0's host for the
                         SMTP agent

`RouteContext` loads the cf with config/cf.py's cache (in the instance's cache
directory), so a submission does not pay for the parser, and routes each distinct
address once.
"""
from .. import addr as addrmod
from ..errors import AddressError

# How -bv and the logs name our mailers.
MAILER_NAMES = {"file": "*file*", "include": "*include*"}


ROUTE_MEMO = 4096   # addresses a RouteContext remembers (RouteContext.route)
ROUTE_TTL = 60.0    # seconds a remembered route is trusted


class RouteContext:
    """What the router needs: the instance's paths and options, the host identity, a
    log callback; `local_names` are added to $=w.  The cf at layout.cf is loaded on
    first use."""

    def __init__(self, layout, options, ident=None, log=None, no_alias=False,
                 local_names=()):
        self.layout = layout
        self.options = dict(options or {})
        self.ident = ident
        self._log = log
        self.no_alias = no_alias
        self.messages = []
        self._local_names = list(local_names)
        self._rules = None
        self._routes = {}
        self.hostname = ident.j if ident is not None else None

    def log(self, msg):
        self.messages.append(msg)
        if self._log:
            self._log(msg)

    @property
    def rules(self):
        if self._rules is None:
            if self._local_names:       # a private copy: the shared one stays as loaded
                from ..config import cf as cfmod
                from ..config.rules import Rules
                self._rules = Rules(cfmod.load(self.layout.cf), self.options, self.hostname,
                                    resolv_confs=self.layout.resolv_confs)
                self._rules.add_class("w", self._local_names)
            else:
                self._rules = load_rules(self.layout, self.options, self.hostname)
        return self._rules

    def refresh(self):
        """For a context kept over several queue passes: take a changed cf or class
        file (and forget the routes it gave), drop the messages logged so far."""
        self.messages.clear()
        if self._rules is not None and not self._local_names:
            rules = load_rules(self.layout, self.options, self.hostname)
            if rules is not self._rules:
                self._rules = rules
                self._routes.clear()

    def route(self, address, sender=False):
        """The Parsed triple of one address (rulesets 3 and 0; `sender`: as an envelope
        sender), memoised: a long-running process (the SMTP daemon's policy, a queue
        run) routes each address once a minute at most, in a bounded table; a
        temporary result (a map that failed for now) is never kept."""
        import time
        now = time.monotonic()
        key = (address, sender)
        hit = self._routes.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        p = self.rules.parse(address, sender=sender)
        if not getattr(p, "temporary", False):
            if len(self._routes) >= ROUTE_MEMO:
                self._routes.clear()
            self._routes[key] = (now + ROUTE_TTL, p)
        return p


_LOADED = {}     # a long-running process (the service) keeps its Rules while nothing changed


def _stamp(path):
    import os
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def load_rules(layout, options, hostname=None):
    """The Rules of the instance's cf (layout.cf): the compiled form comes from the cache
    when the file is unchanged, and a process reuses its Rules until the cf or a class
    file it reads changes.  A broken cf raises CfError (exit 78; 72 when missing)."""
    from ..config import cf_cache
    from ..config.rules import Rules
    key = (layout.cf, hostname, tuple(sorted((options or {}).items())))
    held = _LOADED.get(key)
    if held is not None:
        rules, stamps = held
        if all(_stamp(path) == stamp for path, stamp in stamps):
            return rules
    stamp = _stamp(layout.cf)
    cache_dir = getattr(layout, "cache_dir", None)
    try:
        with open(layout.cf, "rb") as f:
            cf = cf_cache.lookup(layout.cf, f.read(), cache_dir)
    except OSError:
        cf = None
    if cf is None:          # not compiled yet, or unreadable: the parser says why
        from ..config import cf as cfmod
        cf = cfmod.load(layout.cf, cache_dir=cache_dir)
    rules = Rules(cf, options, hostname, cache_dir=cache_dir,
                  resolv_confs=layout.resolv_confs)
    stamps = [(layout.cf, stamp)] + [(c.path, _stamp(c.path)) for c in cf.class_files
                                     if not c.path.startswith("|")]
    _LOADED.clear()
    _LOADED[key] = (rules, stamps)
    return rules


def display_mailer(name):
    return MAILER_NAMES.get(name, name)


def resolve(text, ctx):
    """Resolve one address (str) to a list of expand.Target.  Raises AddressError on
    bad syntax or an empty address."""
    from .expand import expand
    a = addrmod.parse(text)
    bare = a.bare
    if bare in ("", "<>"):
        raise AddressError(text, "User address required")
    return expand(bare, ctx, noalias=ctx.no_alias)


def to_recipient(t, text, **fields):
    """The queue's Recipient for a Target; *text* is the address as the caller gave it.
    An error target is FAILED with its reply, or DEFERRED (to be routed again at the
    next queue run) when the reply is a 4xx: a map that failed for now, $#error 4.x.x."""
    from ..model import DEFERRED, FAILED, Recipient
    r = Recipient(t.address if t.parent else text, t.user, mailer=t.mailer, host=t.host,
                  user=t.user, parent=t.parent, owner=t.owner, **fields)
    if t.mailer == "error":
        r.status = t.status or "5.1.1"
        r.diag = t.diag or "550 5.1.1 User unknown"
        r.address = t.address or text
        r.state = DEFERRED if r.status.startswith("4") else FAILED
    return r

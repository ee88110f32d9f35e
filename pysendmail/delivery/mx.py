"""Where a remote delivery connects: Sendmail's getmxrr() and the address lookups of its
makeconnection(), with dnspython.

The host of an esmtp/smtp/relay triple (ruleset 0's `$@`) is one of:

  example.com            MX lookup; the exchanges ordered by preference, equal
                         preferences in random order; no MX record: the domain itself
                         (implicit MX, RFC 5321 5.1); a null MX ("0 .", RFC 7505): the
                         domain accepts no mail (5.1.10, nothing to try);
  [mail.example.com]     no MX lookup, the name's own addresses (Sendmail's "MX
                         suppression" brackets);
  [192.0.2.1], [IPv6:2001:db8::1]   an address literal: no DNS at all;
  a.example:[b.example]  Sendmail's host list: each element as above, in that order.

Public API (a small synchronous one; the delivery driver runs it in a thread or a child):

  resolve_destinations(host_field, resolver_ctx, port=25, own_names=(), ipv6=True,
                       rng=None, my_name=None, failures=None) -> [Destination, ...]
      Destination is a namedtuple (host, addresses, port, preference): the host name
      (no trailing dot, lower case; for a literal the bracketed text), its addresses
      as strings (IPv6 addresses first, then IPv4, each family in the order the
      server returned them, at most MAX_ADDRESSES of each family), the TCP port, the
      MX preference (None for an implicit MX, a bracketed name or a literal).  Hosts
      without any address are left out.  Raises DestinationError when nothing is
      left to try.  `failures`, a list when given, receives the DestinationError of
      every host left out (to tell "all connections failed" from a DNS deferral).
  iter_destinations(...the same arguments...)   the same, lazily (a generator): the
      addresses of the next host are looked up when the caller asks for it.
  order_mx(records, own_names=(), rng=None, domain="", my_name=None)
      the pure part of getmxrr(): [(preference, exchange)] -> the same, ordered.
  split_host_field(field) -> [element, ...]   (colons inside [...] do not split)
  literal_address(element) -> "192.0.2.1" / "2001:db8::1" / None
  resolver_context(options, resolv_confs) -> config.canon.Dns: the resolver built
      from the instance's resolv.conf, ResolverOptions and Timeout.resolver.*.

`resolver_ctx` is anything with a `resolver()` method returning a dns.resolver.Resolver
(config.canon.Dns is one).  Names are looked up as absolute names (no search list): the
cf has qualified them.  Address preference: for each host, AAAA then A (as Postfix's
default smtp_address_preference=any does in practice with IPv6 enabled; Sendmail tries
the order getaddrinfo gives); `ipv6=False` asks for A records only.

Loop prevention (Sendmail's DROPLOCALHOST): when an MX exchange is one of our own
names ($=w, `own_names`), that exchange and every exchange of the same or a worse
preference are dropped; if nothing is left the MX list "points back to" us: a local
configuration error (EX_CONFIG, 5.3.5, "MX list for D points back to ME"), which the
cf should have caught by treating the domain as local.

Errors are DestinationError (an errors.MTAError): `.status` (EX_NOHOST, EX_TEMPFAIL,
EX_UNAVAILABLE, EX_CONFIG), `.dsn`, `.message` (Sendmail's status text: "Host unknown
(Name server: x: host not found)", "Deferred: Name server: x: host name lookup
failure"), `.text` (the part after the exit status's own words), `.host`,
`.temporary`.  When a host list has both temporary and permanent failures and nothing
to try, the result is temporary: a later attempt may succeed.

dnspython is imported on the first lookup only.
"""
from collections import namedtuple

from ..errors import (EX_CONFIG, EX_NOHOST, EX_TEMPFAIL, EX_UNAVAILABLE, EXIT_TEXT,
                      MTAError)

MAX_MX = 100            # Sendmail's MAXMXHOSTS
MAX_ADDRESSES = 10      # addresses kept per host

Destination = namedtuple("Destination", "host addresses port preference")


class DestinationError(MTAError):
    """No place to connect to (see the module docstring for the attributes)."""

    def __init__(self, status, dsn, text, host=""):
        if status == EX_TEMPFAIL:
            message = "%s: %s" % (EXIT_TEXT[EX_TEMPFAIL], text)
        elif status == EX_NOHOST:
            message = "%s (%s)" % (EXIT_TEXT[EX_NOHOST], text)
        else:
            message = text
        super().__init__(message, status, dsn)
        self.text = text
        self.host = host

    @property
    def temporary(self):
        return self.status == EX_TEMPFAIL


def _host_not_found(host):
    return DestinationError(EX_NOHOST, "5.1.2", "Name server: %s: host not found" % host,
                            host)


def _no_data(host):
    return DestinationError(EX_NOHOST, "5.1.2", "Name server: %s: no data known" % host,
                            host)


def _lookup_failure(host):
    return DestinationError(EX_TEMPFAIL, "4.4.3",
                            "Name server: %s: host name lookup failure" % host, host)


def _null_mx(host):
    return DestinationError(EX_UNAVAILABLE, "5.1.10",
                            "%s: Domain does not accept mail (null MX)" % host, host)


def _norm(name):
    return str(name).strip().rstrip(".").lower()


def resolver_context(options, resolv_confs):
    """The `dns` service of config.canon over the instance's resolver configuration."""
    from ..config.canon import Dns
    return Dns(options, resolv_confs)


def order_mx(records, own_names=(), rng=None, domain="", my_name=None):
    """[(preference, exchange)] -> [(preference, exchange)] in the order to try.

    Exchanges are returned lower case without the trailing dot; duplicates keep their
    best preference; at most MAX_MX are kept.  Equal preferences are shuffled with
    `rng` (a random.Random; a fresh one when None).  A lone "0 ." is a null MX:
    DestinationError 5.1.10; a "." among other exchanges is ignored.  Exchanges in
    `own_names` prune the list (see the module docstring): DestinationError EX_CONFIG
    5.3.5 when that leaves nothing; `domain` and `my_name` only go into its text."""
    best = {}
    for pref, exchange in records:
        name = _norm(exchange)
        pref = int(pref)
        if name not in best or pref < best[name]:
            best[name] = pref
    if "" in best:
        if len(best) == 1 and best[""] == 0:
            raise _null_mx(_norm(domain))
        del best[""]
    own = {_norm(n) for n in own_names}
    local = [p for n, p in best.items() if n in own]
    if local:
        localpref = min(local)
        best = {n: p for n, p in best.items() if p < localpref}
        if not best:
            me = _norm(my_name) if my_name else sorted(own)[0]
            raise DestinationError(EX_CONFIG, "5.3.5", "MX list for %s points back to %s"
                                   % (_norm(domain), me), _norm(domain))
    if rng is None:
        import random
        rng = random.Random()
    keyed = sorted((p, rng.random(), n) for n, p in sorted(best.items()))
    return [(p, n) for p, _r, n in keyed[:MAX_MX]]


def split_host_field(field):
    """Sendmail's `$@` host list: elements separated by colons outside brackets."""
    out, cur, depth = [], [], 0
    for c in field.strip():
        if c == "[":
            depth += 1
        elif c == "]" and depth:
            depth -= 1
        if c == ":" and not depth:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
    out.append("".join(cur).strip())
    return [e for e in out if e]


def literal_address(element):
    """The address of a domain literal ([192.0.2.1], [IPv6:2001:db8::1]), else None."""
    if not (element.startswith("[") and element.endswith("]")):
        return None
    inner = element[1:-1].strip()
    import ipaddress
    if inner[:5].lower() == "ipv6:":
        try:
            return str(ipaddress.IPv6Address(inner[5:]))
        except ValueError:
            return None
    try:
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        return None


class _Lookup:
    """One resolve_destinations() call: its resolver and a memo of address lookups."""

    def __init__(self, resolver_ctx, ipv6):
        self.ctx = resolver_ctx
        self.ipv6 = ipv6
        self.memo = {}

    def query(self, name, rdtype):
        """The answer's rdatas; [] for no data; raises DestinationError (5.1.2 for a
        name that does not exist, 4.4.3 for a server failure or a timeout)."""
        import dns.exception
        import dns.name
        import dns.resolver
        try:
            qname = dns.name.from_text(name + ".")
        except dns.exception.DNSException:      # empty or too long labels: no such host
            raise _host_not_found(name) from None
        resolver = self.ctx.resolver()
        try:
            answer = resolver.resolve(qname, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise _host_not_found(name) from None
        except dns.resolver.NoAnswer:
            return []
        except dns.resolver.YXDOMAIN:
            raise _host_not_found(name) from None
        except dns.exception.DNSException:      # timeouts, SERVFAIL (NoNameservers), ...
            raise _lookup_failure(name) from None
        return list(answer)

    def addresses(self, name):
        """AAAA then A addresses of `name` (see query() for the errors); a name that
        exists with neither raises "no data known" (5.1.2)."""
        if name in self.memo:
            found = self.memo[name]
            if isinstance(found, DestinationError):
                raise found
            return found
        try:
            found = []
            for rdtype in (("AAAA", "A") if self.ipv6 else ("A",)):
                try:
                    rdatas = self.query(name, rdtype)
                except DestinationError as e:
                    # NXDOMAIN for AAAA is NXDOMAIN for A: don't ask twice
                    if e.temporary or rdtype == "A" or not found:
                        raise
                    rdatas = []
                found.extend(r.address for r in rdatas[:MAX_ADDRESSES])
            found = found[:MAX_ADDRESSES] if self.ipv6 else found
            if not found:
                raise _no_data(name)
        except DestinationError as e:
            self.memo[name] = e
            raise
        self.memo[name] = found
        return found


def _element(element, lookup, port, own_names, rng, my_name, failures):
    """The destinations of one element of the host list, lazily; failures noted."""
    address = literal_address(element)
    if address is not None:
        yield Destination(element, [address], port, None)
        return
    if element.startswith("[") and element.endswith("]"):
        hosts = [(None, _norm(element[1:-1]))]
    else:
        domain = _norm(element)
        try:
            rdatas = lookup.query(domain, "MX")
            records = [(r.preference, r.exchange.to_text()) for r in rdatas]
            # no MX: the domain itself (implicit MX, RFC 5321 5.1)
            hosts = order_mx(records, own_names, rng, domain, my_name) if records \
                else [(None, domain)]
        except DestinationError as e:
            failures.append(e)
            return
    for pref, host in hosts:
        try:
            addresses = lookup.addresses(host)
        except DestinationError as e:
            failures.append(e)
            continue
        yield Destination(host, addresses, port, pref)


def iter_destinations(host_field, resolver_ctx, port=25, own_names=(), ipv6=True,
                      rng=None, my_name=None, failures=None):
    """resolve_destinations() as a generator: each host's addresses are looked up
    only when the caller asks for the next destination (as Sendmail's
    makeconnection() does), so a delivery that succeeds on the first MX costs no
    lookups for the others.  Hosts skipped for a DNS failure are appended to
    `failures` (a list) when given; DestinationError is raised at the end when
    nothing at all was yielded."""
    failures = [] if failures is None else failures
    lookup = _Lookup(resolver_ctx, ipv6)
    elements = split_host_field(host_field)
    if not elements:
        raise _host_not_found(host_field.strip() or "(empty)")
    yielded = False
    for element in elements:
        for destination in _element(element, lookup, port, own_names, rng, my_name,
                                    failures):
            yielded = True
            yield destination
    if not yielded:
        temporary = [f for f in failures if f.temporary]
        raise (temporary or failures)[-1]


def resolve_destinations(host_field, resolver_ctx, port=25, own_names=(), ipv6=True,
                         rng=None, my_name=None, failures=None):
    """The hosts to try, in order, for the `$@` of a remote mailer (module docstring)."""
    return list(iter_destinations(host_field, resolver_ctx, port, own_names, ipv6, rng,
                                  my_name, failures))

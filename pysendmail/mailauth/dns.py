"""DNS for the email authentication checks: one small caching resolver over dnspython.

Role: SPF, DKIM, DMARC and ARC ask their questions here (TXT, A, AAAA, MX, PTR), from
worker threads (the checks run in a thread pool beside the daemon's event loop), so the
class is thread-safe.  Answers, empty ones included, are cached for their TTL (at most
`max_ttl`, default 300 s) up to `cache_size` names; a temporary failure (SERVFAIL, a
timeout, no server) raises `DnsTempError` and is never cached, so the check can say
"temperror" instead of "fail".

  dns = Lookup(resolv_confs=layout.resolv_confs)       # or nameservers=["127.0.0.1"], port=
  dns.txt("example.com")      -> ["v=spf1 -all", ...]  (each record's strings joined)
  dns.a(name), dns.aaaa(name) -> ["192.0.2.1"];  dns.mx(name) -> [(10, "mx.example.com")]
  dns.ptr("192.0.2.1")        -> ["host.example.com"]
  dns.query(name, "SPF")      -> [rdata text]
  dns.lookups                 -> how many questions went to the network (tests, limits)

A name that does not exist (NXDOMAIN) and a name without records of the type (NODATA)
both answer []: callers that must tell them apart use `exists(name)`.
"""
import threading
import time

DEFAULT_TIMEOUT = 5.0


class DnsTempError(Exception):
    """A temporary DNS failure (SERVFAIL, timeout, no reachable server)."""


class Lookup:
    def __init__(self, resolv_confs=(), nameservers=None, port=53, timeout=DEFAULT_TIMEOUT,
                 cache_size=2048, max_ttl=300):
        if nameservers:
            import dns.resolver
            r = dns.resolver.Resolver(configure=False)
            r.nameservers = list(nameservers)
            r.timeout, r.lifetime = min(timeout, 2.0), timeout
        else:
            # resolv.conf's "options timeout:N attempts:N" as the C resolver reads them,
            # within `timeout` for the whole question
            from ..config.canon import system_resolver
            r, each, attempts = system_resolver(resolv_confs)
            r.timeout, r.lifetime = min(each, timeout), min(each * attempts, timeout)
        r.port = port
        r.cache = None
        self.resolver = r
        self.cache_size, self.max_ttl = cache_size, max_ttl
        self._cache = {}
        self._lock = threading.Lock()
        self.lookups = 0

    def query(self, name, rdtype):
        """The records of `rdtype` at `name` as dnspython rdata objects ([] for NXDOMAIN or
        NODATA); DnsTempError on a temporary failure."""
        import dns.exception
        import dns.resolver
        key = (name.lower().rstrip(".") + ".", rdtype.upper())
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        self.lookups += 1
        ttl = self.max_ttl
        try:
            answer = self.resolver.resolve(key[0], key[1], search=False,
                                           raise_on_no_answer=False)
            records = list(answer.rrset) if answer.rrset is not None else []
            if answer.rrset is not None:
                ttl = min(ttl, answer.rrset.ttl)
            exists = True
        except dns.resolver.NXDOMAIN:
            records, exists = [], False
        except (dns.resolver.NoNameservers, dns.exception.Timeout,
                dns.resolver.LifetimeTimeout) as e:
            raise DnsTempError("%s %s: %s" % (key[0], key[1], type(e).__name__)) from None
        except dns.exception.DNSException as e:
            raise DnsTempError("%s %s: %s" % (key[0], key[1], e)) from None
        with self._lock:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[key] = (now + max(ttl, 0), records, exists)
        return records

    def exists(self, name):
        """True unless `name` is NXDOMAIN (asked as an A query)."""
        self.query(name, "A")
        key = (name.lower().rstrip(".") + ".", "A")
        with self._lock:
            hit = self._cache.get(key)
        return True if hit is None else hit[2]

    def txt(self, name):
        out = []
        for rr in self.query(name, "TXT"):
            out.append(b"".join(rr.strings).decode("utf-8", "surrogateescape"))
        return out

    def a(self, name):
        return [rr.address for rr in self.query(name, "A")]

    def aaaa(self, name):
        return [rr.address for rr in self.query(name, "AAAA")]

    def mx(self, name):
        return sorted((rr.preference, str(rr.exchange).rstrip(".")) for rr in self.query(name, "MX"))

    def ptr(self, addr):
        import dns.reversename
        return [str(rr.target).rstrip(".")
                for rr in self.query(dns.reversename.from_address(addr).to_text(), "PTR")]

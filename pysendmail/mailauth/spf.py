"""SPF (RFC 7208): may this client IP send mail for the MAIL FROM / HELO domain?

Role: the inbound check the daemon runs from a worker thread for each SMTP transaction,

    r = check_host("192.0.2.1", "user@example.com", "mx.example.net", lookup)
    r = check_helo("192.0.2.1", "mx.example.net", lookup)
    r.result          "pass" "fail" "softfail" "neutral" "none" "permerror" "temperror"
    r.domain          the domain whose policy was evaluated
    r.mechanism       the directive that matched ("-all", "ip4:192.0.2.0/24", ...) or None
    r.explanation     for "fail": the domain's exp= text, else the local default
    r.smtp_comment    "domain of example.com designates 192.0.2.1 as permitted sender"
    r.problem         why, for permerror/temperror
    r.received_spf    the value of a Received-SPF header field (RFC 7208 9.1)

where `lookup` is a pysendmail.mailauth.dns.Lookup (thread-safe, caching, dnspython).

Engine: pyspf (the `spf` module of the PyPI package pyspf), not our own evaluator: with
its queries going through our Lookup and the two additions below, it passes all 203 tests
of the RFC 7208 suite (tests/test_spf.py), so a hand-written evaluator would only repeat
its parser, macro expansion and limits.  Its strict mode (the one used here) enforces the
RFC's limits: 10 DNS-querying terms (include, a, mx, ptr, exists, redirect), 2 void
lookups, at most 10 MX names (more is a permerror), at most 10 PTR names (the rest
ignored), and a cap on the time of one check (`time_limit`, 20 s, RFC 7208 4.6.4).

What we write by hand, because pyspf lacks it or does it differently:
  * its DNS goes through `spf.DNSLookup`, one module-level function with no context; we
    install a dispatcher once that sends each question to the Lookup of the calling
    thread (a thread-local set for the length of one check), so checks in several worker
    threads with different resolvers do not mix.  pyspf used directly, outside these
    functions, gets temperror: no question goes to a resolver we did not configure.
    Our Lookup (dnspython's resolver) follows CNAME chains itself and answers under the
    name asked, so pyspf's own CNAME code never sees a CNAME; NXDOMAIN and NODATA both
    come back as [] and pyspf counts them as void lookups, as RFC 7208 4.6.4 wants.  A
    temporary failure (DnsTempError) becomes pyspf's TempError, i.e. "temperror".  Names
    dnspython cannot put on the wire (a label over 63 octets, over 255 in all, bad IDNA)
    are answered as "no such name".
  * RFC 7208 5.5 for "ptr" and %{p}: a DNS error on the PTR lookup means no match, and
    one on a PTR name's address lookup skips that name; pyspf gives temperror for both
    (suite test ptr-cname-loop: a CNAME loop, which a resolver reports as an error).
  * RFC 7208 4.3 before any query: a domain that is not a well-formed multi-label name
    (HELO "A2345678", a domain literal "[192.0.2.1]", empty labels) gives "none".
  * the null sender "<>" (or "") is checked as postmaster@HELO (RFC 7208 2.4) and
    reported with identity "helo"; "<...>" around a sender is dropped.
  * the result object, an overall catch that turns an unexpected engine error into
    "temperror" (never an exception into the daemon's worker), and the default
    explanation as a parameter.
Not done: the SPF RR type (99), which RFC 7208 3.1 retired: only TXT is asked.
"""
import threading

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
DEFAULT_TIME_LIMIT = 20
DEFAULT_EXPLANATION = "SPF fail - not authorized"

_local = threading.local()
_install_lock = threading.Lock()
_engine = None


class SpfResult:
    """The outcome of one SPF check (see the module docstring)."""

    __slots__ = ("result", "domain", "explanation", "mechanism", "smtp_comment",
                 "problem", "identity", "ip", "sender", "helo", "received_spf")

    def __init__(self, result, domain, explanation=None, mechanism=None, smtp_comment="",
                 problem=None, identity="mailfrom", ip="", sender="", helo="",
                 received_spf=""):
        self.result, self.domain = result, domain
        self.explanation, self.mechanism = explanation, mechanism
        self.smtp_comment, self.problem = smtp_comment, problem
        self.identity, self.ip, self.sender, self.helo = identity, ip, sender, helo
        self.received_spf = received_spf

    def __repr__(self):
        return "SpfResult(%r, domain=%r, mechanism=%r)" % (self.result, self.domain,
                                                          self.mechanism)


def _spf():
    """pyspf, imported on first use, with our DNS dispatcher installed."""
    global _engine
    if _engine is None:
        with _install_lock:
            if _engine is None:
                import spf

                def dispatch(name, qtype, strict=True, timeout=None):
                    lookup = getattr(_local, "lookup", None)
                    if lookup is None:      # pyspf called past check_host(): no resolver
                        raise spf.TempError("DNS: no Lookup for this thread")
                    return _ask(spf, lookup, name, qtype)

                spf.DNSLookup = dispatch
                _engine = (spf, _query_class(spf))
    return _engine


def _query_class(spf):
    """pyspf's query with RFC 7208 5.5's error handling for "ptr" (and %{p}, 7.3): a
    DNS error on the PTR lookup is no match, and a DNS error on one name's address
    lookup skips that name (pyspf turns both into temperror)."""
    class Query(spf.query):
        def validated_ptrs(self):
            try:
                names = self.dns_ptr(self.i)
            except spf.TempError:
                return []
            valid = []
            for name in names[:spf.MAX_PTR]:
                try:
                    addresses = self.dns_a(name, self.A)
                except spf.TempError:
                    continue
                if self.cidrmatch(addresses, self.cidrmax):
                    valid.append(name)
            return valid
    return Query


def _ask(spf, lookup, name, qtype):
    """One question for pyspf: [((name, qtype), value), ...] in the shapes its own
    dnspython driver gives (address text; (preference, exchange); PTR target text without
    the dot; TXT as the tuple of the record's strings, bytes)."""
    import dns.exception
    import dns.name
    from pysendmail.mailauth.dns import DnsTempError
    try:
        dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError):
        return []                                   # cannot exist on the wire
    try:
        records = lookup.query(name, qtype)
    except DnsTempError as e:
        raise spf.TempError("DNS %s" % e) from None
    key = (name, qtype)
    if qtype in ("A", "AAAA"):
        return [(key, rr.address) for rr in records]
    if qtype == "MX":
        return [(key, (rr.preference, str(rr.exchange))) for rr in records]
    if qtype == "PTR":
        return [(key, str(rr.target).rstrip(".")) for rr in records]
    if qtype in ("TXT", "SPF"):
        return [(key, tuple(rr.strings)) for rr in records]
    return []


def _well_formed(domain):
    """RFC 7208 4.3: a multi-label domain name with labels of 1..63 octets."""
    domain = domain[:-1] if domain.endswith(".") else domain
    if not domain or len(domain) > 253 or domain.startswith("["):
        return False
    labels = domain.split(".")
    return len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels)


def check_host(ip, sender, helo, lookup, receiver="localhost", *,
               default_explanation=None, time_limit=DEFAULT_TIME_LIMIT):
    """RFC 7208 check_host() for the MAIL FROM identity `sender` (""/"<>": the null
    sender, checked as postmaster@helo).  Never raises for bad input or DNS trouble."""
    sender = (sender or "").strip()
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1]
    return _check(ip, sender, helo or "", lookup, receiver, default_explanation, time_limit)


def check_helo(ip, helo, lookup, receiver="localhost", *, default_explanation=None,
               time_limit=DEFAULT_TIME_LIMIT):
    """RFC 7208 2.3: the HELO identity, checked as postmaster@helo."""
    return _check(ip, "", helo or "", lookup, receiver, default_explanation, time_limit)


def _check(ip, sender, helo, lookup, receiver, default_explanation, time_limit):
    identity = "mailfrom" if sender else "helo"
    if sender:
        local, _at, domain = sender.rpartition("@")
    else:
        domain = helo
    info = dict(identity=identity, ip=ip, sender=sender or "postmaster@" + helo, helo=helo)
    if not _well_formed(domain):
        return _plain("none", domain, "%s is not a valid domain to check" % (domain or '""'),
                      info, receiver)
    spf, query = _spf()
    try:
        q = query(i=ip, s=sender, h=helo, receiver=receiver, strict=True,
                      timeout=time_limit, querytime=time_limit)
    except spf.PermError as e:                      # the client IP itself
        return _plain("permerror", domain, "bad client address %r: %s" % (ip, e), info,
                      receiver)
    q.set_default_explanation(default_explanation or DEFAULT_EXPLANATION)
    _local.lookup = lookup
    try:
        result, _code, text = q.check()
    except Exception as e:      # noqa: BLE001 - an engine bug must not kill the worker
        return _plain("temperror", domain, "SPF engine error: %s: %s"
                      % (type(e).__name__, e), info, receiver)
    finally:
        _local.lookup = None
    result = {"error": "temperror", "unknown": "permerror"}.get(result, result)
    if result not in RESULTS:                       # "ambiguous" exists in harsh mode only
        result = "permerror"
    problem = None
    if result in ("permerror", "temperror"):
        problem = getattr(q, "prob", None) or text
    try:
        comment = q.get_header_comment(result)
        header = q.get_header(result, receiver=receiver)
    except Exception:           # noqa: BLE001 - a comment is not worth a failed check
        comment, header = "", ""
    return SpfResult(result, domain, explanation=text if result == "fail" else None,
                     mechanism=q.mechanism if result not in ("permerror", "temperror")
                     else None, smtp_comment=comment, problem=problem,
                     received_spf=header, **info)


_COMMENTS = {"none": "%(ip)s is neither permitted nor denied by domain of %(domain)s",
             "permerror": "permanent error in processing domain of %(domain)s: %(why)s",
             "temperror": "temporary error in processing during lookup of %(domain)s"}
_TAGS = {"none": "None", "permerror": "PermError", "temperror": "TempError"}


def _plain(result, domain, why, info, receiver):
    """A result decided before or outside the engine, with its comment and header."""
    comment = _COMMENTS[result] % {"ip": info["ip"], "domain": domain, "why": why}
    fields = ["%s (%s: %s)" % (_TAGS[result], receiver, comment),
              "client-ip=%s;" % _quote(info["ip"])]
    if info["identity"] == "mailfrom":
        fields.append("envelope-from=%s;" % _quote(info["sender"]))
    fields += ["helo=%s;" % _quote(info["helo"]), "receiver=%s;" % _quote(receiver),
               "identity=%s" % info["identity"]]
    return SpfResult(result, domain, smtp_comment=comment,
                     problem=why if result != "none" else None,
                     received_spf=" ".join(fields), **info)


def _quote(value):
    """A Received-SPF key-value: bare when a dot-atom, else a quoted-string."""
    atext = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                "!#$%&'*+/=?^_`{|}~-")
    if value and all(part and set(part) <= atext for part in value.split(".")):
        return value
    return '"%s"' % (value or "").replace("\\", "\\\\").replace('"', '\\"')

"""DMARC (RFC 7489): is the RFC5322.From domain authenticated, and what does its owner ask?

Role: given the SPF and DKIM outcomes of a message, decide DMARC's result and the
policy that applies; run from a worker thread (DNS through mailauth.dns.Lookup).
Enforcement is the caller's business: by default it only writes the result into
Authentication-Results; it rejects on `disposition == "reject"` only when the
administrator asked for it.

    domains = from_domains(message_bytes or header_list)   # every RFC5322.From domain
    r = evaluate(domains, spf_result, spf_domain, dkim_results, lookup, rng=random.random)
    r.result        pass | fail | none | temperror | permerror
    r.requested_policy  none | quarantine | reject: p=, or sp= for a subdomain whose
                    record was found at the organizational domain ("none" without one)
    r.policy        the requested policy after pct= sampling (a failing message outside
                    the sample gets the next lower one: reject -> quarantine -> none)
    r.disposition   what the owner asks for this message: r.policy when r.result is
                    "fail", else "none"
    r.header_from, r.org_domain, r.aligned_spf, r.aligned_dkim, r.record (raw TXT or
    None), r.record_domain (where it was found), r.reason (a short text), r.parts (one
    result per From domain, when there are several)

The steps (RFC 7489 section numbers):
  * alignment (3.1): an SPF "pass" for `spf_domain` (the MAIL FROM domain, or the HELO
    name for the null sender: the caller chooses), or a DKIM "pass" with d=, is
    aligned when the domain equals the From domain (strict, aspf=s / adkim=s) or when
    both share an organizational domain (relaxed, the default); the organizational
    domain comes from the public suffix list (mailauth.psl).
  * policy discovery (6.6.3): TXT at _dmarc.<From domain>; records not starting with
    v=DMARC1 are dropped; none left -> the same at _dmarc.<organizational domain>;
    several left at the step that found any -> no policy (result none).  A temporary
    DNS failure -> temperror (the caller may answer 4xx).
  * the record (6.3): unknown tags are ignored, a bad adkim/aspf/pct falls back to
    its default; a missing or bad p= (or a bad sp=) makes it "p=none" when rua= names
    a mailto/https URI, else no DMARC processing: result permerror (11.2: "a
    syntactically incorrect DMARC record"), disposition none.
  * several From domains (6.6.1): each is evaluated and the strictest failing one
    wins; no From domain at all (no From field, or none that parses) -> permerror,
    which RFC 7489 says such messages are "typically rejected" for (the caller's
    choice).  Several From *fields* are treated alike, so adding a second From field
    cannot take a message out of its domain's policy.
"""
import random

from . import psl as _psl
from .dns import DnsTempError

RESULTS = ("pass", "fail", "none", "temperror", "permerror")
POLICIES = ("none", "quarantine", "reject")
_LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_STRICTNESS = {"none": 0, "quarantine": 1, "reject": 2}
MAX_NAME = 253


class DmarcResult:
    """The outcome of one DMARC evaluation (see the module docstring)."""

    __slots__ = ("result", "policy", "requested_policy", "disposition", "header_from",
                 "org_domain", "aligned_spf", "aligned_dkim", "record", "record_domain",
                 "reason", "pct", "parts")

    def __init__(self, result, header_from=None, org_domain=None, reason=""):
        self.result = result
        self.header_from = header_from
        self.org_domain = org_domain
        self.reason = reason
        self.policy = self.requested_policy = self.disposition = "none"
        self.aligned_spf = self.aligned_dkim = False
        self.record = self.record_domain = None
        self.pct = 100
        self.parts = []

    def __repr__(self):
        return "DmarcResult(%s, from=%s, p=%s, dis=%s, %s)" % (
            self.result, self.header_from, self.requested_policy, self.disposition,
            self.reason)


class DmarcRecord:
    """A parsed v=DMARC1 record; `valid` False when it cannot be used (see 6.6.3)."""

    def __init__(self, text):
        self.text = text
        self.tags = {}
        self.valid = True
        self.errors = []
        for part in text.split(";"):
            name, eq, value = part.partition("=")
            name = name.strip().lower()
            if not name and not eq:
                continue
            if not eq or not name:
                self.errors.append("bad tag %r" % part.strip())
                continue
            self.tags.setdefault(name, value.strip())
        self.p = self._policy("p")
        self.sp = self._policy("sp") if "sp" in self.tags else self.p
        if "sp" in self.tags and self.sp is None:
            self.errors.append("bad sp=")
        if self.p is None or self.sp is None:
            if _has_report_uri(self.tags.get("rua", "")):
                self.errors.append("no valid p=: treated as p=none (rua= given)")
                self.p = self.sp = "none"
            else:
                self.valid = False
                self.errors.insert(0, "no valid p=" if self.p is None else "bad sp=")
        self.adkim = self._mode("adkim")
        self.aspf = self._mode("aspf")
        self.pct = 100
        if "pct" in self.tags:
            value = self.tags["pct"]
            if value.isdigit() and int(value) <= 100:
                self.pct = int(value)
            else:
                self.errors.append("bad pct=%s" % value)

    def _policy(self, tag):
        value = self.tags.get(tag, "").lower()
        return value if value in POLICIES else None

    def _mode(self, tag):
        value = self.tags.get(tag, "r").lower()
        if value not in ("r", "s"):
            self.errors.append("bad %s=%s" % (tag, value))
            return "r"
        return value


def _has_report_uri(rua):
    for uri in rua.split(","):
        uri = uri.strip().lower()
        scheme, colon, rest = uri.partition(":")
        if colon and rest and scheme in ("mailto", "https", "http"):
            return True
    return False


def is_dmarc_record(text):
    """True when a TXT record starts with the v=DMARC1 tag (6.6.3 step 2)."""
    name, eq, rest = text.lstrip().partition("=")
    if not eq or name.strip() != "v":
        return False
    value = rest.partition(";")[0].strip()
    return value == "DMARC1"


def valid_domain(domain):
    """True for a DNS name DMARC can ask about (LDH or non-ASCII labels, 1-63 octets
    each, at most 253 in all, not all-numeric at the top)."""
    if not domain or len(domain) > MAX_NAME or "." not in domain:
        return False
    labels = domain.split(".")
    for label in labels:
        if not 0 < len(label.encode("utf-8", "surrogateescape")) <= 63:
            return False
        if label[0] == "-" or label[-1] == "-":
            return False
        if not all(c.isalnum() or c in "-_" or ord(c) > 127 for c in label):
            return False
    return not labels[-1].isdigit()


def _text(value):
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    return str(value or "").strip().lower()


def _clean_domain(domain):
    if isinstance(domain, (bytes, bytearray)):
        domain = bytes(domain).decode("utf-8", "replace")
    if not domain:
        return None
    domain = str(domain).strip().lower().rstrip(".")
    if not domain.isascii():            # an IDN: its A-label form, as DNS and d= use
        domain = _psl.to_ascii(domain)
    return domain if valid_domain(domain) else None


def aligned(domain, from_domain, mode, psl=None):
    """Identifier alignment (3.1): strict ("s") needs the same name, relaxed ("r") the
    same organizational domain."""
    domain = _clean_domain(domain)
    if not domain or not from_domain:
        return False
    if domain == from_domain:
        return True
    if mode == "s":
        return False
    return _psl.org_domain(domain, psl) == _psl.org_domain(from_domain, psl)


def discover(from_domain, lookup, psl=None):
    """Policy discovery (6.6.3): (record text, record domain, org domain, reason).
    The record is None when there is no usable single record; DnsTempError passes up."""
    org = _psl.org_domain(from_domain, psl)
    names = [from_domain] if org == from_domain else [from_domain, org]
    for name in names:
        records = [t for t in lookup.txt("_dmarc." + name) if is_dmarc_record(t)]
        if len(records) > 1:
            return None, name, org, "%d DMARC records at _dmarc.%s" % (len(records), name)
        if records:
            return records[0], name, org, ""
    return None, None, org, "no DMARC record"


def _evaluate_one(from_domain, spf_result, spf_domain, dkim_results, lookup, rng, psl):
    domain = _clean_domain(from_domain)
    if domain is None:
        return DmarcResult("permerror", header_from=from_domain,
                           reason="malformed From domain %r" % (from_domain,))
    try:
        text, where, org, why = discover(domain, lookup, psl)
    except DnsTempError as e:
        return DmarcResult("temperror", domain, _psl.org_domain(domain, psl),
                           "DNS: %s" % e)
    r = DmarcResult("none", domain, org, why)
    r.record, r.record_domain = text, where
    if text is None:
        return r
    record = DmarcRecord(text)
    if not record.valid:
        r.result, r.reason = "permerror", "invalid record at _dmarc.%s: %s" % (
            where, "; ".join(record.errors))
        return r
    r.requested_policy = record.sp if where != domain else record.p
    r.pct = record.pct
    r.aligned_spf = (_text(spf_result) == "pass"
                     and aligned(spf_domain, domain, record.aspf, psl))
    r.aligned_dkim = any(_text(getattr(d, "result", "")) == "pass"
                         and aligned(getattr(d, "domain", None), domain, record.adkim, psl)
                         for d in dkim_results or ())
    r.policy = r.requested_policy
    if r.aligned_spf or r.aligned_dkim:
        r.result = "pass"
        r.reason = "aligned " + "+".join(n for n, ok in (("spf", r.aligned_spf),
                                                         ("dkim", r.aligned_dkim)) if ok)
        return r
    r.result = "fail"
    r.reason = "no aligned SPF or DKIM pass"
    if r.policy != "none" and record.pct < 100 and not rng() * 100 < record.pct:
        r.policy = _LOWER[r.policy]
        r.reason += "; outside pct=%d" % record.pct
    r.disposition = r.policy
    return r


_ORDER = {"fail": 0, "temperror": 1, "permerror": 2, "none": 3, "pass": 4}


def evaluate(from_domain, spf_result, spf_domain, dkim_results, lookup, rng=random.random,
             psl=None):
    """DMARC for a message (see the module docstring).  `from_domain` is one domain or
    a list of them (from_domains()); None or [] is permerror.  `dkim_results` are
    objects with .result ("pass", ...) and .domain (d=).  `rng` returns a float in
    [0, 1) for pct= sampling; `psl` a psl.PublicSuffixList (default: the system's)."""
    if isinstance(from_domain, (list, tuple)):
        domains = list(dict.fromkeys(str(d).lower().rstrip(".") for d in from_domain if d))
    else:
        domains = [from_domain] if from_domain else []
    if not domains:
        return DmarcResult("permerror", reason="no RFC5322.From domain")
    if len(domains) == 1:
        return _evaluate_one(domains[0], spf_result, spf_domain, dkim_results, lookup,
                             rng, psl)
    parts = [_evaluate_one(d, spf_result, spf_domain, dkim_results, lookup, rng, psl)
             for d in domains]
    # 6.6.1: the strictest policy among the failing checks; else the worst result
    worst = min(parts, key=lambda p: (_ORDER[p.result], -_STRICTNESS[p.disposition]))
    out = DmarcResult(worst.result, worst.header_from, worst.org_domain, worst.reason)
    for name in ("policy", "requested_policy", "disposition", "aligned_spf",
                 "aligned_dkim", "record", "record_domain", "pct"):
        setattr(out, name, getattr(worst, name))
    out.parts = parts
    return out


# -- the RFC5322.From domain ---------------------------------------------------------

def _from_values(message):
    """The unfolded values of every From field of a message (bytes) or a header list
    (bytes or str "Name: value" fields, as model.Envelope.headers holds them)."""
    if isinstance(message, (bytes, bytearray)):
        head = bytes(message).replace(b"\r\n", b"\n")
        end = head.find(b"\n\n")
        head = head if end < 0 else head[:end + 1]
        fields, current = [], None
        for line in head.split(b"\n"):
            if line[:1] in (b" ", b"\t") and current is not None:
                current += b"\n" + line
                continue
            if current is not None:
                fields.append(current)
            current = line if line else None
        if current is not None:
            fields.append(current)
    else:
        fields = list(message or ())
    out = []
    for field in fields:
        if isinstance(field, (bytes, bytearray)):
            field = bytes(field).decode("utf-8", "surrogateescape")
        name, colon, value = field.partition(":")
        if colon and name.strip().lower() == "from":        # obsolete "From :" too
            out.append(value.replace("\r", "").replace("\n", ""))
    return out


def _domains_of(value):
    """The domains of the addresses in one From value; None when malformed."""
    from email.utils import getaddresses
    try:
        pairs = getaddresses([value])
    except Exception:               # noqa: BLE001 - a parser failure is "malformed"
        return None
    domains = []
    for _name, addr in pairs:
        if not addr:
            continue
        local, at, domain = addr.rpartition("@")
        domain = _clean_domain(domain)
        if not at or not local or domain is None:
            return None
        domains.append(domain)
    return domains or None


def from_domains(message):
    """Every distinct RFC5322.From domain of a message (bytes) or header list, in
    order; [] when there is no From field or one of them does not parse."""
    values = _from_values(message)
    out = []
    for value in values:
        domains = _domains_of(value)
        if domains is None:
            return []
        out.extend(d for d in domains if d not in out)
    return out


def from_domain(message):
    """The RFC5322.From domain of a message (bytes) or header list, or None when there
    is none, it is malformed, or there are several From fields or domains."""
    values = _from_values(message)
    if len(values) != 1:
        return None
    domains = _domains_of(values[0])
    if not domains or len(set(domains)) != 1:
        return None
    return domains[0]

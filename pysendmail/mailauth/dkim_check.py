"""DKIM verification (RFC 6376, RFC 8301, RFC 8463): every DKIM-Signature of a message.

Role: the inbound checks call `verify_all(message, lookup)` from a worker thread and put
one `dkim=` result per signature in Authentication-Results (`[]`: the caller says
dkim=none).  Each DkimResult has .result, .domain (d=), .selector (s=), .algorithm (a=),
.identity (i=, or "@" + d), .header_b (a unique prefix of b=, 8 characters at least),
.reason (why it is not a pass), .testing (the key's t=y), .keybits, and .ar_text().

dkimpy does the parsing (tag lists, the message's header fields), canonicalization,
header selection and RSA arithmetic.  What it lacks is written here: Ed25519 through the
`cryptography` package (dkimpy wants PyNaCl), the key record checks it skips (k= against
a=, the key's h= and s=, t=s, a revoked key), From required in h=, l= beyond the body, a
limit on signatures per message, and results that tell failures apart.  Results:

  pass       the signature verifies
  fail       body hash or signature mismatch (the message was changed, or forged)
  neutral    the signature cannot be evaluated: a tag list that does not parse, a required
             tag missing, an unknown algorithm or canonicalization (RFC 8601 2.7.1)
  permerror  well formed but can never verify: no key record, a revoked or bad key, the key
             type is not a='s, i= outside d=, From not signed, expired (x=), l= too long
  policy     refused by local policy: rsa-sha1 or an RSA key under 1024 bits (RFC 8301),
             a signature past the first MAX_SIGNATURES (not checked)
  temperror  the key lookup failed for now (DNS SERVFAIL, timeout)

DNS: `lookup` is a mailauth.dns.Lookup (its .txt(); DnsTempError means temperror) or a
dkimpy-style dnsfunc(name, timeout=5) -> bytes or None that raises DnsTempError for a
temporary failure.  `dnsfunc_for(lookup)` gives dkimpy (e.g. ARC) a dnsfunc over a Lookup:
its DnsTempError passes through dkimpy, which would have turned its own DnsTimeoutError
into a plain failure.
"""
import base64
import hashlib
import re

from .dns import DnsTempError

MAX_SIGNATURES = 10
MIN_RSA_BITS = 1024
REQUIRED = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")
KEY_TYPES = {b"rsa-sha256": b"rsa", b"ed25519-sha256": b"ed25519"}


class DkimResult:
    """The verdict on one DKIM-Signature (see the module docstring)."""

    __slots__ = ("result", "domain", "selector", "algorithm", "identity", "header_b",
                 "reason", "testing", "keybits", "b")

    def __init__(self, result, domain="", selector="", algorithm="", identity="",
                 reason="", b=""):
        self.result, self.domain, self.selector = result, domain, selector
        self.algorithm, self.identity, self.reason, self.b = algorithm, identity, reason, b
        self.header_b = b[:8]
        self.testing, self.keybits = False, None

    def ar_text(self):
        """The `dkim=...` part of an Authentication-Results header (RFC 8601, 8616)."""
        out = ["dkim=" + self.result]
        if self.reason:
            out.append('reason="%s"' % self.reason.replace("\\", "\\\\").replace('"', "'"))
        for prop, value in (("header.d", self.domain), ("header.i", self.identity),
                            ("header.s", self.selector), ("header.a", self.algorithm),
                            ("header.b", self.header_b)):
            if value and all(c.isprintable() and c not in ' ;()"\\' for c in value):
                out.append("%s=%s" % (prop, value))
        return " ".join(out)

    def __repr__(self):
        return "DkimResult(%s d=%s s=%s a=%s b=%s%s)" % (
            self.result, self.domain, self.selector, self.algorithm, self.header_b,
            " (%s)" % self.reason if self.reason else "")


class _Verdict(Exception):
    def __init__(self, result, reason):
        super().__init__(reason)
        self.result, self.reason = result, reason


def _text(value):
    return re.sub(r"\s+", "", value.decode("utf-8", "replace")) if value else ""


def _unique_prefixes(results):
    """header.b: 8 characters of b=, more where two signatures share them (RFC 8616)."""
    for r in results:
        n = 8
        while n < len(r.b) and any(o is not r and o.b[:n] == r.b[:n] for o in results):
            n += 1
        r.header_b = r.b[:n]


# ---- DNS -------------------------------------------------------------------------------------

def _fetcher(lookup):
    """name (str, no trailing dot) -> [bytes]: the TXT records; DnsTempError passes."""
    if hasattr(lookup, "txt"):
        return lambda name: [t.encode("utf-8", "surrogateescape") for t in lookup.txt(name)]

    def call(name):
        value = lookup((name + ".").encode("ascii"), timeout=5)
        if value is None or value == b"" or value == "":
            return []
        return [value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")]
    return call


def dnsfunc_for(lookup):
    """dkimpy's dnsfunc(name, timeout=5) -> bytes or None, over a mailauth.dns.Lookup; a
    temporary failure raises DnsTempError (dkimpy lets it through: catch it)."""
    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        records = lookup.txt(name.rstrip("."))
        return records[0].encode("utf-8", "surrogateescape") if records else None
    return dnsfunc


# ---- the key record --------------------------------------------------------------------------

class _Key:
    __slots__ = ("ktype", "rsa", "ed25519", "bits", "testing", "strict")


def _parse_key(records, algorithm, name):
    """The first TXT record at `name` that is a DKIM key for `algorithm` -> _Key."""
    from dkim.util import InvalidTagValueList, parse_tag_value
    if not records:
        raise _Verdict("permerror", "no key for signature (%s)" % name)
    problem = None
    for record in records:
        try:
            tags = parse_tag_value(record)
        except InvalidTagValueList:
            problem = "key record does not parse"
            continue
        try:
            return _key_from_tags(tags, algorithm)
        except _Verdict as v:
            problem = v.reason
    raise _Verdict("permerror", problem)


def _key_from_tags(tags, algorithm):
    import binascii
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise _Verdict("permerror", "key record v= is not DKIM1")
    ktype = tags.get(b"k", b"rsa").lower()
    if ktype != KEY_TYPES[algorithm]:
        raise _Verdict("permerror", "key type %s does not match a=%s"
                       % (ktype.decode("ascii", "replace"), algorithm.decode()))
    if b"h" in tags and b"sha256" not in [h.strip().lower() for h in tags[b"h"].split(b":")]:
        raise _Verdict("permerror", "key record h= excludes sha256")
    if b"s" in tags and not {b"*", b"email"} & {s.strip().lower() for s in tags[b"s"].split(b":")}:
        raise _Verdict("permerror", "key not for email (s=)")
    p = re.sub(rb"\s+", b"", tags.get(b"p", b""))
    if b"p" not in tags:
        raise _Verdict("permerror", "key record without p=")
    if not p:
        raise _Verdict("permerror", "key revoked")
    try:
        raw = base64.b64decode(p, validate=True)
    except (binascii.Error, ValueError):
        raise _Verdict("permerror", "key p= is not base64") from None
    key = _Key()
    key.ktype, key.rsa, key.ed25519 = ktype, None, None
    flags = {f.strip().lower() for f in tags.get(b"t", b"").split(b":")}
    key.testing, key.strict = b"y" in flags, b"s" in flags
    if ktype == b"rsa":
        from dkim.crypto import UnparsableKeyError, parse_public_key
        try:
            key.rsa = parse_public_key(raw)
        except (UnparsableKeyError, TypeError, IndexError, ValueError):
            raise _Verdict("permerror", "RSA public key does not parse") from None
        key.bits = key.rsa["modulus"].bit_length()
    else:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        if len(raw) != 32:
            raise _Verdict("permerror", "Ed25519 public key is not 32 bytes")
        key.ed25519 = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        key.bits = 256
    return key


# ---- one signature ---------------------------------------------------------------------------

def _check_tags(tags):
    """Syntax and semantics of a DKIM-Signature's tags, before any DNS."""
    import dkim
    from dkim.canonicalization import (CanonicalizationPolicy,
                                       InvalidCanonicalizationPolicyError)
    for tag in REQUIRED:
        if tag not in tags:
            raise _Verdict("neutral", "signature without %s=" % tag.decode())
    algorithm = _text(tags[b"a"]).lower().encode()
    if algorithm == b"rsa-sha1":
        raise _Verdict("policy", "rsa-sha1 is not accepted (RFC 8301)")
    if algorithm not in KEY_TYPES:
        raise _Verdict("neutral", "unknown algorithm %s" % algorithm.decode("ascii", "replace"))
    try:
        policy = CanonicalizationPolicy.from_c_value(re.sub(rb"\s+", b"",
                                                            tags.get(b"c", b"simple/simple")))
    except InvalidCanonicalizationPolicyError:
        raise _Verdict("neutral", "unknown canonicalization %s" % _text(tags.get(b"c"))) from None
    try:
        dkim.validate_signature_fields(tags)
    except dkim.ValidationError as e:
        raise _Verdict("permerror", str(e)) from None
    signed = [h.strip().lower() for h in tags[b"h"].split(b":")]
    if b"from" not in signed:
        raise _Verdict("permerror", "From is not signed")
    for name in (tags[b"d"], tags[b"s"]):
        n = _text(name)
        if not n or not all(c.isalnum() or c in "-_." for c in n) or ".." in n:
            raise _Verdict("permerror", "bad d= or s= (%s)" % n)
    return algorithm, policy, signed


def _verify_one(headers, body, sig_header, tags, fetch, bodies):
    import dkim
    from dkim.crypto import DigestTooLargeError, RSASSA_PKCS1_v1_5_verify
    algorithm, policy, signed = _check_tags(tags)
    domain, selector = _text(tags[b"d"]).lower(), _text(tags[b"s"]).lower()
    name = "%s._domainkey.%s" % (selector, domain)
    try:
        records = fetch(name)
    except DnsTempError as e:
        raise _Verdict("temperror", "key lookup: %s" % e) from None
    key = _parse_key(records, algorithm, name)
    if key.strict and b"i" in tags:
        idomain = _text(tags[b"i"]).rpartition("@")[2].lower()
        if idomain != domain:
            raise _Verdict("permerror", "key has t=s and i= is a subdomain of d=")
    if key.ktype == b"rsa" and key.bits < MIN_RSA_BITS:
        raise _Verdict("policy", "RSA key of %d bits (RFC 8301)" % key.bits)
    # body
    length = int(tags[b"l"]) if b"l" in tags else None
    cbody = bodies.get(policy.body_algorithm)
    if cbody is None:
        cbody = bodies[policy.body_algorithm] = policy.canonicalize_body(body)
    if length is not None:
        if length > len(cbody):
            raise _Verdict("permerror", "l= is past the end of the body")
        cbody = cbody[:length]
    try:
        bh = base64.b64decode(re.sub(rb"\s+", b"", tags[b"bh"]))
    except ValueError:
        raise _Verdict("neutral", "bh= is not base64") from None
    if hashlib.sha256(cbody).digest() != bh:
        raise _Verdict("fail", "body hash mismatch")
    # header fields: an extra From is included, so a From added above fails (RFC 6376 8.15)
    include = list(signed) + [b"from"]
    h = hashlib.sha256()
    dkim.hash_headers(h, policy, policy.canonicalize_headers(headers), include, sig_header, tags)
    signature = base64.b64decode(re.sub(rb"\s+", b"", tags[b"b"]))
    if key.rsa is not None:
        try:
            ok = RSASSA_PKCS1_v1_5_verify(h, signature, key.rsa)
        except (TypeError, ValueError, DigestTooLargeError):
            ok = False
    else:
        from cryptography.exceptions import InvalidSignature
        try:
            key.ed25519.verify(signature, h.digest())
            ok = True
        except InvalidSignature:
            ok = False
    if not ok:
        raise _Verdict("fail", "signature did not verify")
    return key


def _result_for(headers, body, sig_header, fetch, bodies, skip=None):
    from dkim.util import InvalidTagValueList, parse_tag_value
    try:
        tags = parse_tag_value(sig_header[1])
    except InvalidTagValueList as e:
        return DkimResult("neutral", reason="signature does not parse (%s)" % e)
    d = _text(tags.get(b"d")).lower()
    result = DkimResult("pass", d, _text(tags.get(b"s")).lower(), _text(tags.get(b"a")).lower(),
                        _text(tags.get(b"i")) or ("@" + d if d else ""), b=_text(tags.get(b"b")))
    if skip:
        result.result, result.reason = "policy", skip
        return result
    try:
        key = _verify_one(headers, body, sig_header, tags, fetch, bodies)
        result.testing, result.keybits = key.testing, key.bits
    except _Verdict as v:
        result.result, result.reason = v.result, v.reason
    except Exception as e:          # noqa: BLE001 - one odd signature never stops the others
        result.result, result.reason = "permerror", "%s: %s" % (type(e).__name__, e)
    return result


def _count_signatures(message):
    head = re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]
    return len(re.findall(rb"(?im)^dkim-signature[ \t]*:", head))


def verify_all(message, lookup, max_signatures=MAX_SIGNATURES):
    """[DkimResult], one per DKIM-Signature of `message` (bytes, CRLF or LF), top first;
    [] when there is none.  `lookup`: a mailauth.dns.Lookup or a dnsfunc (see above)."""
    import dkim
    try:
        headers, body = dkim.rfc822_parse(message)
    except dkim.MessageFormatError as e:
        return [DkimResult("permerror", reason="message header does not parse: %s" % e)
                for _ in range(_count_signatures(message))]
    fetch = _fetcher(lookup)
    bodies = {}
    results = []
    for sig_header in (h for h in headers if h[0].lower() == b"dkim-signature"):
        skip = None if len(results) < max_signatures else \
            "not checked: over %d signatures" % max_signatures
        results.append(_result_for(headers, body, sig_header, fetch, bodies, skip))
    _unique_prefixes(results)
    return results

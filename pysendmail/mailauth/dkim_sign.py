"""DKIM signing of outbound mail (RFC 6376; rsa-sha256, and ed25519-sha256 of RFC 8463).

Role: the daemon calls `sign(message, keytable)` from a worker thread for mail leaving
from a hosted domain and prepends what it returns: one DKIM-Signature field per key the
key table (mailauth.keytable) has for the From domain, or None when it has none.

  * Canonicalization relaxed/relaxed unless told otherwise; t= is the signing time;
    no l= (a body length would let anyone append to the mail), no x=.
  * Signed header fields: those of SIGNED present in the message, each as often as it
    occurs, and From once more (oversigned: a second From cannot be added).
  * The From domain is taken from the message's From field unless the caller names one;
    a message with no From, several From fields, or From addresses in different domains
    is not signed.

dkimpy (`import dkim`) parses the message, canonicalizes, folds and hashes; RSA signs
with its own arithmetic.  dkimpy signs Ed25519 only through PyNaCl, so the Ed25519 key
here is the `cryptography` package's, handed to dkimpy's header generator behind a small
adapter.  A key or message dkimpy refuses raises SignError: the caller decides whether
the mail goes unsigned.
"""
import threading

RELAXED = b"relaxed/relaxed"

# RFC 6376 5.4.1's list (dkimpy's DKIM.SHOULD) and List-Unsubscribe-Post (RFC 8058 wants
# it signed), in no particular order: the message's own order is kept.
SIGNED = frozenset((
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"content-id",
    b"content-description", b"resent-date", b"resent-from", b"resent-sender", b"resent-to",
    b"resent-cc", b"resent-message-id", b"in-reply-to", b"references", b"list-id",
    b"list-help", b"list-unsubscribe", b"list-subscribe", b"list-post", b"list-owner",
    b"list-archive", b"list-unsubscribe-post"))
OVERSIGNED = (b"from",)


class SignError(ValueError):
    """The message or the key could not be used for signing."""


class _Ed25519:
    """What dkimpy's header generator expects of a PyNaCl SigningKey: sign(digest) with
    a .signature."""

    class _Signed:
        __slots__ = ("signature",)

    def __init__(self, key):
        self.key = key

    def sign(self, data):
        out = self._Signed()
        out.signature = self.key.sign(data)
        return out


_keys = {}
_keys_lock = threading.Lock()


def _private_key(pem, algorithm):
    """The signing object for a PEM key (cached: dkimpy's ASN.1 parse is pure Python)."""
    with _keys_lock:
        hit = _keys.get((pem, algorithm))
    if hit is not None:
        return hit
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise SignError("private key: %s" % e) from None
    if algorithm == b"ed25519-sha256" and isinstance(key, ed25519.Ed25519PrivateKey):
        out = _Ed25519(key)
    elif algorithm == b"rsa-sha256" and isinstance(key, rsa.RSAPrivateKey):
        from dkim.crypto import UnparsableKeyError, parse_private_key
        der = key.private_bytes(serialization.Encoding.DER,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        try:
            out = parse_private_key(der)
        except UnparsableKeyError as e:
            raise SignError("private key: %s" % e) from None
    else:
        raise SignError("a %s key cannot sign %s" % (type(key).__name__, algorithm.decode()))
    with _keys_lock:
        if len(_keys) > 64:
            _keys.clear()
        _keys[(pem, algorithm)] = out
    return out


def headers_to_sign(headers):
    """h= for a message's [(name, value)]: the SIGNED fields present (as often as they
    occur, in order), then the OVERSIGNED ones once more."""
    names = [name.lower() for name, _v in headers if name.lower() in SIGNED]
    return names + [n for n in OVERSIGNED if n in names]


def from_domain_of(headers):
    """The domain of the From field, or None (no From, several, or mixed domains)."""
    import email.utils
    froms = [v for n, v in headers if n.lower() == b"from"]
    if len(froms) != 1:
        return None
    value = froms[0].decode("utf-8", "surrogateescape").replace("\r\n", "").replace("\n", "")
    domains = {addr.rpartition("@")[2].strip().rstrip(".").lower()
               for _name, addr in email.utils.getaddresses([value]) if "@" in addr}
    return domains.pop() if len(domains) == 1 and "" not in domains else None


def sign_with(message, domain, selector, pem, algorithm="rsa-sha256", canonicalization=RELAXED,
              linesep=b"\r\n", now=None, _parsed=None):
    """One DKIM-Signature field (bytes, ending in `linesep`) for `message` with one key."""
    import base64
    import hashlib
    import time

    import dkim
    from dkim.canonicalization import (CanonicalizationPolicy,
                                       InvalidCanonicalizationPolicyError)
    algorithm = algorithm.encode() if isinstance(algorithm, str) else algorithm
    to_b = (lambda v: v.encode("ascii") if isinstance(v, str) else v)
    domain, selector = to_b(domain), to_b(selector)
    try:
        policy = CanonicalizationPolicy.from_c_value(to_b(canonicalization))
    except InvalidCanonicalizationPolicyError as e:
        raise SignError("canonicalization %r: %s" % (canonicalization, e)) from None
    pk = _private_key(pem, algorithm)
    signer = dkim.DKIM(None, signature_algorithm=algorithm, linesep=linesep)
    if _parsed is None:
        try:
            _parsed = dkim.rfc822_parse(message)
        except dkim.MessageFormatError as e:
            raise SignError(str(e)) from None
    signer.headers, signer.body = _parsed
    include = headers_to_sign(signer.headers)
    if b"from" not in include:
        raise SignError("no From field")
    signer.hasher = hashlib.sha256
    bodyhash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(signer.body)).digest())
    fields = [
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", policy.to_c_value()),
        (b"d", domain),
        (b"s", selector),
        (b"t", str(int(time.time() if now is None else now)).encode("ascii")),
        (b"h", b":".join(include)),
        (b"bh", bodyhash),
        (b"b", b"0" * 60),      # dkimpy's placeholder: b= folds onto its own line
    ]
    try:
        value = signer.gen_header(fields, include, policy, b"DKIM-Signature", pk)
    except dkim.DKIMException as e:
        raise SignError(str(e)) from None
    return b"DKIM-Signature: " + value


def sign(message, keytable, from_domain=None, canonicalization=RELAXED, linesep=b"\r\n",
         now=None):
    """The DKIM-Signature field(s) to prepend to `message` (bytes), one per key the key
    table has for the From domain (or `from_domain`), as bytes; None when no key applies."""
    import dkim
    try:
        parsed = dkim.rfc822_parse(message)
    except dkim.MessageFormatError as e:
        raise SignError(str(e)) from None
    if from_domain is None:
        from_domain = from_domain_of(parsed[0])
        if from_domain is None:
            return None
    keys = keytable.keys_for(from_domain)
    if not keys:
        return None
    return b"".join(sign_with(message, d, s, pem, algorithm, canonicalization, linesep, now,
                              _parsed=parsed) for d, s, pem, algorithm in keys)

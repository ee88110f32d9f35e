"""ARC (RFC 8617): verify a message's Authenticated Received Chain, and seal a message
we forward, both with dkimpy.

Role: the inbound checks report "arc=pass|fail|none" in Authentication-Results (and a
DMARC-failing message whose chain passes through a trusted sealer may be let through:
`ArcResult.domains` says who sealed); the outbound side adds one ARC set when it
forwards.  Runs in a worker thread; DNS goes through mailauth.dns.Lookup.

    r = verify(message_bytes, lookup)
    r.result        "none" (no ARC header field), "pass" or "fail"
    r.chain_length  the highest instance i= (0 without a chain)
    r.reason        dkimpy's words, or ours
    r.temporary     True when a DNS lookup failed temporarily: result is "fail" then,
                    and the caller should rather answer 4xx (or not seal) than record
                    cv=fail for good
    r.domains       the sealers' d= (ARC-Seal), instance 1 first, when the chain passes

    fields = seal(message_bytes, selector, domain, privkey, srv_id, auth_results_header)
      -> [b"ARC-Seal: ...", b"ARC-Message-Signature: ...", b"ARC-Authentication-Results: ..."]
    header fields as model.Envelope.headers holds them ("Name: value", LF-folded, no final
    LF), to prepend in that order; [] when dkimpy ends the chain instead (a message that
    already has a chain but no "arc=" result in `auth_results_header`).

What dkimpy (1.1.8) leaves to us, and this module adds:
  * its DNS callback cannot say "temporary": a timeout makes a signature invalid.  Ours
    raises DnsTempError through dkimpy (which does not catch it), so a SERVFAIL is told
    apart (`temporary`).
  * it does not bound the instance count (RFC 8617 4.2.1: at most 50) and lets some
    malformed input escape as IndexError/ValueError: both are "fail" here.
  * it reports a chain whose newest seal says cv=fail as None: "fail" here.
  * sealing reads the Authentication-Results fields of the message for `srv_id`; this
    module hands it only the one the caller gives (any other Authentication-Results
    field is left out of the copy dkimpy sees — none is signed by the AMS anyway), so a
    forged upstream field carrying our srv_id never reaches our ARC-Authentication-Results.
  * it reads only PKCS#1 PEM keys: a PKCS#8 key is converted here.  (It seals with
    rsa-sha256 only: no Ed25519 ARC.)
  * its logging goes to a private, silent logger (the reasons are in `reason`).
"""
from .dns import DnsTempError

MAX_INSTANCE = 50
_logger = None


class ArcResult:
    """The outcome of verifying an ARC chain (see the module docstring)."""

    __slots__ = ("result", "chain_length", "reason", "temporary", "domains")

    def __init__(self, result, chain_length=0, reason="", temporary=False, domains=()):
        self.result = result
        self.chain_length = chain_length
        self.reason = reason
        self.temporary = temporary
        self.domains = list(domains)

    def __repr__(self):
        return "ArcResult(%s, i=%d, %s)" % (self.result, self.chain_length, self.reason)


class ArcSealError(Exception):
    """The message cannot be sealed (no From field, a bad key, a malformed message)."""


def _quiet_logger():
    global _logger
    if _logger is None:
        import logging
        log = logging.Logger("pysendmail.mailauth.arc")     # outside the hierarchy
        log.addHandler(logging.NullHandler())
        log.propagate = False
        _logger = log
    return _logger


def dnsfunc_for(lookup):
    """dkimpy's TXT callback (name bytes -> the first record's bytes or None) over a
    Lookup; DnsTempError passes through dkimpy to verify()."""
    def get_txt(name, timeout=5):
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).decode("ascii", "replace")
        records = lookup.txt(name.rstrip("."))
        if not records:
            return None
        return records[0].encode("utf-8", "surrogateescape")
    return get_txt


def _b(value):
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def verify(message_bytes, lookup, minkey=1024):
    """Verify the ARC chain of a message (bytes, CRLF or LF line ends) -> ArcResult."""
    import dkim
    message = _b(message_bytes)
    try:
        a = dkim.ARC(message, logger=_quiet_logger(), minkey=minkey)
        count, _headers = a.sorted_arc_headers()
    except Exception as e:      # noqa: BLE001 - dkimpy's parser: a bad header block
        head = message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].lower()
        if b"arc-seal" not in head and b"arc-message-signature" not in head:
            return ArcResult("none", 0, "no ARC header fields (malformed header: %s)" % e)
        return ArcResult("fail", 0, "malformed message: %s" % e)
    if count == 0:
        return ArcResult("none", 0, "no ARC header fields")
    if count > MAX_INSTANCE:
        return ArcResult("fail", count, "instance i=%d over %d" % (count, MAX_INSTANCE))
    try:
        cv, data, reason = a.verify(dnsfunc=dnsfunc_for(lookup))
    except DnsTempError as e:
        return ArcResult("fail", count, "DNS: %s" % e, temporary=True)
    except dkim.DKIMException as e:
        return ArcResult("fail", count, str(e))
    except Exception as e:      # noqa: BLE001 - malformed input dkimpy did not foresee
        return ArcResult("fail", count, "malformed ARC set: %s: %s" % (type(e).__name__, e))
    if cv == dkim.CV_Pass:
        domains = [_text(d.get("as-domain", b"")) for d in reversed(data)]
        return ArcResult("pass", count, reason, domains=domains)
    return ArcResult("fail", count, reason)


def _text(value):
    return bytes(value).decode("ascii", "replace") if isinstance(value, (bytes, bytearray)) \
        else str(value)


def _without_auth_results(message):
    """The message without its Authentication-Results fields (LF line ends kept)."""
    lines = message.split(b"\n")
    out, skipping, i = [], False, 0
    for i, line in enumerate(lines):
        if line in (b"", b"\r"):
            break
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() == b"authentication-results"
        if not skipping:
            out.append(line)
    else:
        i = len(lines)
    return b"\n".join(out + lines[i:])


def _pkcs1(privkey):
    """The key as dkimpy reads it: PEM "RSA PRIVATE KEY" (PKCS#1) with LF line ends;
    a PKCS#8 "PRIVATE KEY" is converted (with cryptography, which dkimpy needs)."""
    key = _b(privkey).replace(b"\r\n", b"\n")
    if b"-----BEGIN PRIVATE KEY-----" in key:
        from cryptography.hazmat.primitives import serialization
        try:
            loaded = serialization.load_pem_private_key(key, password=None)
            key = loaded.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption())
        except (ValueError, TypeError) as e:
            raise ArcSealError("unusable private key: %s" % e) from None
    return key


def seal(message_bytes, selector, domain, privkey, srv_id, auth_results_header,
         timestamp=None, include_headers=None):
    """One ARC set for a message we forward (see the module docstring).  `privkey` is
    a PEM private key (RSA), `auth_results_header` our Authentication-Results field or
    its value ("srv-id; spf=pass ...; arc=pass"); the chain status cv= comes from its
    "arc=" result.  ArcSealError when dkimpy refuses."""
    import dkim
    ar = _text(auth_results_header).strip()
    name, colon, value = ar.partition(":")
    if colon and name.strip().lower() == "authentication-results":
        ar = value.strip()
    ar = " ".join(ar.split())                   # unfolded: one field, one line
    message = _without_auth_results(_b(message_bytes))
    message = b"Authentication-Results: " + ar.encode("utf-8") + b"\r\n" + message
    try:
        lines = dkim.arc_sign(message, _b(selector), _b(domain), _pkcs1(privkey), _b(srv_id),
                              include_headers=[_b(h) for h in include_headers or ()] or None,
                              timestamp=timestamp, logger=_quiet_logger(), linesep=b"\n")
    except dkim.DKIMException as e:
        raise ArcSealError(str(e)) from None
    except (ValueError, IndexError, UnicodeError) as e:
        raise ArcSealError("%s: %s" % (type(e).__name__, e)) from None
    return [line.rstrip(b"\n").replace(b"\r", b"") for line in lines]

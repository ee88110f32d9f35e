"""The Authentication-Results header (RFC 8601): built with `authres`, and the forged ones
taken out.

Role: turn the outcomes of the SPF, DKIM, DMARC and ARC checks into one header field
whose authserv-id is this host's name ($j), folded one method per line; and remove from
an incoming message every Authentication-Results that claims our authserv-id: only we
may speak in our name (RFC 8601 5).
Headers are in the queue's form: bytes b"Name: value" with LF inside folded values.
"""

NAME = b"authentication-results"


def authserv_id_of(value):
    """The authserv-id of an Authentication-Results value (text after the colon): its
    first token, comments skipped; "" when there is none."""
    from ..addr import strip_comments
    head = strip_comments(value).split(";", 1)[0].split()
    return head[0].lower().rstrip(".") if head else ""


def strip_forged(headers, authserv_id):
    """headers ([bytes]) without the Authentication-Results fields that carry our
    authserv-id; returns (kept, removed)."""
    ours = authserv_id.lower().rstrip(".")
    kept, removed = [], []
    for h in headers:
        name, colon, value = h.partition(b":")
        if colon and name.strip().lower() == NAME and \
                authserv_id_of(value.decode("utf-8", "replace")) == ours:
            removed.append(h)
        else:
            kept.append(h)
    return kept, removed


def build(authserv_id, spf=None, mailfrom=None, helo=None, helo_name=None, dkim=None,
          dmarc=None, arc=None):
    """The header field (bytes, folded) for these outcomes.  spf/helo: SPF results (with
    .result and maybe .smtp_comment) for MAIL FROM `mailfrom` and HELO `helo_name`; dkim:
    a list of DKIM results (.result, .domain, .selector, .header_b, .reason), [] for an
    unsigned message (dkim=none), None when not checked; dmarc (.result, .header_from,
    .requested_policy/.policy); arc (.result, .reason).  Nothing checked: "none"."""
    import authres
    import authres.arc
    import authres.dmarc
    prop = authres.AuthenticationResultProperty
    results = []
    if spf is not None:
        results.append(authres.SPFAuthenticationResult(
            result=spf.result, result_comment=getattr(spf, "smtp_comment", None) or None,
            smtp_mailfrom=mailfrom or None))
    if helo is not None:
        results.append(authres.SPFAuthenticationResult(
            result=helo.result, smtp_helo=helo_name or None))
    for d in dkim or ():
        r = authres.DKIMAuthenticationResult(
            result=d.result, reason=getattr(d, "reason", None) or None,
            header_d=d.domain or None, header_s=getattr(d, "selector", None) or None)
        header_b = getattr(d, "header_b", None)
        if header_b:
            r.properties.append(prop("header", "b", header_b))
        results.append(r)
    if dkim is not None and not dkim:
        results.append(authres.DKIMAuthenticationResult(result="none"))
    if arc is not None:
        results.append(authres.arc.ARCAuthenticationResult(
            result=arc.result, reason=getattr(arc, "reason", None) or None))
    if dmarc is not None:
        r = authres.dmarc.DMARCAuthenticationResult(
            result=dmarc.result, header_from=getattr(dmarc, "header_from", None) or None)
        policy = getattr(dmarc, "requested_policy", None) or getattr(dmarc, "policy", None)
        if policy:
            r.properties.append(prop("policy", "dmarc", policy))
        results.append(r)
    if not results:
        results.append(authres.NoneAuthenticationResult())
    # one method per line (authres' own text for each)
    text = "Authentication-Results: %s;\n\t%s" % (authserv_id,
                                                   ";\n\t".join(str(r) for r in results))
    return text.encode("utf-8", "surrogateescape")

"""The delivery triple: what ruleset 0 resolves an address to.

A rewriting result that starts with `$#` names the mailer; `$@` the host and `$:` the
user follow (Sendmail's buildaddr). `resolve` splits such a token list into
(mailer, host or None, user) as text; the router and `-bt`'s /parse use it.
"""
from pysendmail.config.tokenize import DEFAULT_OPERATOR_CHARS, Meta, detokenize


def resolve(tokens, spacesub=" ", operator_chars=DEFAULT_OPERATOR_CHARS):
    """Split a "$# mailer $@ host $: user" result -> (mailer, host, user),
    or None when *tokens* does not start with $#."""
    if not tokens or not (isinstance(tokens[0], Meta) and tokens[0] == "$#"):
        return None
    parts = {"$#": [], "$@": None, "$:": None}
    cur = parts["$#"]
    for tok in tokens[1:]:
        if isinstance(tok, Meta) and tok in ("$@", "$:"):
            cur = parts[tok] = []
        else:
            cur.append(tok)
    mailer = detokenize(parts["$#"], spacesub, operator_chars)
    host = parts["$@"]
    host = None if host is None else detokenize(host, spacesub, operator_chars)
    user = detokenize(parts["$:"] or [], spacesub, operator_chars)
    return mailer, host, user

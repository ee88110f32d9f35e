"""DKIM signing and ARC sealing of mail as it leaves by SMTP.

Role: the SMTP agent's last touch on a message before DATA.  Signing happens here, at
the door, not when the message is queued, because everything before it may still change
the bytes: the mailer's header rewriting (masquerading, S=/R= rulesets) and the 8-bit to
7-bit conversion for a server without 8BITMIME.  Each delivery attempt signs anew (a
few hundred microseconds for RSA-2048).

  * DKIM (mailauth.dkim_sign): one DKIM-Signature per key the key table has for the
    From domain (O DKIMKeyTable, default ETC/dkim/keytable; see sendmail.cf(5)).
  * ARC (mailauth.arc.seal): a message our checks looked at carries our own
    Authentication-Results (authserv-id $j) as its first field; when it leaves again
    (an alias or .forward to another host) it gets an ARC set, signed with the key table's RSA key
    for $j's domain (or its parent domain), so the next hop can trust our results.

Mail to the local post office (LMTP) is neither signed nor sealed.  A key that cannot be
used is logged and the mail goes unsigned, never held back.
"""
import os

from ..mailauth.results import authserv_id_of


class OutboundAuth:
    """The key table and the work of one queue run's agent (loaded on first use)."""

    def __init__(self, options, hostname, log):
        self.hostname = hostname
        self.log = log
        self.keytable = None
        self.error = None
        from ..mailauth import keytable as kt
        path = options.get("DKIMKeyTable") or kt.default_path()
        if path and os.path.exists(path):
            try:
                self.keytable = kt.KeyTable.load(path)
            except (OSError, kt.KeyTableError) as e:
                self.error = str(e)
                log.err(None, "DKIMKeyTable %s: %s" % (path, e))

    def __bool__(self):
        return bool(self.keytable)

    def apply(self, headers, read_body, qid=None):
        """headers: the header block as sent (LF line ends, each field ending in LF);
        read_body(): the body bytes (LF), read only when there is something to sign or
        seal.  Returns the header block with DKIM-Signature and ARC fields on top, as this
        message and the key table call for."""
        import dkim
        from ..mailauth import arc, dkim_sign
        head = _crlf(headers)
        try:
            domain = dkim_sign.from_domain_of(dkim.rfc822_parse(head + b"\r\n")[0])
        except dkim.MessageFormatError:
            domain = None
        keys = domain is not None and self.keytable.keys_for(domain)
        ours = _own_results(headers, self.hostname)
        arc_key = self._arc_key() if ours is not None else None
        if not keys and arc_key is None:
            return headers                  # most mail: the body is not even read
        message = head + b"\r\n" + _crlf(read_body())
        if keys:
            try:
                signature = dkim_sign.sign(message, self.keytable, from_domain=domain,
                                           linesep=b"\r\n")
            except dkim_sign.SignError as e:
                self.log.warning(qid, "DKIM signing failed: %s" % e)
                signature = None
            if signature:
                headers = signature.replace(b"\r\n", b"\n") + headers
                message = signature + message
        if arc_key is not None:
            domain, selector, pem = arc_key
            try:
                sealed = arc.seal(message, selector, domain, pem, self.hostname, ours)
            except arc.ArcSealError as e:
                self.log.warning(qid, "ARC sealing failed: %s" % e)
                sealed = None
            if sealed:
                headers = b"".join(h + b"\n" for h in sealed) + headers
        return headers

    def _arc_key(self):
        names = [self.hostname]
        if self.hostname.count(".") >= 2:
            names.append(self.hostname.split(".", 1)[1])
        for name in names:
            for domain, selector, pem, algorithm in self.keytable.keys_for(name):
                if algorithm.startswith("rsa"):
                    return domain, selector, pem
        return None


def _crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _own_results(headers, hostname):
    """Our Authentication-Results field (unfolded text) when it is the block's first
    field, else None.  Only the daemon's checks put one there, above its own Received;
    one that a client or a local user wrote is always below a Received of ours."""
    lines = headers.split(b"\n")
    name, colon, value = lines[0].partition(b":")
    if not colon or name.strip().lower() != b"authentication-results" or \
            authserv_id_of(value.decode("utf-8", "replace")) != hostname.lower().rstrip("."):
        return None
    field = lines[0]
    for line in lines[1:]:
        if line[:1] not in (b" ", b"\t"):
            break
        field += b" " + line.strip()
    return field.decode("utf-8", "replace")

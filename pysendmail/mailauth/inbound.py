"""The inbound checks of one received message: SPF (MAIL FROM and HELO), DKIM (every
signature), ARC and DMARC, their Authentication-Results header, and the optional
refusal.

Role: what the SMTP daemon runs at the end of a message (in a thread of its pool: the
checks wait on DNS and dkimpy is synchronous), before the milters see it.  Each check is
the module of its own (mailauth.spf, .dkim_check, .arc, .dmarc); a check that breaks
(a bug, an unexpected answer) reports temperror and is logged, never loses the message.

Enforcement is the admin's choice (O AuthReject=): by default the results are only
written into the header.  "spf" refuses a message whose SPF result for MAIL FROM is
fail (the domain's "-all") with "550 5.7.23"; "dmarc" refuses a DMARC fail whose
applicable policy (after pct) is reject with "550 5.7.1"; "dmarc-quarantine" also holds
a DMARC fail with policy quarantine in the queue (mailq -qQ).
"""
CHECKS = ("spf", "dkim", "arc", "dmarc")


class Outcome:
    """header: the Authentication-Results field (bytes); reply: (code, enhanced, text)
    when the message is to be refused, else None; hold: a quarantine reason or None;
    log: a summary line; results: {check: its result object}."""
    __slots__ = ("header", "reply", "hold", "log", "results")

    def __init__(self, header, reply=None, hold=None, log="", results=None):
        self.header, self.reply, self.hold, self.log = header, reply, hold, log
        self.results = results or {}


class _Temp:
    """A check that failed in an unexpected way."""
    def __init__(self, reason):
        self.result, self.reason, self.domain, self.smtp_comment = "temperror", reason, None, None


def parse_list(text):
    """'spf, dkim dmarc' -> frozenset of known checks ('none', '' -> empty; 'all')."""
    words = {w.strip().lower() for w in (text or "").replace(",", " ").replace("+", " ").split()}
    if "all" in words:
        return frozenset(CHECKS)
    return frozenset(w for w in words if w in CHECKS)


def message_bytes(headers, body):
    """Queue-form headers ([bytes], LF inside) and an LF body as wire-form bytes (CRLF)."""
    head = b"\r\n".join(h.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for h in headers)
    return head + b"\r\n\r\n" + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class InboundChecks:
    """The daemon's checker (one per worker; thread-safe: the lookup is)."""

    def __init__(self, hostname, lookup, reject=(), log=None):
        self.hostname, self.lookup = hostname, lookup
        self.reject = frozenset(reject)
        self._log = log

    def _guard(self, name, func, *args):
        try:
            return func(*args)
        except Exception as e:       # a check's bug or a surprise: temperror, logged
            if self._log is not None:
                self._log("auth check %s: %s: %s" % (name, type(e).__name__, e))
            return _Temp("%s: %s" % (type(e).__name__, e))

    def run(self, checks, ip, helo, mail_from, headers, body):
        """checks: a set from parse_list; ip: the client's address; helo: its HELO name;
        mail_from: the envelope sender ("" for <>); headers ([bytes]) and body (bytes) of
        the message as received.  Returns an Outcome."""
        from . import results as res
        lookup, found = self.lookup, {}
        spf = helo_spf = None
        if "spf" in checks:
            from . import spf as spfmod
            if helo:
                helo_spf = self._guard("spf", spfmod.check_helo, ip, helo, lookup,
                                       self.hostname)
            spf = self._guard("spf", spfmod.check_host, ip, mail_from, helo, lookup,
                              self.hostname)
            found["spf"] = spf
        message = message_bytes(headers, body) if checks & {"dkim", "arc", "dmarc"} else b""
        dkim = None
        if "dkim" in checks or "dmarc" in checks:
            from . import dkim_check
            dkim = self._guard("dkim", dkim_check.verify_all, message, lookup)
            if isinstance(dkim, _Temp):
                dkim = [dkim]
            found["dkim"] = dkim
        arc = None
        if "arc" in checks:
            from . import arc as arcmod
            arc = found["arc"] = self._guard("arc", arcmod.verify, message, lookup)
        dmarc = None
        if "dmarc" in checks:
            from . import dmarc as dmarcmod
            # every From domain: a second From field must not escape the policy
            from_domain = self._guard("dmarc", dmarcmod.from_domains, message)
            if isinstance(from_domain, _Temp):
                from_domain = None
            spf_domain = _domain(mail_from) or (helo or "")
            dmarc = found["dmarc"] = self._guard(
                "dmarc", dmarcmod.evaluate, from_domain,
                spf.result if spf is not None else "none", spf_domain, dkim or [], lookup)
        header = res.build(self.hostname, spf=spf, mailfrom=mail_from or None,
                           helo=helo_spf, helo_name=helo,
                           dkim=dkim if "dkim" in checks else None, dmarc=dmarc, arc=arc)
        reply = hold = None
        if spf is not None and spf.result == "fail" and "spf" in self.reject:
            reply = (550, "5.7.23", "SPF validation failed for %s%s" % (
                _domain(mail_from) or helo or "",
                ": " + spf.explanation if getattr(spf, "explanation", None) else ""))
        elif dmarc is not None and dmarc.result == "fail":
            policy = getattr(dmarc, "policy", None)
            if policy == "reject" and "dmarc" in self.reject:
                reply = (550, "5.7.1", "Rejected by DMARC policy for %s"
                         % (getattr(dmarc, "header_from", None) or "the From domain"))
            elif policy == "quarantine" and "dmarc-quarantine" in self.reject:
                hold = "DMARC policy quarantine for %s" % getattr(dmarc, "header_from", "")
        summary = ", ".join("%s=%s" % (name, _result_text(found[name]))
                            for name in CHECKS if name in found)
        return Outcome(header, reply, hold, summary, found)


def _domain(address):
    return address.rpartition("@")[2].strip("<>").lower() if address and "@" in address else ""


def _result_text(value):
    if isinstance(value, list):
        return "+".join(v.result for v in value) if value else "none"
    return getattr(value, "result", "none")

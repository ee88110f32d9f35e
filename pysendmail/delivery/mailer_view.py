"""A message's addresses as one mailer writes them: the envelope sender and header fields.

Sendmail writes every address through the mailer's rewriting (remotename()): the
envelope sender ($g of the From_ line and Return-Path) through rulesets 3, 1, the
mailer's S= envelope ruleset and 4; each address of a sender header field (From:,
Sender:, Reply-To:, ...) through 3, 1, the S= header ruleset, 4, and of a recipient
field (To:, Cc:, ...) through 3, 2, the R= header ruleset, 4, keeping the phrase and
comments around it.  That is where MASQUERADE_AS and always_add_domain take effect.
`MailerView(rules, name)` does it for the cf mailer *name*; a mailer the cf does not
define (or no cf rules) leaves the message as queued.  Shared by the delivery agents.
"""
from .header_rewrite import rewrite_headers

MEMO_SIZE = 4096    # rewritten addresses a MailerView remembers

# The queue's mailer names and the cf's.
CF_NAMES = {"file": "*file*", "include": "*include*"}


class MailerView:
    def __init__(self, rules, mailer_name):
        self.rules = rules
        self.mailer = rules.mailer(CF_NAMES.get(mailer_name, mailer_name)) if rules else None
        self.tempfail = False       # a map failed for now while rewriting
        self._memo = {}             # (address, sender, header) -> rewritten text

    def _remotename(self, addr, sender, header, canonical=False):
        """rules.remotename, remembered: a queue run rewrites the same few addresses
        (the same sender, the same list) again and again. A temporary map failure is
        never remembered."""
        key = (addr, sender, header)
        text = self._memo.get(key)
        if text is None:
            text, rcode = self.rules.remotename(addr, self.mailer, sender, header,
                                                canonical=canonical)
            if rcode == 75:
                self.tempfail = True
            elif len(self._memo) < MEMO_SIZE:
                self._memo[key] = text
        return text

    def sender(self, addr):
        """The envelope sender as this mailer writes it ("" stays "")."""
        if not addr or self.mailer is None:
            return addr
        return self._remotename(addr, True, False, canonical=True) or addr

    def headers(self, headers):
        """The header fields (raw bytes, Envelope.headers) with their addresses rewritten."""
        if self.mailer is None:
            return headers

        def rewrite(element, sender):
            return self._remotename(element, sender, True)

        limit = self.mailer.field("L")
        limit = int(limit) if limit and limit.strip().isdigit() else None
        return rewrite_headers(headers, rewrite, line_limit=limit)

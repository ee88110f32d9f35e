"""SMTP replies: the Reply value, its wire form, and Sendmail 8.17's texts.

`Reply(code, enhanced, text)` is what a server says: a three-digit code, an
RFC 3463 enhanced status code (or None: EHLO/HELO/greeting lines carry none in
Sendmail), and one line of text or a list of lines. `Reply.to_bytes()` gives
the CRLF-terminated wire form ("250-..." continuation lines, "250 ..." last).
A reply line is at most 512 octets, CRLF included (RFC 5321 4.5.3.1.5): a
longer text is cut there, never inside a UTF-8 sequence.

The functions below build the replies whose wording follows Sendmail 8.17's
srvrsmtp.c, so that both the core (which rejects bad syntax and bad sequence
itself) and the drivers (which answer accepted commands) say the same thing.
Pure code: no I/O, no imports beyond the standard language.
"""


MAX_REPLY_LINE = 512     # RFC 5321 4.5.3.1.5, CRLF included


def _cut(line, room):
    """`line` (bytes) cut to at most `room` octets, at a UTF-8 character start."""
    if len(line) <= room:
        return line
    end = room
    while end > 0 and (line[end] & 0xC0) == 0x80:
        end -= 1
    return line[:end]


class Reply:
    """One SMTP reply. `text` is a str (one line) or a list of str (multi-line)."""

    __slots__ = ("code", "enhanced", "text")

    def __init__(self, code, enhanced=None, text=""):
        code = int(code)
        if not 200 <= code <= 599:
            raise ValueError("bad SMTP reply code %r" % (code,))
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def lines(self):
        if isinstance(self.text, (list, tuple)):
            return list(self.text) or [""]
        return [self.text]

    @property
    def positive(self):
        return self.code < 400

    @property
    def intermediate(self):
        return 300 <= self.code < 400

    @property
    def transient(self):
        return 400 <= self.code < 500

    @property
    def permanent(self):
        return self.code >= 500

    def to_bytes(self, enhanced=True):
        """The wire form; enhanced=False leaves the RFC 3463 code out."""
        text = self.text
        if type(text) is str:           # one line, the usual case
            return self._line(" ", text, enhanced)
        lines = self.lines
        last = len(lines) - 1
        return b"".join(self._line(" " if i == last else "-", str(line), enhanced)
                        for i, line in enumerate(lines))

    def _line(self, sep, text, enhanced):
        """One reply line: code, separator ("-" or " "), enhanced code, text, CRLF."""
        if self.enhanced and enhanced:
            head = ("%d%s%s " % (self.code, sep, self.enhanced)).encode("ascii", "replace")
        else:
            head = b"%d%s" % (self.code, sep.encode())
        if "\r" in text or "\n" in text:  # a reply line never carries a line break of its own
            text = text.replace("\r", " ").replace("\n", " ")
        body = text.encode("utf-8", "surrogateescape")
        if len(head) + len(body) > MAX_REPLY_LINE - 2:
            body = _cut(body, MAX_REPLY_LINE - 2 - len(head))
        return head + body + b"\r\n"

    def __str__(self):
        return self.to_bytes().decode("utf-8", "replace").rstrip("\r\n")

    def __eq__(self, other):
        return (isinstance(other, Reply) and self.code == other.code
                and self.enhanced == other.enhanced and self.lines == other.lines)

    def __hash__(self):
        return hash((self.code, self.enhanced, tuple(self.lines)))

    def __repr__(self):
        return "Reply(%d, %r, %r)" % (self.code, self.enhanced, self.text)


def is_status(text):
    """An RFC 3463 enhanced status code ("5.7.1"): class 2, 4 or 5, then two numbers."""
    parts = (text or "").split(".")
    return (len(parts) == 3 and parts[0] in ("2", "4", "5")
            and all(p.isdigit() and 0 < len(p) <= 3 for p in parts))


def parse(text):
    """A reply written as text ("550 5.7.1 No", lines joined by CRLF or LF) as a Reply:
    the first line's code, and its enhanced code, taken off every line that repeats it."""
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    enhanced, texts = None, []
    for i, line in enumerate(lines):
        rest = line[4:]
        word, _, tail = rest.partition(" ")
        if i == 0 and is_status(word):
            enhanced = word
        texts.append(tail if enhanced is not None and word == enhanced else rest)
    return Reply(int(lines[0][:3]), enhanced, texts if len(texts) > 1 else texts[0])


def show(text, limit=203):
    """A client-supplied string as Sendmail echoes it (shortenstring, MAXSHORTSTR):
    control characters made visible, long strings cut in the middle."""
    if len(text) <= limit and text.isascii() and text.isprintable():
        return text                 # the usual case: nothing to show differently
    text = "".join(c if " " <= c != "\x7f" and not "\udc80" <= c <= "\udcff"
                   else "?" if c > "\x7f" else "^" + chr((ord(c) + 64) & 0x7F)
                   for c in text)
    if len(text) > limit:
        half = (limit - 3) // 2
        text = text[:half] + "..." + text[-half:]
    return text


# --- replies to accepted commands (the driver's side) ------------------------

def greeting(hostname, product, date):
    return Reply(220, None, "%s ESMTP %s; %s" % (hostname, product, date))


def helo_ok(hostname, peer):
    return Reply(250, None, "%s Hello %s, pleased to meet you" % (hostname, peer))


def ehlo_ok(hostname, peer, keywords):
    return Reply(250, None, ["%s Hello %s, pleased to meet you" % (hostname, peer)]
                 + list(keywords))


def sender_ok(raw):
    return Reply(250, "2.1.0", "%s... Sender ok" % show(raw))


def recipient_ok(raw):
    return Reply(250, "2.1.5", "%s... Recipient ok" % show(raw))


def start_data():
    return Reply(354, None, "End data with <CR><LF>.<CR><LF>")


def accepted(qid):
    return Reply(250, "2.0.0", "%s Message accepted for delivery" % qid)


def chunk_ok(size):
    return Reply(250, "2.0.0", "%d octets received" % size)


def noop_ok():
    return Reply(250, "2.0.0", "OK")


def reset_ok():
    return Reply(250, "2.0.0", "Reset state")


def closing(hostname):
    return Reply(221, "2.0.0", "%s closing connection" % hostname)


def vrfy_cannot():
    return Reply(252, "2.5.2", "Cannot VRFY user; try RCPT to attempt delivery (or try finger)")


def expn_refused():
    return Reply(502, "5.7.0", "Sorry, we do not allow this operation")


def tls_ready():
    return Reply(220, "2.0.0", "Ready to start TLS")


def auth_ok():
    return Reply(235, "2.0.0", "OK Authenticated")


def auth_failed():
    return Reply(535, "5.7.0", "authentication failed")


def tempfail():
    return Reply(451, "4.3.0", "Please try again later")


def lost_input(hostname, peer):
    return Reply(421, "4.4.1", "%s Lost input channel from %s" % (hostname, peer))


HELP_TOPICS = {
    "": [
        "This is %(product)s",
        "Topics:",
        "\tHELO\tEHLO\tMAIL\tRCPT\tDATA\tBDAT",
        "\tRSET\tNOOP\tQUIT\tHELP\tVRFY\tEXPN",
        "For more info use \"HELP <topic>\".",
        "For local information send email to Postmaster at your site.",
    ],
    "HELO": ["HELO <hostname>", "\tIntroduce yourself."],
    "EHLO": ["EHLO <hostname>", "\tIntroduce yourself, and request extended SMTP mode."],
    "MAIL": ["MAIL FROM: <sender> [ <parameters> ]",
             "\tSpecifies the sender.  Parameters are ESMTP extensions:",
             "\tSIZE=<n> BODY=7BIT|8BITMIME SMTPUTF8 RET=FULL|HDRS ENVID=<xtext>"],
    "RCPT": ["RCPT TO: <recipient> [ <parameters> ]",
             "\tSpecifies the recipient.  Parameters are ESMTP extensions:",
             "\tNOTIFY=NEVER|SUCCESS,FAILURE,DELAY ORCPT=<type>;<xtext>"],
    "DATA": ["DATA", "\tFollowing text is collected as the message.",
             "\tEnd with a single dot."],
    "BDAT": ["BDAT <size> [LAST]", "\tSends <size> octets of the message (CHUNKING)."],
    "RSET": ["RSET", "\tResets the system."],
    "NOOP": ["NOOP", "\tDo nothing."],
    "QUIT": ["QUIT", "\tExit sendmail (SMTP)."],
    "HELP": ["HELP [ <topic> ]", "\tThe HELP command gives help info."],
    "VRFY": ["VRFY <recipient>", "\tVerify an address."],
    "EXPN": ["EXPN <recipient>", "\tExpand an address."],
}


def help_reply(topic, product):
    """Sendmail's helpfile format: 214-2.0.0 lines, then 214 2.0.0 End of HELP info."""
    lines = HELP_TOPICS.get(topic.strip().upper())
    if lines is None:
        return Reply(504, "5.3.0", "HELP topic \"%.10s\" unknown" % show(topic.strip()))
    return Reply(214, "2.0.0", [line % {"product": product} for line in lines]
                 + ["End of HELP info"])

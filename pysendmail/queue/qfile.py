"""The control file (qf) format: a versioned, line-oriented text a person can read.

    V pysendmail-qf 1          format and version (first line)
    I 6AQEjQR0019689           queue id
    T 1795704326               queued at (epoch seconds)
    K 0 / N 0 / W 0            last attempt, attempts so far, next attempt due
    P 30025                    priority (Sendmail's: size + class + recipients)
    u 0 root                   uid and login of the submitter
    F Cron+20Daemon            full name of the sender (-F)
    S alice@example.com        envelope sender ("<>" is the null sender)
    B 8BITMIME / Z envid / X hdrs / E m     body type, DSN ENVID, DSN RET, error mode
    p proto / s relay / Q reason / w 1      protocol, relay ($_), hold reason, delay warned
    M name value               a macro kept with the message
    R key=value ...            a recipient: addr state notify orcpt mailer host user
                               status attempts parent owner reported address diag
    H Name: value              a header; folded lines follow, starting with blanks
    .                          end of file: a file without it is incomplete

Values are xtext-encoded (RFC 3461): every byte outside `!`..`~`, and `+` and
`=`, is written `+HH`. So no value can contain a space, a newline or a forged
field, whatever an address or a header holds.
"""
from ..model import Envelope, Recipient

VERSION_LINE = b"V pysendmail-qf 1"

_SAFE = frozenset(range(33, 127)) - {ord("+"), ord("=")}
_SAFE_BYTES = bytes(sorted(_SAFE))


def xtext(value):
    """Encode a str (or bytes) as xtext."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    unsafe = raw.translate(None, _SAFE_BYTES)       # what is left once safe bytes go
    if not unsafe:
        return raw.decode("ascii")
    # one replace per distinct unsafe byte ("+" first: the others bring in "+")
    if 0x2B in unsafe:
        raw = raw.replace(b"+", b"+2B")
    for b in set(unsafe):
        if b != 0x2B:
            raw = raw.replace(bytes((b,)), b"+%02X" % b)
    return raw.decode("ascii")


def unxtext(text):
    if "+" not in text:
        return text
    parts = text.encode("ascii").split(b"+")
    out = bytearray(parts[0])
    for part in parts[1:]:
        try:
            out.append(int(part[:2], 16))
            out += part[2:]
        except ValueError:              # not a +HH: kept as it stands
            out += b"+" + part
    return out.decode("utf-8", "surrogateescape")


_RCPT_FIELDS = ("addr", "state", "notify", "orcpt", "mailer", "host", "user",
                "status", "attempts", "parent", "owner", "reported", "address", "diag")

# Scalar envelope fields: letter -> (attribute, is_int)
_SCALARS = (
    ("I", "qid", False), ("T", "created", True), ("K", "last_attempt", True),
    ("N", "attempts", True), ("W", "next_attempt", True), ("P", "priority", True),
    ("F", "full_name", False), ("B", "body_type", False), ("Z", "envid", False),
    ("X", "ret", False), ("E", "error_mode", False), ("p", "protocol", False),
    ("s", "relay", False), ("Q", "hold_reason", False), ("D", "size", True),
    ("f", "flags", False),
)
_BY_LETTER = {letter: (attr, is_int) for letter, attr, is_int in _SCALARS}


def dumps(env):
    """Serialize an Envelope to the bytes of a control file."""
    out = [VERSION_LINE]
    for letter, attr, is_int in _SCALARS:
        value = getattr(env, attr)
        if is_int:
            out.append(b"%s %d" % (letter.encode(), value))
        elif value:
            out.append(("%s %s" % (letter, xtext(value))).encode("ascii"))
    out.append(("u %d %s" % (env.uid, xtext(env.user or "-"))).encode("ascii"))
    out.append(("S %s" % xtext(env.sender or "<>")).encode("ascii"))
    if env.warned:
        out.append(b"w 1")
    for name, value in env.macros.items():
        out.append(("M %s %s" % (xtext(name), xtext(value))).encode("ascii"))
    for r in env.recipients:
        fields = []
        for key in _RCPT_FIELDS:
            value = getattr(r, key)
            if key == "attempts":
                if value:
                    fields.append("attempts=%d" % value)
            elif value or key == "addr":
                fields.append("%s=%s" % (key, xtext(value)))
        out.append(("R " + " ".join(fields)).encode("ascii"))
    for h in env.headers:
        out.append(b"H " + _folded(h))
    out.append(b".")
    return b"\n".join(out) + b"\n"


def _folded(header):
    """A header as it may stand in the file: every line after the first must start with
    a blank, so no producer's bare newline can start a field of its own. Refused
    otherwise (cleanup and the milter editor fold what they produce)."""
    if b"\n" in header:
        for line in header.split(b"\n")[1:]:
            if line[:1] not in (b" ", b"\t"):
                raise FormatError("header with an unfolded line: %r" % header[:60])
    return header


class FormatError(ValueError):
    pass


def loads(data):
    """Parse control-file bytes into an Envelope; FormatError if incomplete or foreign."""
    lines = data.split(b"\n")
    if not lines or lines[0] != VERSION_LINE:
        raise FormatError("not a pysendmail-qf 1 control file")
    if len(lines) < 2 or lines[-1] != b"" or lines[-2] != b".":
        raise FormatError("control file is incomplete (no final '.')")
    env = Envelope()
    headers = env.headers
    for line in lines[1:-2]:
        if not line:
            continue
        tag = line[:1]
        if tag in (b" ", b"\t"):
            if not headers:
                raise FormatError("continuation line outside a header")
            headers[-1] += b"\n" + line
            continue
        if tag == b"H":
            headers.append(line[2:])
            continue
        text = line.decode("ascii")
        letter, _, rest = text.partition(" ")
        if letter in _BY_LETTER:
            attr, is_int = _BY_LETTER[letter]
            setattr(env, attr, int(rest) if is_int else unxtext(rest))
        elif letter == "S":
            sender = unxtext(rest)
            env.sender = "" if sender == "<>" else sender
        elif letter == "u":
            uid, _, user = rest.partition(" ")
            env.uid = int(uid)
            env.user = "" if user == "-" else unxtext(user)
        elif letter == "w":
            env.warned = rest.strip() == "1"
        elif letter == "M":
            name, _, value = rest.partition(" ")
            env.macros[unxtext(name)] = unxtext(value)
        elif letter == "R":
            r = Recipient("")
            for item in rest.split(" "):
                key, _, value = item.partition("=")
                if key == "attempts":
                    r.attempts = int(value)
                elif key in _RCPT_FIELDS:
                    setattr(r, key, unxtext(value))
            if not r.address:
                r.address = r.addr
            env.recipients.append(r)
        else:
            raise FormatError("unknown control line %r" % letter)
    return env

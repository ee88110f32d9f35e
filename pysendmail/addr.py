"""Address syntax: splitting address lists and finding the route address in each.

Pure functions, no imports (the submission path uses them on every message).
Errors read as Sendmail's do: `bad<addr... Unbalanced '<'`. Sendmail keeps an
address as written ("Carol <carol@example.net>") for display and routes on the
bare address inside the angle brackets; `Address.full` and `Address.bare` are
those two. CR and LF never survive into an address (header injection through
PHP's -f or a crafted header).
"""
from .errors import AddressError, EX_USAGE

_PAIRS = {"<": ">", "(": ")"}


class Address:
    __slots__ = ("full", "bare")

    def __init__(self, full, bare):
        self.full = full
        self.bare = bare

    @property
    def local(self):
        at = _last_at(self.bare)
        return self.bare if at < 0 else self.bare[:at]

    @property
    def domain(self):
        at = _last_at(self.bare)
        return "" if at < 0 else self.bare[at + 1:]

    def __eq__(self, other):
        return isinstance(other, Address) and self.bare.lower() == other.bare.lower()

    def __hash__(self):
        return hash(self.bare.lower())

    def __repr__(self):
        return "Address(%r, %r)" % (self.full, self.bare)


def _last_at(text):
    """Index of the '@' that separates local part and domain (outside quotes), or -1."""
    quoted = False
    at = -1
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "@" and not quoted:
            at = i
        i += 1
    return at


def strip_crlf(text):
    """Remove CR and LF (and NUL) from text that came from argv or a header field."""
    if "\r" in text or "\n" in text or "\0" in text:
        text = text.replace("\r", "").replace("\n", "").replace("\0", "")
    return text


def _check_balance(text, original):
    depth = {"<": 0, "(": 0}
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if quoted:
            if c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif depth["("] > 0:
            if c == "(":
                depth["("] += 1
            elif c == ")":
                depth["("] -= 1
        elif c in "<(":
            depth[c] += 1
            if c == "<" and depth["<"] > 1:
                raise AddressError(original, "Unbalanced '<'")
        elif c == ">":
            if depth["<"] == 0:
                raise AddressError(original, "Unbalanced '>'")
            depth["<"] -= 1
        elif c == ")":
            raise AddressError(original, "Unbalanced ')'")
        i += 1
    if quoted:
        raise AddressError(original, "Unbalanced '\"'")
    if depth["<"]:
        raise AddressError(original, "Unbalanced '<'")
    if depth["("]:
        raise AddressError(original, "Unbalanced '('")


def strip_comments(text):
    """`text` without its RFC 5322 comments (quoted strings and escapes kept)."""
    out = []
    depth = 0
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            if depth == 0:
                out.append(text[i:i + 2])
            i += 2
            continue
        if quoted:
            out.append(c)
            if c == '"':
                quoted = False
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif depth == 0:
            if c == '"':
                quoted = True
            out.append(c)
        i += 1
    return "".join(out)


def _route_addr(text):
    """The bare address of one list element (comments removed, angle brackets resolved)."""
    lt = gt = -1
    quoted = False
    depth = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"' and depth == 0:
            quoted = not quoted
        elif not quoted:
            if c == "(":
                depth += 1
            elif c == ")" and depth:
                depth -= 1
            elif depth == 0 and c == "<":
                lt, gt = i, -1
            elif depth == 0 and c == ">" and lt >= 0 and gt < 0:
                gt = i
        i += 1
    if lt >= 0 and gt > lt:
        inner = text[lt + 1:gt].strip()
        if inner.startswith("@") and ":" in inner:   # source route: @a,@b:user@c
            inner = inner[inner.index(":") + 1:]
        return strip_comments(inner).strip()
    return " ".join(strip_comments(text).split())


def parse(text, *, allow_empty=False, status=EX_USAGE):
    """Parse one address (argv, -f, RCPT TO). Raises AddressError."""
    text = strip_crlf(text).strip()
    if not text:
        if allow_empty:
            return Address("", "")
        raise AddressError(text, "User address required", status)
    _check_balance(text, text)
    bare = _route_addr(text)
    if bare == "" and not allow_empty and text not in ("<>",):
        raise AddressError(text, "User address required", status)
    if bare.startswith("@") and ":" not in bare:
        raise AddressError(text, "User address required", status)
    return Address(text, bare)


def split_list(text):
    """Split an address list (a header field body or a comma-separated argv word) into its
    elements, honouring quotes, comments and angle brackets, and flattening groups
    (`name: a, b;`). Empty elements are dropped."""
    text = strip_crlf(text)
    items = []
    cur = []
    quoted = False
    depth = 0
    angle = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if quoted:
            if c == '"':
                quoted = False
        elif depth:
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif c == '"':
            quoted = True
        elif c == "(":
            depth += 1
        elif c == "<":
            angle += 1
        elif c == ">" and angle:
            angle -= 1
        elif angle == 0 and c == ":" and "@" not in "".join(cur) and _is_group_name(cur):
            cur = []          # group display name: drop it
            i += 1
            continue
        elif angle == 0 and c in ",;":
            items.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    items.append("".join(cur))
    return [item.strip() for item in items if item.strip()]


def _is_group_name(chars):
    name = "".join(chars).strip()
    return bool(name) and "<" not in name and not name.startswith("[")


def parse_list(text, status=EX_USAGE):
    """Parse an address list into Addresses; the first bad element raises AddressError."""
    return [parse(item, status=status) for item in split_list(text)]

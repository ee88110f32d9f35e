"""Sendmail's address tokenizer (``prescan``) and its inverse (``cataddr``).

Pure functions, no I/O.  An address is cut into tokens by a small state
machine over four character kinds: operators (the ``OperatorChars`` option
plus the fixed delimiters ``()<>,;``), atoms (everything else), quoted
strings (``"..."``, kept whole with their quotes) and spaces (dropped).
Every operator character is a token of its own; a quoted string is one
token; a backslash keeps the next character inside the current token
(backslash included, except the ``\\!`` of naive users); comments in
parentheses are dropped in the external form (``comments=True``) and kept as
operator tokens in the ``-bt`` form (``comments=False``, Sendmail's
TokTypeNoC table).  Unbalanced ``"``, ``(`` and ``<`` are closed at the end
of the input, stray ``)`` and ``>`` are dropped, each with Sendmail's
message.

  prescan(text, operator_chars, comments=True, delim=None, ignore=False)
      -> Scan (.tokens: list[str] or None on a fatal error, .errors: list of
         "553 ..." messages in order, .end: index where scanning stopped)
  tokenize(text, operator_chars=".:%@!^/[]+", comments=True) -> list[str]
  detokenize(tokens, spacesub=" ", operator_chars=...) -> str
  Meta: str subclass for the rewriting engine's meta tokens ($*, $#, ...).
"""

DEFAULT_OPERATOR_CHARS = ".:%@!^/[]+"
DELIM_CHARS = "()<>,;\r\n"
MAXATOM = 1000          # tokens per address
MAXNAME = 256           # characters per token
PSBUFSIZE = MAXNAME + MAXATOM

# character kinds / states
OPR, ATM, QST, SPC, ONE = 0, 1, 2, 3, 4
_M = 0o20   # do not keep the character
_B = 0o40   # break the token before the character
_STATES = (
    # kind:  OPR        ATM        QST        SPC           ONE
    (OPR | _B, ATM | _B, QST | _B, SPC | _M | _B, ONE | _B),   # in OPR
    (OPR | _B, ATM,      QST | _B, SPC | _M | _B, ONE | _B),   # in ATM
    (QST,      QST,      OPR,      QST,           QST),        # in QST
    (OPR,      ATM,      QST,      SPC | _M,      ONE),        # in SPC
    (OPR,      OPR,      OPR,      OPR,           OPR),        # in ONE
)
_SPACES = " \t\n\v\f\r"


class Meta(str):
    """A meta token of a compiled rule ($*, $#, $>, ...): never equal in
    kind to the same characters typed in an address."""
    __slots__ = ()


class Scan:
    """Result of prescan: tokens (None after a fatal error), errors, end."""
    __slots__ = ("tokens", "errors", "end")

    def __init__(self, tokens, errors, end):
        self.tokens, self.errors, self.end = tokens, errors, end

    def __repr__(self):
        return "Scan(%r, %r, %r)" % (self.tokens, self.errors, self.end)


_KIND_CACHE = {}


def _kinds(operator_chars, comments):
    key = (operator_chars, comments)
    table = _KIND_CACHE.get(key)
    if table is None:
        table = {}
        for ch in _SPACES:
            table[ch] = SPC
        table['"'] = QST
        for ch in operator_chars + DELIM_CHARS:
            if ch not in table:
                table[ch] = OPR
        if comments:
            table["("] = SPC
            table[")"] = SPC
        _KIND_CACHE[key] = table
    return table


def prescan(text, operator_chars=DEFAULT_OPERATOR_CHARS, comments=True,
            delim=None, ignore=False):
    """Tokenize *text* as Sendmail's prescan() does.  *text* may also be a
    list mixing one-character strings and Meta tokens (rule compilation):
    a Meta is always a token of its own."""
    kinds = _kinds(operator_chars, comments)
    items = text
    n = len(items)
    toks, errors = [], []
    cur = []
    size = 0
    state = ATM
    bslash = False
    route = False
    cmnt = angle = 0
    i = 0
    pending = None     # a character to process before reading on (fix-ups)
    fixups = 0

    def flush():
        nonlocal size
        if cur:
            tok = "".join(cur)
            cur.clear()
            size += len(tok) + 1
            if len(toks) >= MAXATOM:
                errors.append("553 5.1.0 prescan: too many tokens")
                return False
            if len(tok) > MAXNAME:
                errors.append("553 5.1.0 prescan: token too long")
                return False
            toks.append(tok)
        return True

    while True:
        if size + len(cur) >= PSBUFSIZE - 5:
            errors.append("553 5.1.1 Address too long")
            return Scan(None, errors, i)
        if pending is not None:
            c, pending = pending, None
        elif i >= n:
            c = None
        else:
            c = items[i]
            i += 1
        if c is None:
            fixups += 1
            if ignore or fixups > 8:
                break
            if state == QST:
                errors.append("553 Unbalanced '\"'")
                pending = '"'
            elif cmnt > 0:
                errors.append("553 Unbalanced '('")
                pending = ")"
            elif angle > 0:
                errors.append("553 Unbalanced '<'")
                pending = ">"
            else:
                break
            continue
        if isinstance(c, Meta):
            if not flush():
                return Scan(None, errors, i)
            if len(toks) >= MAXATOM:
                errors.append("553 5.1.0 prescan: too many tokens")
                return Scan(None, errors, i)
            toks.append(c)
            state = OPR
            bslash = False
            continue
        if c == delim and cmnt <= 0 and state != QST:
            if angle <= 0:
                i -= 1
                break
            if delim == "," and not route and not ignore:
                errors.append("553 Unbalanced '<'")
                i -= 1
                c = ">"
        if bslash:
            bslash = False
            if cmnt > 0:
                continue
            if c != "!" or state == QST:
                cur.append("\\")
                cur.append(c)
                continue
        keep = True
        if c == "\\":
            bslash = True
            keep = False
        elif state == QST:
            pass
        elif comments and c == "(":
            cmnt += 1
            continue
        elif comments and c == ")":
            if cmnt <= 0:
                if not ignore:
                    errors.append("553 Unbalanced ')'")
                    continue
            else:
                cmnt -= 1
        elif cmnt > 0:
            continue
        elif c == "<":
            angle += 1
            j = i
            while j < n and isinstance(items[j], str) and items[j] in _SPACES \
                    and not isinstance(items[j], Meta):
                j += 1
            route = j < n and items[j] == "@" and not isinstance(items[j], Meta)
        elif c == ">":
            if angle <= 0:
                if not ignore:
                    errors.append("553 Unbalanced '>'")
                    continue
            else:
                angle -= 1
            route = False
        if c == delim and angle <= 0 and state != QST:
            i -= 1
            break
        new = _STATES[state][kinds.get(c, ATM)]
        state = new & 0o17
        if new & _B:
            if not flush():
                return Scan(None, errors, i)
        if keep and not new & _M:
            cur.append(c)
    if not flush():
        return Scan(None, errors, i)
    return Scan(toks, errors, i)


def tokenize(text, operator_chars=DEFAULT_OPERATOR_CHARS, comments=True):
    """The tokens of *text* (errors are patched up as Sendmail does; a fatal
    error such as too many tokens gives [])."""
    scan = prescan(text, operator_chars, comments)
    return scan.tokens if scan.tokens is not None else []


def is_atom(token, operator_chars=DEFAULT_OPERATOR_CHARS):
    """True when *token* starts with an atom character (cataddr's test)."""
    if not token or isinstance(token, Meta):
        return False
    c = token[0]
    return c not in _SPACES and c != '"' and c not in operator_chars \
        and c not in DELIM_CHARS


def detokenize(tokens, spacesub=" ", operator_chars=DEFAULT_OPERATOR_CHARS):
    """Join *tokens* as Sendmail's cataddr: no spaces, except *spacesub*
    between two atoms (spacesub "" joins them)."""
    out = []
    prev_atom = False
    for tok in tokens:
        atom = is_atom(tok, operator_chars)
        if prev_atom and atom:
            out.append(spacesub)
        out.append(tok)
        prev_atom = atom
    return "".join(out)

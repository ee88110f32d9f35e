"""The vocabulary of compiled rules: the operators of a rule's two sides and how a side
is turned into characters and operator tokens (then prescan()ned by the engine).

Tokens are str; operators are tokenize.Meta: the singletons below ($# $@ $: $> $[ $] $( $)
$| ...), which the engine tests by identity, and `Op` placeholders ($1, $=w, $&x, $*, ...)
with their kind and argument.  `to_plain`/`from_plain` turn them into marshal-able plain
data and back (the compiled rules cache, config/rules.py).  Pure.
"""
from pysendmail.config.tokenize import Meta

ZANY, ANY, ONE, ZERO, CLASS, NCLASS, DMACRO, LIT = range(8)   # LHS operators
CANONNET = Meta("$#")
CANONHOST = Meta("$@")
CANONUSER = Meta("$:")
CALLSUBR = Meta("$>")
HOSTBEGIN = Meta("$[")
HOSTEND = Meta("$]")
LOOKUPBEGIN = Meta("$(")
LOOKUPEND = Meta("$)")
CONDELSE = Meta("$|")      # the separator Sendmail puts in check_* inputs
_SIMPLE_META = {"#": CANONNET, "@": CANONHOST, ":": CANONUSER, ">": CALLSUBR,
                "[": HOSTBEGIN, "]": HOSTEND, "(": LOOKUPBEGIN,
                ")": LOOKUPEND, "|": CONDELSE, "?": Meta("$?"),
                ".": Meta("$.")}
_LHS_META = {"*": ZANY, "+": ANY, "-": ONE}
META_BY_TEXT = {str(m): m for m in _SIMPLE_META.values()}   # the engine tests identity
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FOLD = str.maketrans(_UPPER, _UPPER.lower())


def fold(s):
    """ASCII-only lower case, as Sendmail's case-insensitive compares."""
    return s.translate(_FOLD)


class Op(Meta):
    """A compiled placeholder inside a rule: ($1, $=w, $&x, $*, ...)."""
    __slots__ = ("kind", "arg")

    def __new__(cls, text, kind, arg=None):
        self = Meta.__new__(cls, text)
        self.kind, self.arg = kind, arg
        return self


def name_at(text, j):
    """A macro/class name at text[j]: one character or {long}.  -> (name, next)"""
    if j >= len(text):
        return None, j
    if text[j] == "{":
        k = text.find("}", j)
        if k < 0:
            return text[j + 1:], len(text)
        return text[j + 1:k], k + 1
    return text[j], j + 1


def shown(name):
    """How Sendmail prints a macro/class name: x or {long}."""
    name = name or ""
    return name if len(name) == 1 else "{%s}" % name


def rule_items(text, lhs, macros):
    """Characters and meta tokens of one side of a rule ($x replaced by macros[x])."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        d = text[i + 1]
        i += 2
        if lhs and d in _LHS_META:
            out.append(Op("$" + d, _LHS_META[d]))
        elif lhs and d == "@":
            out.append(Op("$@", ZERO))
        elif d in "=~":
            name, i = name_at(text, i)
            out.append(Op("$" + d + shown(name), CLASS if d == "=" else NCLASS, name or ""))
        elif d == "&":
            name, i = name_at(text, i)
            out.append(Op("$&" + shown(name), DMACRO, name or ""))
        elif d.isdigit() and not lhs:
            out.append(Op("$" + d, "repl", int(d)))
        elif d in _SIMPLE_META:
            out.append(_SIMPLE_META[d])
        elif d == "$":
            out.append("$")
        else:
            name, i = name_at(text, i - 1)
            out.extend(macros.get(name, ""))
    return out


def to_plain(tok):
    """A token as plain data: an operator is (0, text, kind, arg), another meta (1, text)."""
    if isinstance(tok, Op):
        return (0, str(tok), tok.kind, tok.arg)
    if isinstance(tok, Meta):
        return (1, str(tok))
    return tok


def from_plain(t):
    """The token to_plain() described (the same singleton for $# $@ $: ...)."""
    if type(t) is tuple:
        if t[0] == 0:
            return Op(t[1], t[2], t[3])
        return META_BY_TEXT.get(t[1]) or Meta(t[1])
    return t

"""The parsed sendmail.cf: plain classes (with __slots__) that the rewriting engine,
address test mode and the router read.

Values Sendmail expands or tokenizes later (macro values, class words, rule LHS/RHS,
mailer equates, map arguments) are kept as the raw text of the cf, after readcf's
line preparation (continuation lines joined with their newline kept, on-line `#`
comments removed, `\\#` unescaped, trailing white space stripped).  Every item keeps
the file and line it came from: objects carry `.file` and `.line`; the entries of the
plain dicts (macros, classes, options, precedences, environ) have theirs in
`CfConfig.origins[(kind, name)]`.

`to_plain()` / `from_plain()` turn a CfConfig into tuples, lists, dicts, str and int
only (what `marshal` stores): the cache of pysendmail/config/cf.py uses them, so this
module imports nothing and a cache hit costs no grammar machinery.
"""

# The mailer equates Sendmail 8.17's makemailer() knows, by their code letter.
MAILER_EQUATES = "ACDEFLMmNPQRrSTUW"


def munch(value):
    """Sendmail's munchstring(): drop double quotes and turn the escapes \\r \\n \\f \\b into
    their characters (a backslash before anything else gives that character: `\\t` is t)."""
    if "\\" not in value and '"' not in value:
        return value
    out = []
    i = 0
    escapes = {"n": "\n", "r": "\r", "f": "\f", "b": "\b"}
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append(escapes.get(value[i + 1], value[i + 1]))
            i += 2
            continue
        if c != '"':
            out.append(c)
        i += 1
    return "".join(out)


class Rule:
    """One R line: the raw LHS and RHS (with `$` operators as written) and the comment."""

    __slots__ = ("lhs", "rhs", "comment", "file", "line")

    def __init__(self, lhs, rhs, comment, file, line):
        self.lhs = lhs
        self.rhs = rhs
        self.comment = comment
        self.file = file
        self.line = line

    def __repr__(self):
        return "Rule(%r, %r, %r, line %d)" % (self.lhs, self.rhs, self.comment, self.line)


class Ruleset:
    """A rewriting set: its number, its name (None for `S3`-style sets) and its rules in order.
    file/line are those of its first S line."""

    __slots__ = ("number", "name", "rules", "file", "line")

    def __init__(self, number, name, file, line, rules=None):
        self.number = number
        self.name = name
        self.rules = rules if rules is not None else []
        self.file = file
        self.line = line

    def __repr__(self):
        return "Ruleset(%d, %r, %d rules)" % (self.number, self.name, len(self.rules))


class Equated:
    """A line of `name, X=value, Y=value` fields (M, Q and X lines).  `equate` maps each
    field name as written (`P`, `F`, `Path`...) to its raw value; `field(code)` finds a
    field by its first letter, the only part Sendmail reads."""

    __slots__ = ("name", "equate", "file", "line")

    def __init__(self, name, equate, file, line):
        self.name = name
        self.equate = equate
        self.file = file
        self.line = line

    def field(self, code, default=None):
        for key, value in self.equate.items():
            if key[:1] == code:
                return value
        return default

    def __repr__(self):
        return "%s(%r, %r)" % (type(self).__name__, self.name, self.equate)


class Mailer(Equated):
    """An M line.  As makemailer() reads them (quotes dropped, escapes decoded by munch()):
    path (P=), flags (F=, a string of flag letters), argv (A=, one string), eol (E=; when
    absent "\\n" if an A= word holds `$u`, else "\\r\\n", as Sendmail defaults it),
    maxsize (M=, int or None), sender/recipient rulesets (S=, R=: `env/hdr` text or None).
    `equate` keeps every field raw, as written."""

    __slots__ = ("path", "flags", "argv", "eol", "maxsize", "sender_rw", "recipient_rw")

    def __init__(self, name, equate, file, line):
        super().__init__(name, equate, file, line)
        path = self.field("P")
        self.path = munch(path) if path is not None else None
        self.flags = "".join(munch(self.field("F") or "").split())
        argv = self.field("A")
        self.argv = munch(argv) if argv is not None else None
        eol = self.field("E")
        if eol is not None:
            self.eol = munch(eol)
        else:
            self.eol = "\n" if "$u" in (self.argv or "") else "\r\n"
        size = self.field("M")
        self.maxsize = int(size) if size and size.strip().isdigit() else None
        self.sender_rw = self.field("S")
        self.recipient_rw = self.field("R")


class QueueGroup(Equated):
    """A Q line (queue group)."""

    __slots__ = ()


class Milter(Equated):
    """An X line (mail filter)."""

    __slots__ = ()


class MapSpec:
    """A K line: map name, map class (`hash`, `dequote`...) and the raw argument text."""

    __slots__ = ("name", "mclass", "args", "file", "line")

    def __init__(self, name, mclass, args, file, line):
        self.name = name
        self.mclass = mclass
        self.args = args
        self.file = file
        self.line = line

    def __repr__(self):
        return "MapSpec(%r, %r, %r)" % (self.name, self.mclass, self.args)


class Header:
    """An H line.  flags: the letters between `?` (None without `?..?`); value: raw;
    ruleset_check: the ruleset name of a `$>name` / `$>+name` value (else None), and
    check_raw True for `$>+` (the value is passed without comment stripping).
    Iterating gives (flags, name, value, ruleset_check)."""

    __slots__ = ("flags", "name", "value", "ruleset_check", "check_raw", "file", "line")

    def __init__(self, flags, name, value, file, line):
        self.flags = flags
        self.name = name
        self.value = value
        self.file = file
        self.line = line
        self.ruleset_check = None
        self.check_raw = False
        if value.startswith("$>"):
            check = value[2:].strip()
            if check.startswith("+"):
                self.check_raw = True
                check = check[1:].strip()
            self.ruleset_check = check

    def __iter__(self):
        return iter((self.flags, self.name, self.value, self.ruleset_check))

    def __repr__(self):
        return "Header(%r, %r, %r)" % (self.flags, self.name, self.value)


class ClassFile:
    """An F line: class name, file (or `|program args`), optional (`-o`), scanf format."""

    __slots__ = ("name", "path", "optional", "format", "file", "line")

    def __init__(self, name, path, optional, format, file, line):
        self.name = name
        self.path = path
        self.optional = optional
        self.format = format
        self.file = file
        self.line = line

    def __iter__(self):
        return iter((self.name, self.path, self.optional, self.format))

    def __repr__(self):
        return "ClassFile(%r, %r, %r, %r)" % (self.name, self.path, self.optional, self.format)


class CfConfig:
    """Everything one sendmail.cf says.  See the module docstring for what is raw."""

    __slots__ = ("path", "version", "macros", "classes", "class_files", "options",
                 "option_list", "headers", "mailers", "rulesets", "ruleset_names", "maps",
                 "precedences", "trusted_users", "environ", "queue_groups", "milters",
                 "other_lines", "origins", "warnings")

    def __init__(self, path):
        self.path = path
        self.version = None         # the V line's text ("10/Berkeley"), None without one
        self.macros = {}            # "j" / "daemon_flags" -> raw value
        self.classes = {}           # "w" / "Accept" -> [words] (C lines and T for "t")
        self.class_files = []       # [ClassFile]
        self.options = {}           # long option name -> raw value (the last one given)
        self.option_list = []       # [(long name, value, file, line)]: every O line in order
        self.headers = []           # [Header]
        self.mailers = {}           # name -> Mailer (in cf order)
        self.rulesets = {}          # number -> Ruleset
        self.ruleset_names = {}     # name -> number
        self.maps = {}              # name -> MapSpec
        self.precedences = {}       # name -> int
        self.trusted_users = []     # T line words
        self.environ = {}           # E lines: name -> value (None for `EVAR`: pass through)
        self.queue_groups = {}      # name -> QueueGroup
        self.milters = {}           # name -> Milter
        self.other_lines = []       # [(kind, text, file, line)]: L and G lines
        self.origins = {}           # (kind letter, name) -> (file, line)
        self.warnings = []          # [(file, line, message, text)]

    def ruleset(self, ref):
        """The Ruleset for a number, a digit string or a name; None when undefined."""
        if isinstance(ref, str):
            if ref.isdigit():
                ref = int(ref)
            else:
                ref = self.ruleset_names.get(ref)
                if ref is None:
                    return None
        return self.rulesets.get(ref)

    # ---- plain data for the cache
    def to_plain(self):
        return {
            "path": self.path, "version": self.version, "macros": self.macros,
            "classes": self.classes, "class_files": [
                (c.name, c.path, c.optional, c.format, c.file, c.line) for c in self.class_files],
            "options": self.options, "option_list": self.option_list,
            "headers": [(h.flags, h.name, h.value, h.file, h.line) for h in self.headers],
            "mailers": [(m.name, m.equate, m.file, m.line) for m in self.mailers.values()],
            "rulesets": [(rs.number, rs.name, rs.file, rs.line,
                          [(r.lhs, r.rhs, r.comment, r.file, r.line) for r in rs.rules])
                         for rs in self.rulesets.values()],
            "ruleset_names": self.ruleset_names,
            "maps": [(m.name, m.mclass, m.args, m.file, m.line) for m in self.maps.values()],
            "precedences": self.precedences, "trusted_users": self.trusted_users,
            "environ": self.environ,
            "queue_groups": [(q.name, q.equate, q.file, q.line)
                             for q in self.queue_groups.values()],
            "milters": [(x.name, x.equate, x.file, x.line) for x in self.milters.values()],
            "other_lines": self.other_lines, "origins": self.origins,
            "warnings": self.warnings,
        }

    @classmethod
    def from_plain(cls, data):
        cf = cls(data["path"])
        cf.version = data["version"]
        cf.macros = data["macros"]
        cf.classes = data["classes"]
        cf.class_files = [ClassFile(*t) for t in data["class_files"]]
        cf.options = data["options"]
        cf.option_list = data["option_list"]
        cf.headers = [Header(*t) for t in data["headers"]]
        cf.mailers = {t[0]: Mailer(*t) for t in data["mailers"]}
        for number, name, file, line, rules in data["rulesets"]:
            cf.rulesets[number] = Ruleset(number, name, file, line,
                                          [Rule(*r) for r in rules])
        cf.ruleset_names = data["ruleset_names"]
        cf.maps = {t[0]: MapSpec(*t) for t in data["maps"]}
        cf.precedences = data["precedences"]
        cf.trusted_users = data["trusted_users"]
        cf.environ = data["environ"]
        cf.queue_groups = {t[0]: QueueGroup(*t) for t in data["queue_groups"]}
        cf.milters = {t[0]: Milter(*t) for t in data["milters"]}
        cf.other_lines = data["other_lines"]
        cf.origins = data["origins"]
        cf.warnings = data["warnings"]
        return cf

"""Reading sendmail.cf: line preparation as Sendmail's readcf() does it, the lark grammar
(sendmail_cf.lark) for each logical line, and a cache of the parsed form.

    load(path, warn=None, cache_dir=None) -> CfConfig    # what callers use
    compile_to(path, out=None) -> CfConfig                # write <path>.compiled
    parse(path, warn=None) -> CfConfig                   # always parses (imports lark)
    parse_text(text, path, warn=None) -> CfConfig

Line preparation (Sendmail's fgetfolded() and translate_dollars()): a line starting with
a space or TAB continues the previous one and the newline is kept in the joined text (the
rewriting tokenizer treats it as white space; header values keep their folding); a line
starting with `#` is a comment (with its continuation lines); elsewhere `#` starts an
on-line comment unless written `$#` or `\\#` (the backslash is dropped); trailing white
space is stripped; empty lines are skipped.  (Sendmail drops on-line comments only from
`V3` on; every cf in use today is V10, so pysendmail always does.)  Line numbers are those
of the first physical line of a logical line; an error inside a continuation line is
reported on its own physical line and column.

Errors, in Sendmail's words (cf_checks.py holds the checks past the grammar).  Sendmail's
readcf() reports every fault with syserr() and reads on; pysendmail splits them in two.
Warnings -- a line naming something unknown, which Sendmail skips and runs without: no cf
line type or a malformed P line ("unknown configuration line"), an unknown option name,
mailer equate or map class, a mailer without A= or P=, a V level above 10 or an unknown
vendor.  A warning `file:line: message: text` goes to `warn` and into CfConfig.warnings;
the line is skipped (a mailer is kept as written).  Fatal -- a line of a known type that
cannot be read as one (no name, no tab, no `=`, no colon), a rule that would not rewrite
as written (operators out of place, `$n` out of bounds, an unclosed or nested lookup), a
ruleset number out of range or changed: CfError (EX_CONFIG, 78) with file:line:column,
the line and a caret.  An unknown DeliveryMode or EightBitMode value is a CfError with
EX_USAGE (64): Sendmail exits 64 there.  A cf that cannot be opened raises ConfigError
with Sendmail's text `<path>: line 0: cannot open: <strerror>` and EX_OSFILE (72).

Named rulesets are numbered as Sendmail 8.17's strtorwset() does: `Sname=N` gives N; a
name first met without a number (on an S line, or in a mailer's S=/R= equate, which
Sendmail also enters) takes the next number counting down from 199 (MAXRWSETS 200);
numbers must be below 100 (MAXRWSETS / 2).  `$>name` calls in rules are resolved when
the rules run, as in Sendmail, and assign nothing here.

The compiled form (config/cf_cache.py).  load() reads `<path>.compiled` (written ahead
of time by compile_to(); `pip install` does it for the shipped cf) or, with `cache_dir`,
the per-path cache there, when either was made from the same contents; otherwise it
parses and, with `cache_dir`, stores the result.  A hit imports no lark.
"""
import os

from ..errors import ConfigError, EX_CONFIG, EX_OSFILE, EX_USAGE
from . import cf_cache, cf_checks
from .cf_model import (CfConfig, ClassFile, Header, MapSpec, Mailer, Milter, QueueGroup,
                       Rule, Ruleset, MAILER_EQUATES)

CACHE_VERSION = cf_cache.CACHE_VERSION
MAXRWSETS = 200
LINE_TYPES = "VDCFOHMSRKPTEQXLG"
_KIND_NAMES = {
    "V": "V (version)", "D": "D (macro)", "C": "C (class)", "F": "F (class file)",
    "O": "O (option)", "H": "H (header)", "M": "M (mailer)", "S": "S (ruleset)",
    "R": "R (rewriting rule)", "K": "K (map)", "P": "P (precedence)",
    "T": "T (trusted users)", "E": "E (environment)", "Q": "Q (queue group)",
    "X": "X (milter)", "L": "L", "G": "G",
}
# One-letter options that pysendmail.config.cmdline.SHORT_OPTIONS does not name.
_MORE_SHORT_OPTIONS = {"I": "ResolverOptions", "J": "ForwardPath"}


def _byte(char):
    """The first byte of a character as the cf has it (Sendmail's `opt & 0xff`)."""
    return char.encode("utf-8", "surrogateescape")[0] if char else 0


class CfError(ConfigError):
    """A malformed cf line: `file:line:column: message`, then the line and a caret."""

    def __init__(self, message, file=None, line=None, column=None, text=None,
                 status=EX_CONFIG):
        self.reason = message
        self.file = file
        self.line = line
        self.column = column
        self.text = text
        if file is not None:
            where = "%s:%d:%d" % (file, line, column) if column else "%s:%d" % (file, line)
            message = "%s: %s" % (where, message)
            if text is not None:
                message += "\n%s\n%s^" % (text, " " * max(0, (column or 1) - 1))
        super().__init__(message, status)


# ---------------------------------------------------------------- reading and preparing

def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError("%s: line 0: cannot open: %s" % (path, e.strerror or e),
                          EX_OSFILE) from None


def _strip_comments(line):
    """translate_dollars()'s comment handling: drop on-line comments, keep `$#`, unescape
    `\\#`; then strip trailing white space."""
    if "#" in line:
        out = []
        i = 0
        n = len(line)
        while i < n:
            c = line[i]
            if c == "$" and i + 1 < n and line[i + 1] in "$#":
                out.append(line[i:i + 2])
                i += 2
                continue
            if c == "#" and i > 0:
                if out and out[-1] == "\\":
                    out[-1] = "#"
                    i += 1
                    continue
                while out and out[-1] in " \t":
                    out.pop()
                nl = line.find("\n", i)
                if nl < 0:
                    break
                i = nl
                continue
            out.append(c)
            i += 1
        line = "".join(out)
    return line.rstrip()


def logical_lines(text):
    """Yield (first physical line number, prepared logical line) for each line to parse."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    start = 0
    buf = None
    for number, raw in enumerate(lines, 1):
        if raw.endswith("\r"):
            raw = raw[:-1]
        if buf is not None and raw[:1] in (" ", "\t"):
            buf.append(raw)
            continue
        if buf is not None:
            yield start, buf
        start, buf = number, [raw]
    if buf is not None:
        yield start, buf


# ---------------------------------------------------------------- the lark parser

_PARSER = None


def _parser():
    global _PARSER
    if _PARSER is None:
        import lark
        grammar = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sendmail_cf.lark")
        with open(grammar, encoding="utf-8") as f:
            _PARSER = lark.Lark(f.read(), parser="lalr", lexer="contextual",
                                propagate_positions=True, maybe_placeholders=False)
    return _PARSER


class _Reader:
    """Turns the parse trees of one file's lines into a CfConfig."""

    def __init__(self, path, warn):
        self.cf = CfConfig(path)
        self.path = path
        self.warn_cb = warn
        self.nextruleset = MAXRWSETS
        self.current = None           # the Ruleset R lines go to
        self.lineno = 0
        self.text = ""

    # -- diagnostics
    def warn(self, message, line=None, text=None):
        line = self.lineno if line is None else line
        text = self.text if text is None else text
        self.cf.warnings.append((self.path, line, message, text))
        if self.warn_cb is not None:
            self.warn_cb("%s:%d: %s: %s" % (self.path, line, message, text))

    def error(self, message, pos=0, status=EX_CONFIG):
        """CfError at offset pos of the logical line (mapped to its physical line)."""
        text = self.text
        pos = max(0, min(pos, len(text)))
        line = self.lineno + text.count("\n", 0, pos)
        begin = text.rfind("\n", 0, pos) + 1
        end = text.find("\n", pos)
        physical = text[begin:end if end >= 0 else len(text)]
        raise CfError(message, self.path, line, pos - begin + 1, physical, status)

    # -- one line
    def line(self, lineno, text):
        self.lineno = lineno
        self.text = text
        kind = text[0]
        if kind not in LINE_TYPES:
            self.warn("unknown configuration line")
            return
        import lark
        try:
            tree = _parser().parse(text)
        except lark.exceptions.UnexpectedInput as e:
            if kind == "P":
                self.warn("unknown configuration line")
                return
            if kind == "O":             # setoption() ignores what it cannot name
                if text[1:2] != " ":
                    self.warn("readcf: unknown option name 0x%x" % _byte(text[1:2]))
                    return
                name = text[2:].split("=", 1)[0].strip()
                self.warn(cf_checks.option_name_problem(name)
                          or "readcf: unknown option name %s" % name)
                return
            self.error(self.syntax_message(kind, e), self.error_pos(e))
        getattr(self, "do_" + tree.data)(tree)

    def error_pos(self, e):
        import lark
        if isinstance(e, lark.exceptions.UnexpectedCharacters):
            return e.pos_in_stream
        token = getattr(e, "token", None)
        if token is None or token.type == "$END" or token.start_pos is None:
            return len(self.text)
        return token.start_pos

    def syntax_message(self, kind, e):
        text = self.text
        at = self.error_pos(e)
        if kind == "R" and "\t" not in text:
            return "invalid rewrite line (tab expected)"
        if kind == "R" and text[1:2] == "\t":
            return "R line: null LHS"
        if kind in "DCF" and len(text) == 1:
            return "Name required for macro/class"
        if kind == "F":
            words = text[2 if text[1] != "{" else text.find("}") + 1 or len(text):].split()
            if not words or (len(words) == 1 and words[0].startswith("-o")):
                return "fileclass: missing file name"
        if kind == "S":
            rest = text[1:].strip()
            if not rest[:1].isdigit():
                end = 0
                while end < len(rest) and (rest[end].isalnum() or rest[end] == "_"):
                    end += 1
                if end and rest[0].isalpha() and rest[end:].lstrip()[:1] == "=":
                    return ("bad ruleset definition \"%s\" (number required after `=')"
                            % rest[:end])
                return 'invalid ruleset name: "%.20s"' % rest
        if kind == "M" and (len(text) == 1 or text[1] in ", \t\n"):
            return "name required for mailer"
        if kind in "MQX":
            name = (text[1:].split(",")[0].split() or [""])[0]
            return "%s %s: `=' expected" % ({"M": "mailer", "Q": "queue group",
                                             "X": "milter"}[kind], name)
        if kind == "K":
            words = text[1:].split()
            if not words:
                return "readcf: config K line: no map name"
            if len(words) == 1:
                return "readcf: config K line, map %s: no map class" % words[0]
        if kind == "H" and ":" not in text:
            return "header syntax error (no colon)"
        found = "end of line" if at >= len(text) else repr(text[at])
        return "syntax error in %s line: unexpected %s" % (_KIND_NAMES[kind], found)

    def origin(self, kind, name):
        self.cf.origins[(kind, name)] = (self.path, self.lineno)

    # -- the line types
    @staticmethod
    def _name(tree):
        token = tree.children[0]
        return token[1:-1] if token.type == "LONGNAME" else str(token)

    @staticmethod
    def _tokens(tree):
        return {t.type: str(t) for t in tree.children if hasattr(t, "type")}

    def named(self, tree):
        """The macro or class name of a D, C or F line (`{}` names nothing)."""
        name = self._name(tree)
        if not name:
            self.error("Name required for macro/class", 1)
        return name

    def do_version(self, tree):
        self.cf.version = str(tree.children[0]) if tree.children else ""
        fatal, warnings = cf_checks.version_problems(self.cf.version)
        if fatal:
            self.error(fatal, 1)
        for message in warnings:
            self.warn(message)

    def do_macro(self, tree):
        name = self.named(tree)
        self.cf.macros[name] = str(tree.children[1]) if len(tree.children) > 1 else ""
        self.origin("D", name)

    def do_class_words(self, tree):
        name = self.named(tree)
        words = str(tree.children[1]).split() if len(tree.children) > 1 else []
        self.add_class(name, words)

    def add_class(self, name, words):
        members = self.cf.classes.setdefault(name, [])
        if ("C", name) not in self.cf.origins:
            self.origin("C", name)
        for word in words:
            if word not in members:
                members.append(word)

    def do_class_file(self, tree):
        name = self.named(tree)
        tok = self._tokens(tree)
        optional = "OPTFLAG" in tok
        if "PIPE" in tok:
            path, fmt = tok["PIPE"], "%s"
        else:
            path, fmt = tok["FILEPATH"], tok.get("SCANF", "%s")
        self.cf.class_files.append(ClassFile(name, path, optional, fmt, self.path, self.lineno))
        self.cf.classes.setdefault(name, [])

    def set_option(self, name, value, pos):
        problem = cf_checks.option_value_problem(name, value)
        if problem:                     # Sendmail exits EX_USAGE on these
            self.error(problem, pos, EX_USAGE)
        self.cf.options[name] = value
        self.cf.option_list.append((name, value, self.path, self.lineno))
        self.origin("O", name)

    def do_long_option(self, tree):
        tok = {t.type: t for t in tree.children}
        name = str(tok["OPTNAME"])
        problem = cf_checks.option_name_problem(name)
        if problem:                     # setoption() ignores the line
            self.warn(problem)
            return
        value = tok.get("OPTVALUE")
        self.set_option(name, str(value or "").strip(),
                        value.start_pos if value is not None else len(self.text))

    def do_short_option(self, tree):
        from .cmdline import SHORT_OPTIONS
        tok = self._tokens(tree)
        letter = tok["OPTLETTER"]
        value = tok.get("OPTVALUE", "")
        if letter == "M":               # OMxvalue: the old way to define a macro
            if value:
                self.cf.macros[value[0]] = value[1:]
                self.origin("D", value[0])
            return
        name = SHORT_OPTIONS.get(letter) or _MORE_SHORT_OPTIONS.get(letter)
        if name is None:
            self.warn("readcf: unknown option name 0x%x" % _byte(letter))
            name = letter
        self.set_option(name, value.strip(), 2)

    def do_header(self, tree):
        tok = self._tokens(tree)
        flags = tok.get("HFLAGS", "") if self.text[1:2] == "?" else None
        self.cf.headers.append(Header(flags, tok["HNAME"], tok.get("HVALUE", ""),
                                      self.path, self.lineno))

    def equates(self, tree, kind):
        name = str(tree.children[0])
        equate = {}
        for eq in tree.children[1].children:
            code = str(eq.children[0])
            value = str(eq.children[2]).rstrip() if len(eq.children) > 2 else ""
            if kind == "M" and code[0] not in MAILER_EQUATES:
                self.warn("M%s: unknown mailer equate %s=" % (name, code[0]))
            equate[code] = value
        return name, equate

    def do_mailer(self, tree):
        name, equate = self.equates(tree, "M")
        mailer = Mailer(name, equate, self.path, self.lineno)
        problem = cf_checks.mailer_problem(mailer)
        if problem:                     # Sendmail defines no such mailer and goes on
            self.warn(problem)
        for code in ("S", "R"):         # makemailer() enters these ruleset names
            value = mailer.field(code)
            for part in (value or "").split("/")[:2]:
                part = part.strip()
                if part and not part.isdigit():
                    self.ruleset_number(part, None, 0)
        self.cf.mailers[name] = mailer

    def do_queue_group(self, tree):
        name, equate = self.equates(tree, "Q")
        self.cf.queue_groups[name] = QueueGroup(name, equate, self.path, self.lineno)

    def do_milter(self, tree):
        name, equate = self.equates(tree, "X")
        self.cf.milters[name] = Milter(name, equate, self.path, self.lineno)

    def ruleset_number(self, name, number, pos):
        """strtorwset(..., ST_ENTER) for a name, with an explicit number or None."""
        known = self.cf.ruleset_names.get(name)
        if number is None:
            if known is not None:
                return known
            self.nextruleset -= 1
            number = self.nextruleset
            if number < MAXRWSETS // 2:
                self.error("%s: too many named rulesets (%d max)" % (name, MAXRWSETS // 2),
                           pos)
        elif known is not None and known != number:
            self.error("%s: ruleset changed value (old %d, new %d)" % (name, known, number),
                       pos)
        self.cf.ruleset_names[name] = number
        return number

    def do_ruleset(self, tree):
        tok = {t.type: t for t in tree.children}
        name = None
        if "RSNAME" in tok:
            name = str(tok["RSNAME"])
            number = None
            if "RSNUMBER" in tok:
                number = int(tok["RSNUMBER"])
                if number >= MAXRWSETS // 2:
                    self.error('bad ruleset number %d in "%s" (%d max)'
                               % (number, name, MAXRWSETS // 2), tok["RSNUMBER"].start_pos)
            number = self.ruleset_number(name, number, tok["RSNAME"].start_pos)
        else:
            number = int(tok["RSNUMBER"])
            if number >= MAXRWSETS // 2:
                self.error("bad ruleset %d (%d max)" % (number, MAXRWSETS // 2),
                           tok["RSNUMBER"].start_pos)
        rs = self.cf.rulesets.get(number)
        if rs is None:
            rs = self.cf.rulesets[number] = Ruleset(number, name, self.path, self.lineno)
        elif name is not None:
            rs.name = name
        self.current = rs

    def do_rule(self, tree):
        if self.current is None:
            self.error('missing valid ruleset for "%s"' % self.text, 0)
        tok = {t.type: t for t in tree.children}
        lhs, rhs = tok["LHS"], tok["RHS"]
        problem = cf_checks.rule_problem(str(lhs), str(rhs))
        if problem:
            message, side, at = problem
            self.error(message, (lhs if side == "lhs" else rhs).start_pos + at)
        self.current.rules.append(Rule(lhs.strip(), rhs.strip(),
                                       str(tok.get("COMMENT", "")).strip(), self.path,
                                       self.lineno))

    def do_map(self, tree):
        tok = {t.type: t for t in tree.children}
        name, mclass = str(tok["MAPNAME"]), str(tok["MAPCLASS"])
        if not (name[0].isascii() and name[0].isalnum()):
            self.error("readcf: config K line: no map name", tok["MAPNAME"].start_pos)
        if not (mclass[0].isascii() and mclass[0].isalnum()):
            self.error("readcf: config K line, map %s: no map class" % name,
                       tok["MAPCLASS"].start_pos)
        problem = cf_checks.map_class_problem(name, mclass)
        if problem:                     # makemapentry() enters no such map
            self.warn(problem)
            return
        self.cf.maps[name] = MapSpec(name, mclass, str(tok.get("MAPARGS", "")),
                                     self.path, self.lineno)

    def do_precedence(self, tree):
        tok = self._tokens(tree)
        name = tok["PNAME"]
        value = tok.get("PVALUE", "").strip()
        digits = value[1:] if value[:1] in "+-" else value
        end = 0
        while end < len(digits) and digits[end].isdigit():
            end += 1
        number = int(digits[:end]) if end else 0       # atoi()
        self.cf.precedences[name] = -number if value[:1] == "-" else number
        self.origin("P", name)

    def do_trusted(self, tree):
        words = str(tree.children[0]).split() if tree.children else []
        for word in words:
            if word not in self.cf.trusted_users:
                self.cf.trusted_users.append(word)
        self.add_class("t", words)

    def do_environ(self, tree):
        tok = self._tokens(tree)
        name = tok["ENAME"]
        self.cf.environ[name] = tok.get("EVALUE", "") if "=" in self.text else None
        self.origin("E", name)

    def do_l_line(self, tree):
        self.cf.other_lines.append(("L", self.text[1:], self.path, self.lineno))

    def do_g_line(self, tree):
        self.cf.other_lines.append(("G", self.text[1:], self.path, self.lineno))


def parse_text(text, path="sendmail.cf", warn=None):
    """Parse the text of a cf (path is used in messages and origins)."""
    reader = _Reader(path, warn)
    for lineno, parts in logical_lines(text):
        if parts[0][:1] == "#":
            continue
        line = _strip_comments("\n".join(parts))
        if not line:
            continue
        reader.line(lineno, line)
    return reader.cf


def _decode(data):
    return data.decode("utf-8", "surrogateescape")


def parse(path, warn=None):
    """Read and parse a cf; no cache."""
    return parse_text(_decode(_read(path)), path, warn)


# ---------------------------------------------------------------- the cache

def load(path, warn=None, cache_dir=None):
    """The CfConfig of the cf at path: its compiled form (cf_cache: `<path>.compiled`, then
    cache_dir) when that was made from the same contents, else parsed (and then cached
    when cache_dir is given)."""
    data = _read(path)
    cf = cf_cache.lookup(path, data, cache_dir, warn)
    if cf is None:
        cf = parse_text(_decode(data), path, warn)
        if cache_dir is not None:
            cf_cache.write(cf_cache.cache_file(path, cache_dir), cf_cache.digest(data), cf)
    return cf


def compile_to(path, out=None):
    """Write the compiled form of the cf at path to out (default `<path>.compiled`), for
    load() to find without the parser; raises CfError if the cf is broken."""
    data = _read(path)
    cf = parse_text(_decode(data), path)
    if not cf_cache.write(out or cf_cache.compiled_file(path), cf_cache.digest(data), cf):
        raise OSError("cannot write %s" % (out or cf_cache.compiled_file(path)))
    return cf

"""`sendmail -bt`: Sendmail 8.17's address test mode, answering byte for byte as it does.

Reads commands from stdin, one a line, prints the prompt "> " before each read (input is
not echoed) and answers on stdout:

  3,0 ADDR          rulesets (numbers or names) applied in turn, with their trace lines
  =Sn / =M          a ruleset's rules / the mailers
  $x  $=X           a macro's value / a class's members
  .Dx value  .Cx v  define a macro / add to a class
  /parse ADDR       Sendmail's parseaddr(): Cracked address, rulesets 3 and 0, buildaddr
  /try MAILER ADDR  the rewriting one address gets for that mailer; /tryflags hesr
  /canon HOST       getcanonname() through the HostsFile option (no DNS)
  /map NAME KEY     a map lookup
  /mx HOST          MX lookup: no resolver is contacted; Sendmail's failure text

At end of input the exit status is that of the last error (0 without one).

Security stance: read-only.  It reads the cf named by -C and the files it names (class
files, the hosts file, the service switch); it writes nothing, opens no socket and runs
no program.  Maps that would run programs or query the network are not built.
"""
import os
import sys

EX_OK = 0
EX_UNAVAILABLE = 69
EX_OSERR = 71
EX_CONFIG = 78
# Sendmail's syserr() sets EX_OSERR when errno is set, EX_SOFTWARE when it is 0; errno is
# practically never 0 by then (a failed open or isatty before), so its errors give 71.
EX_SYSERR = EX_OSERR

BANNER = ("ADDRESS TEST MODE (ruleset 3 NOT automatically invoked)\n"
          "Enter <ruleset> <address>\n")


# ------------------------------------------------------------------ environment
def read_table(path):
    """The lines of a text file as lists of words, `#` comments dropped; raises OSError."""
    with open(path, "rb") as f:
        data = f.read().decode("utf-8", "replace")
    return [w for w in (ln.split("#", 1)[0].split() for ln in data.splitlines()) if w]


def make_canonify(hosts_file):
    """getcanonname() over a hosts file: the first name of the line naming the host (or
    holding the address of a [literal]); None when absent."""
    names, addrs = {}, {}
    try:
        rows = read_table(hosts_file)
    except OSError:
        rows = []
    for parts in rows:
        if len(parts) > 1:
            addrs.setdefault(parts[0].lower(), parts[1])
            for n in parts[1:]:
                names.setdefault(n.lower(), parts[1])

    def canonify(host):
        if host.startswith("[") and host.endswith("]"):
            a = host[1:-1].lower()
            return addrs.get(a[5:] if a.startswith("ipv6:") else a)
        return names.get(host.lower().rstrip("."))
    return canonify


# ------------------------------------------------------------------ crackaddr
_SPECIALS = '()<>@,;:\\".[]'


def crackaddr(addr):
    """The template Sendmail's crackaddr() makes of an address: the address proper
    replaced by $g; the phrase, angle brackets and comments kept.  A phrase before a
    top-level colon (group or route syntax) is kept, quoted when it holds specials."""
    s = addr.strip()
    n, i, depth = len(s), 0, 0
    lt = gt = colon = None
    quote = bracket = seen_addr = False
    lead, trail = [], []        # comments before / after the first address character
    while i < n:
        c = s[i]
        if c == "\\" or quote:
            seen_addr = True
            quote = quote and c != '"'
            i += 2 if c == "\\" else 1
            continue
        if c == "(":
            start, d = i, 0
            while i < n:
                if s[i] == "\\":
                    i += 2
                    continue
                if s[i] == "(":
                    d += 1
                elif s[i] == ")":
                    d -= 1
                    if d == 0:
                        break
                i += 1
            (trail if seen_addr else lead).append(s[start:i + 1])
            i += 1
            continue
        if c == '"':
            quote = seen_addr = True
        elif c == "[" and lt is None:
            bracket = True
            seen_addr = True
        elif c == "]" and bracket:
            bracket = False
        elif c == "<" and depth == 0 and lt is None:
            lt = i
            depth = 1
        elif c == "<":
            depth += 1
        elif c == ">" and depth > 0:
            depth -= 1
            if depth == 0 and gt is None:
                gt = i
        elif c == ":" and lt is None and colon is None and not bracket:
            colon = i
        elif not c.isspace():
            seen_addr = True
        i += 1
    if lt is not None:
        inner = s[lt + 1:gt] if gt is not None else s[lt + 1:]
        if gt is None and not inner.strip():
            return s[:lt] + "<>"
        if gt is not None and not inner:
            return s
        after = s[gt + 1:] if gt is not None else ""
        after = after.lstrip(">")
        return s[:lt] + "<$g>" + after
    if colon is not None:
        phrase = s[:colon]
        rest = s[colon + 1:]
        space = rest[:len(rest) - len(rest.lstrip())]
        if any(ch in _SPECIALS for ch in phrase):
            phrase = '"' + phrase + '"'
        return phrase + ":" + space + "$g" + (";" if s.endswith(";") else "")
    if not seen_addr:
        return s
    if s == '""':
        return ""
    if s == ";":
        return ";$g"
    out = "".join(c + " " for c in lead) + "$g"
    if trail:
        out += " " + " ".join(trail)
    return out


# ------------------------------------------------------------------ the session
class AddrTest:
    """One -bt session over a loaded cf."""

    def __init__(self, cf, options, hostname, out, warn=None):
        from ..config.rewrite import Engine
        from ..config import maps as maps_mod
        self.cf = cf
        self.out = out
        self.status = EX_OK
        opts = dict(cf.options)
        opts.update(options)
        self.options = opts
        self.operator_chars = opts.get("OperatorChars") or ".:%@!^/[]+"
        self.spacesub = opts.get("BlankSub") or " "
        self.canonify = make_canonify(opts.get("HostsFile") or "/etc/hosts")
        try:
            rows = read_table(opts.get("ServiceSwitchFile") or "/etc/mail/service.switch")
        except OSError:
            rows = []
        self.services = {r[0].rstrip(":"): r[1:] for r in rows}
        self.macros = dict(cf.macros)
        fq = hostname.rstrip(".")
        if "." not in fq:
            fq = self.canonify(fq) or fq
        short = fq.split(".", 1)[0]
        self.macros.setdefault("w", short)
        self.macros.setdefault("j", fq)
        if "." in fq:
            self.macros.setdefault("m", fq.split(".", 1)[1])
        for k in ("j", "w", "m"):
            v = self.macros.get(k)
            if v and "$" in v:
                self.macros[k] = self.expand(v)
        self.classes = {}
        self.add_class("w", [self.macros["j"], self.macros["w"], "localhost", "[127.0.0.1]"])
        for name, words in cf.classes.items():
            self.add_class(name, [self.expand(w) for w in words])
        complaints = []
        for cfile in cf.class_files:
            self.read_class_file(cfile, complaints)
        for line, text in config_warnings(cf):
            self.error(EX_SYSERR)
            complaints.append((line, text))
        if warn is not None:
            for _line, text in sorted(complaints, key=lambda c: c[0]):
                warn(text)
        self.maps = {}
        for name, spec in cf.maps.items():
            try:
                words = (spec.args or "").split()
                m = maps_mod.make_map(name, spec.mclass, words, macros=self.macros,
                                      maps=self.maps, canonify=self.canonify,
                                      services=self.services)
            except Exception:  # noqa: BLE001 - a map we cannot build is absent, as Sendmail's
                m = None
            if m is not None:
                self.maps[name] = m
        rulesets = {num: [(r.lhs, r.rhs) for r in rs.rules] for num, rs in cf.rulesets.items()}
        self.engine = Engine(rulesets, self.classes, self.macros, self.maps,
                             dict(cf.ruleset_names), canonify=self.canonify,
                             trace=self._trace, operator_chars=self.operator_chars,
                             spacesub=self.spacesub)
        self.tryflags = ("e", "r")   # envelope, recipient

    # ---- helpers
    def write(self, text):
        self.out.write(text)

    def _trace(self, line):
        self.write(line + "\n")

    def expand(self, value, depth=0):
        """$x and ${name} in value replaced by their values (as readcf does for C lines)."""
        out, i = [], 0
        while i < len(value):
            if value[i] != "$" or i + 1 >= len(value) or depth >= 10:
                out.append(value[i])
                i += 1
                continue
            k = value.find("}", i) if value[i + 1] == "{" else i + 1
            k = len(value) - 1 if k < 0 else k
            name = value[i + 2:k] if value[i + 1] == "{" else value[i + 1]
            out.append(self.expand(self.macros.get(name, ""), depth + 1))
            i = k + 1
        return "".join(out)

    def add_class(self, name, words):
        members = self.classes.setdefault(name, [])
        seen = {m.lower() for m in members}
        for w in words:
            for word in w.split():
                if word.lower() not in seen:
                    seen.add(word.lower())
                    members.append(word)
        if hasattr(self, "engine"):
            self.engine._folded.pop(name, None)

    def read_class_file(self, cfile, complaints):
        path = cfile.path
        if path.startswith("|"):
            return
        try:
            rows = read_table(path)
        except OSError as e:
            if not cfile.optional:
                self.error(EX_SYSERR)
                complaints.append((cfile.line, "%s: line %d: fileclass: cannot open '%s': %s"
                                   % (cfile.file, cfile.line, path, os.strerror(e.errno))))
            return
        self.add_class(cfile.name, [w for row in rows for w in row])

    def error(self, code):
        """Sendmail's ExitStat: the first error's code sticks (a temporary failure
        gives way to a later error)."""
        if self.status in (EX_OK, 75):
            self.status = code

    def tokens(self, text, comments):
        from ..config.tokenize import prescan
        return prescan(text, self.operator_chars, comments=comments)

    def detok(self, toks):
        from ..config.tokenize import detokenize
        return detokenize(toks, self.spacesub, self.operator_chars)

    # ---- dispatch
    def line(self, line):
        """Answer one input line (without its newline)."""
        line = line.rstrip("\r\n")
        p = line.lstrip(" \t")
        if not p or p.startswith("#"):
            return
        handler = {"$": self.cmd_macro, ".": self.cmd_define, "=": self.cmd_show,
                   "/": self.cmd_slash}.get(p[0], self.cmd_rulesets)
        handler(p)

    def cmd_macro(self, p):
        is_class = p.startswith("$=")
        name = p[2 if is_class else 1:].strip()
        if name.startswith("{"):
            name = name[1:].rstrip("}")
        if is_class:
            self.write("".join(m + "\n" for m in self.classes.get(name, ())))
            return
        value = self.macros.get(name)
        # as xputs(): references to other macros are shown, not expanded
        self.write("Undefined\n" if value is None else value + "\n")

    def cmd_define(self, p):
        if len(p) < 3:
            self.write("Undefined or unknown command\n")
            return
        kind, rest = p[1], p[2:]
        if rest.startswith("{"):
            k = rest.find("}")
            name, value = rest[1:k], rest[k + 1:]
        else:
            name, value = rest[0], rest[1:]
        value = value.strip()
        if kind == "D":
            self.macros[name] = value
        elif kind == "C":
            self.add_class(name, [self.expand(value)])
        else:
            self.write("Unknown \".\" command %s\n" % p)

    def cmd_show(self, p):
        if p.startswith("=S"):
            name = p[2:].strip()
            number = self.engine.ruleset_number(name)
            if number is None or number not in self.cf.rulesets:
                self.write("Undefined ruleset %s\n" % name)
                return
            for lhs, rhs in self.engine._compile(number):
                self.write("R" + "".join(t + " " for t in lhs) + "\t\t"
                           + "".join(t + " " for t in rhs) + "\n")
        elif p.startswith("=M"):
            for i, (name, m) in enumerate(self.cf.mailers.items()):
                eol = m.eol.replace("\r", "\\r").replace("\n", "\\n")
                self.write("mailer %d (%s): P=%s S=%s R=%s M=%s U=0:0 F=%s L=%s E=%s T=%s "
                           "r=%s A=%s\n" % (i, name, m.path or "", m.sender_rw or "0/0",
                                             m.recipient_rw or "0/0", m.maxsize or 0, m.flags,
                                             m.field("L") or 0, eol, m.field("T") or "",
                                             m.field("r") or 0, m.argv or ""))
        else:
            self.write("Unknown \"=\" command %s\n" % p)

    def cmd_slash(self, p):
        word, _, rest = p.partition(" ")
        rest = rest.strip()
        cmd = word[1:]
        if cmd == "parse":
            return self.cmd_parse(rest)
        if cmd == "try":
            mailer, _, addr = rest.partition(" ")
            return self.cmd_try(mailer, addr.strip())
        if cmd == "tryflags":
            return self.cmd_tryflags(rest)
        if cmd == "canon":
            host = rest.split()[0] if rest else ""
            name = self.canonify(host) or host
            self.write("getcanonname(%s) returns %s\n" % (host, name))
            return
        if cmd == "map":
            name, _, key = rest.partition(" ")
            return self.cmd_map(name, key.strip())
        if cmd == "mx":
            return self.cmd_mx(rest.split()[0] if rest else "")
        self.write("Unknown \"/\" command %s\n" % word)

    def cmd_mx(self, host):
        """getmxrr(): without "dns" for hosts in the service switch Sendmail does not use
        the name server and answers with the host itself; with it, no name server is asked
        here (none is reachable in a test), which is Sendmail's failed lookup: -1."""
        if "dns" not in self.services.get("hosts", ["dns"]):
            self.write("getmxrr(%s) returns 1 value(s):\n\t%s\n" % (host, host))
        else:
            self.write("getmxrr(%s) returns -1 value(s):\n" % host)

    def cmd_tryflags(self, flags):
        hdr, sender = self.tryflags
        for c in flags.lower():
            hdr = c if c in "he" else hdr
            sender = c if c in "sr" else sender
        self.tryflags = (hdr, sender)

    def _flags_text(self):
        return ("header" if self.tryflags[0] == "h" else "envelope",
                "sender" if self.tryflags[1] == "s" else "recipient")

    def cmd_map(self, name, key):
        from ..config.maps import TempFail
        m = self.maps.get(name)
        if m is None:
            self.write("Map named \"%s\" not found\n" % name)
            return
        try:
            value, st = m.lookup(key, ()), 0
        except TempFail:
            value, st = None, 75
        found = "no match" if value is None else "returns " + value
        self.write("map_lookup: %s (%s) %s (%d)\n" % (name, key, found, st))

    def _mailer_rw(self, mailer, sender, header):
        spec = mailer.sender_rw if sender else mailer.recipient_rw
        if not spec:
            return None
        parts = spec.split("/")
        rs = (parts[1] if header and len(parts) > 1 else parts[0]).strip()
        return None if not rs or rs == "0" else rs

    def cmd_try(self, mailer_name, addr):
        mailer = self.cf.mailers.get(mailer_name)
        if mailer is None:
            self.write("Unknown mailer %s\n" % mailer_name)
            return
        hdr, who = self._flags_text()
        self.write("Trying %s %s address %s for mailer %s\n" % (hdr, who, addr, mailer_name))
        scan = self.tokens(addr, True)
        toks = scan.tokens or []
        toks, st = self.engine.rewrite(3, toks)
        sender = self.tryflags[1] == "s"
        toks, st = self.engine.rewrite(1 if sender else 2, toks)
        rs = self._mailer_rw(mailer, sender, self.tryflags[0] == "h")
        if rs is not None:
            toks, st = self.engine.rewrite(rs, toks)
        toks, st = self.engine.rewrite(4, toks)
        self.write("Rcode = %d, addr = %s\n" % (st, self.detok(toks)))

    def cmd_rulesets(self, p):
        from ..config.tokenize import prescan
        parts = p.split(None, 1)
        if len(parts) < 2:
            self.write("No address!\n")
            return
        names, rest = parts[0].split(","), parts[1]
        rulesets = []
        for name in names:
            number = self.engine.ruleset_number(name)
            if number is None:
                self.write("Undefined ruleset %s\n" % name)
                return
            rulesets.append(number)
        while True:
            scan = prescan(rest, self.operator_chars, comments=False, delim=",")
            for msg in scan.errors:
                self.write("%s... %s\n" % (rest[:scan.end] if scan.end < len(rest) else rest,
                                           msg.split(" ", 1)[1] if msg[:1].isdigit() else msg))
            if scan.tokens is not None:
                toks = scan.tokens
                for rs in rulesets:
                    toks, st = self.engine.rewrite(rs, toks)
                    if st not in (0, 70):
                        break
            if scan.end >= len(rest):
                break
            rest = rest[scan.end + 1:]
            if not rest.strip():
                break

    # ---- /parse
    def cmd_parse(self, addr):
        from ..config.rewrite import resolve
        self.write("Cracked address = %s\n" % crackaddr(addr))
        hdr, who = self._flags_text()
        self.write("Parsing %s %s address\n" % (hdr, who))
        scan = self.tokens(addr, True)
        for msg in scan.errors:
            self.write("%s... %s\n" % (addr, msg.split(" ", 1)[1] if msg[:1].isdigit() else msg))
        if not scan.tokens:
            self.write("Cannot parse\n")
            return
        toks, st = self.engine.rewrite(3, scan.tokens)
        toks, st = self.engine.rewrite(0, toks)
        parts = resolve(toks, self.spacesub, self.operator_chars)
        if parts is None:
            self.write("buildaddr: no mailer in parsed address\n")
            self.error(EX_SYSERR)
            self.write("mailer *error*, user \n")
            return
        mailer_name, host, user = parts
        user_toks = self._user_tokens(toks)
        if mailer_name == "error":
            text = user.replace('"', "")
            if len(text) > 4 and text[:3].isdigit() and text[3] == " ":
                text = text[4:]
            self.write("%s... %s\n" % (addr, text))
            self.error(self._dsn_status(host))
            self.write("mailer *error*%s, user %s\n" % (", host " + host if host else "", user))
            return
        mailer = self.cf.mailers.get(mailer_name)
        if mailer is None:
            self.write("buildaddr: unknown mailer %s\n" % mailer_name)
            self.error(EX_SYSERR)
            self.write("mailer *error*, user \n")
            return
        flags = mailer.flags
        rs = self._mailer_rw(mailer, self.tryflags[1] == "s", self.tryflags[0] == "h")
        if "@" in flags and user_toks and user_toks[0] == "@":
            user_toks = user_toks[1:]
        first = user_toks[0] if user_toks else ""
        if first.startswith('"'):
            first = first[1:]
        special = None
        if first.startswith("|") and "|" in flags:
            special = "prog"
        elif first.startswith("/") and "/" in flags:
            special = "*file*"
        elif ":" in flags and self.detok(user_toks).lower().startswith(":include:"):
            special = "*include*"
        if special is not None:
            mailer_name = special
            mailer = self.cf.mailers.get(special)
            if mailer is not None:
                flags = mailer.flags
                rs = self._mailer_rw(mailer, self.tryflags[1] == "s",
                                     self.tryflags[0] == "h")
            else:
                flags, rs = _BUILTIN_FLAGS[special], None
        sender = self.tryflags[1] == "s"
        t, st = self.engine.rewrite(1 if sender else 2, user_toks)
        if rs is not None:
            t, st = self.engine.rewrite(rs, t)
        t, st = self.engine.rewrite(4, t)
        user = self.detok(t)
        if "u" not in flags:
            user = user.lower()
        if host and "h" not in flags:
            host = host.lower()
        hostpart = ", host " + host if host else ""
        self.write("mailer %s%s, user %s\n" % (mailer_name, hostpart, user))

    @staticmethod
    def _user_tokens(toks):
        out = None
        for t in toks:
            if t == "$:" and type(t) is not str:
                out = []
            elif out is not None:
                out.append(t)
        return out or []

    @staticmethod
    def _dsn_status(host):
        """Sendmail's dsntoexitstat() for the $@ of the error mailer (5.1.x: addressing)."""
        parts = (host or "").split(".")
        if len(parts) == 3 and parts[0] == "4":
            return 75
        if len(parts) == 3 and parts[0] == "5" and parts[1] == "1":
            return {"1": 67, "2": 68, "3": 68}.get(parts[2], EX_UNAVAILABLE)
        return EX_UNAVAILABLE


# Sendmail's built-in mailers, used when the cf defines none of that name.
_BUILTIN_FLAGS = {"prog": "lsouDq9", "*file*": "lsDFMPEouq9", "*include*": "su"}


def config_warnings(cf):
    """readcf's complaints about option values: [(line, text)] (a TrustedUser unknown)."""
    import pwd
    out = []
    for name, value, file, line in cf.option_list:
        user = (value or "").strip()
        if name == "TrustedUser" and user and not user.isdigit():
            try:
                pwd.getpwnam(user)
            except KeyError:
                out.append((line, "%s: line %d: readcf: option %s: unknown user %s"
                            % (file, line, name, user)))
    return out


def _hostname():
    return os.uname().nodename or "localhost"


def run(cf, options, infile, out, hostname=None, warn=None):
    """Run a session over *infile*; returns the exit status."""
    session = AddrTest(cf, options, hostname or _hostname(), out, warn=warn)
    out.write(BANNER)
    while True:
        out.write("> ")
        out.flush()
        line = infile.readline()
        if not line:
            break
        session.line(line)
    return session.status


def main(inv, layout, options, ident, log):
    """The `-bt` mode of the sendmail command."""
    from ..config import cf as cfmod
    from ..errors import MTAError
    path = inv.cf or layout.cf
    out = sys.stdout
    warnings = []
    try:
        cf = cfmod.load(path, warn=warnings.append)
    except MTAError as e:
        out.write("%s\n" % e.message)
        return EX_CONFIG
    for w in warnings:
        out.write("%s\n" % w)
    opts = dict(options)
    opts.update(inv.options)
    return run(cf, opts, sys.stdin, out, warn=lambda m: out.write(m + "\n"))

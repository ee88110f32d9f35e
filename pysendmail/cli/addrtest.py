"""`sendmail -bt`: Sendmail 8.17's address test mode, answering byte for byte as it does.

Reads commands from stdin, one a line, prints the prompt "> " before each read (input is
not echoed) and answers on stdout: `3,0 ADDR` (rulesets, numbers or names, applied in turn
with their trace lines), `=Sn` `=M` (a ruleset's rules, the mailers), `$x` `$=X` (a macro,
a class), `.Dx value` `.Cx words`, `/parse ADDR` (parseaddr: Cracked address, rulesets 3
and 0, buildaddr), `/try MAILER ADDR`, `/tryflags HhEeSsRr`, `/canon HOST` (through the
HostsFile option, no DNS), `/map NAME KEY`, `/mx HOST` (see cmd_mx), `/quit`.  At end of
input the exit status is that of the first error (0 without one), as Sendmail's ExitStat.

Security stance: read-only.  It reads the cf named by -C and the files it names (class
files, the hosts file, the service switch); it writes nothing, opens no socket and runs
no program.  Maps that would run programs or query the network are not built.
"""
import os
import re
import sys

from ..config.maps import TempFail
from ..config.rewrite import Engine, resolve
from ..config.crackaddr import crackaddr
from ..config.tokenize import detokenize, prescan

EX_OK, EX_UNAVAILABLE, EX_TEMPFAIL, EX_CONFIG = 0, 69, 75, 78
# syserr() gives EX_OSERR (71) when errno is set (EX_SOFTWARE if 0): practically always.
EX_SYSERR = 71

BANNER = ("ADDRESS TEST MODE (ruleset 3 NOT automatically invoked)\n"
          "Enter <ruleset> <address>\n")
USAGE = {"mx": "/mx address", "canon": "/canon address", "map": "/map mapname key",
         "try": "/try mailer address", "tryflags": "/tryflags [Hh|Ee][Ss|Rr]",
         "parse": "/parse address", "-": "Usage: -d{debug arguments}\n"}
# Sendmail's built-in mailers, used when the cf defines none of that name.
BUILTIN_FLAGS = {"prog": "lsouDq9", "*file*": "lsDFMPEouq9"}


# ------------------------------------------------------------------ environment
def read_table(path, quiet=False):
    """A text file's lines as lists of words, `#` comments dropped; OSError or [] (quiet)."""
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        if quiet:
            return []
        raise
    return [w for w in (ln.split("#", 1)[0].split() for ln in data.splitlines()) if w]


def stab_hash(name):
    """A class member's bucket in Sendmail's symbol table, the order $=X lists members in."""
    h = 1
    for b in name.encode("utf-8", "surrogateescape"):
        h = ((h << 1) ^ (b + 32 if 65 <= b <= 90 else b)) % 2003
    return h


def make_canonify(hosts_file):
    """getcanonname() over a hosts file: the first name of the line naming the host (or
    the [address]), else None; canonify.hostent(name): (name, aliases, IPv4 addresses)."""
    names, addrs, lines = {}, {}, read_table(hosts_file, quiet=True)
    for parts in lines:
        if len(parts) > 1:
            addrs.setdefault(parts[0].lower(), parts[1])
            for n in parts[1:]:
                names.setdefault(n.lower(), parts[1])

    def hostent(name):
        rows = [r for r in lines if ":" not in r[0] and name.lower() in
                (n.lower() for n in r[1:])]
        return rows and (rows[0][1], [a for r in rows for a in r[2:]], [r[0] for r in rows])

    def canonify(host):
        if host.startswith("[") and host.endswith("]"):
            a = host[1:-1].lower()
            return addrs.get(a[5:] if a.startswith("ipv6:") else a)
        return names.get(host.lower().rstrip("."))
    canonify.hostent = hostent
    return canonify


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


class AddrTest:
    """One -bt session over a loaded cf."""

    def __init__(self, cf, options, hostname, out, warn=None):
        from ..config import maps as maps_mod
        self.cf, self.out, self.status, self.write = cf, out, EX_OK, out.write
        self.options = opts = dict(cf.options)
        opts.update(options)
        self.operator_chars = opts.get("OperatorChars") or ".:%@!^/[]+"
        self.spacesub = opts.get("BlankSub") or " "
        self.canonify = make_canonify(opts.get("HostsFile") or "/etc/hosts")
        rows = read_table(opts.get("ServiceSwitchFile") or "/etc/mail/service.switch", True)
        self.services = {r[0].rstrip(":"): r[1:] for r in rows}
        self.macros = dict(cf.macros)
        # myhostname(): the host's entry names it, with its aliases and addresses, in $=w
        fq, aliases, addrs = self.canonify.hostent(hostname) or (hostname, [], [])
        if "." not in fq:
            fq = next((a for a in aliases if "." in a), hostname if "." in hostname else fq)
        self.macros.setdefault("w", fq.split(".", 1)[0])
        self.macros.setdefault("j", fq)
        if "." in fq:
            self.macros.setdefault("m", fq.split(".", 1)[1])
        for k in ("j", "w", "m"):
            if "$" in self.macros.get(k, ""):
                self.macros[k] = self.expand(self.macros[k])
        self.classes = {}
        self.add_class("w", [fq, fq.split(".", 1)[0]] + aliases + ["[%s]" % a for a in addrs])
        for name, words in cf.classes.items():
            self.add_class(name, [self.expand(w) for w in words])
        complaints = []
        for cfile in cf.class_files:
            self.read_class_file(cfile, complaints)
        for file, line, msg, text in cf.warnings:       # readcf's syserrs, Sendmail's form
            complaints.append((line, "%s: line %d: %s%s" % (file, line, msg, ' "%s"' % text
                               if msg == "unknown configuration line" else "")))
        complaints += config_warnings(cf)
        if complaints:
            self.error(EX_SYSERR)
        for _line, text in sorted(complaints, key=lambda c: c[0]) if warn else ():
            warn(text)
        self.maps = {}
        for name, spec in cf.maps.items():
            try:
                m = maps_mod.make_map(name, spec.mclass, (spec.args or "").split(),
                                      macros=self.macros, maps=self.maps,
                                      canonify=self.canonify, services=self.services)
            except Exception:  # noqa: BLE001 - a map we cannot build is absent, as Sendmail's
                m = None
            if m is not None:
                self.maps[name] = m
        rulesets = {num: [(r.lhs, r.rhs) for r in rs.rules] for num, rs in cf.rulesets.items()}
        self.engine = Engine(rulesets, self.classes, self.macros, self.maps,
                             dict(cf.ruleset_names), canonify=self.canonify,
                             trace=lambda line: self.write(line + "\n"),
                             operator_chars=self.operator_chars, spacesub=self.spacesub)
        self.header = self.sender = False       # /tryflags: envelope recipient
        self.level = int(re.match(r"\d*", cf.version or "").group() or 0)   # ConfigLevel
        self.colon_ok = opts.get("ColonOkInAddr", "").lower() in ("true", "t", "yes", "y")

    # ---- helpers
    def expand(self, value, depth=0):
        """$x and ${name} in value replaced by their values (as readcf does for C lines)."""
        return value if depth >= 10 else re.sub(
            r"\$(?:\{([^}]*)\}?|(.))", lambda m: self.expand(
                self.macros.get(m.group(1) or m.group(2), ""), depth + 1), value)

    def add_class(self, name, words):
        members = self.classes.setdefault(name, [])
        seen = {m.lower() for m in members}
        for word in (x for w in words for x in w.split()):
            if word.lower() not in seen:
                seen.add(word.lower())
                members.append(word)
        if hasattr(self, "engine"):
            self.engine._folded.pop(name, None)     # the engine caches folded classes

    def read_class_file(self, cfile, complaints):
        if cfile.path.startswith("|"):
            return
        try:
            rows = read_table(cfile.path)
        except OSError as e:
            if not cfile.optional:
                self.error(EX_SYSERR)
                complaints.append((cfile.line, "%s: line %d: fileclass: cannot open '%s': %s"
                                   % (cfile.file, cfile.line, cfile.path,
                                      os.strerror(e.errno))))
            return
        self.add_class(cfile.name, [w for row in rows for w in row])

    def error(self, code):
        """Sendmail's ExitStat: the first error's code sticks (a temporary failure
        gives way to a later error)."""
        if self.status in (EX_OK, EX_TEMPFAIL):
            self.status = code

    def tokens(self, text, comments):
        return prescan(text, self.operator_chars, comments=comments)

    def detok(self, toks):
        return detokenize(toks, self.spacesub, self.operator_chars)

    def usrerr(self, addr, msg):
        """An error about an address: "ADDR... text" (the SMTP code dropped)."""
        if len(msg) > 4 and msg[:3].isdigit() and msg[3] == " ":
            msg = msg[4:]
        self.write("%s... %s\n" % (addr, msg))

    def flags_text(self):
        return ("header" if self.header else "envelope",
                "sender" if self.sender else "recipient")

    # ---- dispatch
    def line(self, line):
        """Answer one input line (without its newline)."""
        p = line.rstrip("\r\n").lstrip(" ")
        if not p or p[0] == "#" or p[0] == "?":
            return
        handler = {"$": self.cmd_macro, ".": self.cmd_define, "=": self.cmd_show,
                   "/": self.cmd_slash, "-": self.cmd_debug}.get(p[0], self.cmd_rulesets)
        handler(p)

    @staticmethod
    def _name(text):
        """A macro/class name at the start of text: (name, rest)."""
        if text.startswith("{"):
            k = text.find("}")
            return (text[1:k], text[k + 1:]) if k > 0 else (text[1:], "")
        return text[:1], text[1:]

    def cmd_macro(self, p):
        if p.startswith("$="):
            name = self._name(p[2:])[0]
            members = sorted(self.classes.get(name, ()), key=stab_hash)
            self.write("".join(m + "\n" for m in members))
            return
        name = self._name(p[1:])[0]
        if name:
            value = self.macros.get(name)
            # as xputs(): references to other macros are shown, not expanded
            self.write("Undefined\n" if value is None else value + "\n")

    def cmd_define(self, p):
        kind = p[1:2]
        if kind in ("D", "C") and len(p) > 2:
            name, value = self._name(p[2:])
            if name and kind == "D":
                self.macros[name] = value
            elif name:
                self.add_class(name, [self.expand(value)])
        elif not kind:
            self.write("Usage: .[DC]macro value(s)\n")
        elif kind not in ("D", "C"):
            self.write("Unknown \".\" command %s\n" % p)

    def cmd_debug(self, p):
        if p[1:2] != "d":       # -dX.Y, debug flags: none are traced here
            self.write("Unknown \"-\" command %s\n" % p if p[1:] else USAGE["-"])

    def cmd_show(self, p):
        if p.startswith("=S"):
            name = p[2:]
            number = self.engine.ruleset_number(name)
            if number is None or not 0 <= number < 200:
                self.write("Undefined ruleset %s\n" % name)
                return
            for lhs, rhs in (self.engine._compile(number) if number in self.cf.rulesets
                             else ()):
                self.write("R" + "".join(t + " " for t in lhs) + "\t\t"
                           + "".join(t + " " for t in rhs) + "\n")
        elif p.startswith("=M"):
            for i, (name, m) in enumerate(self.cf.mailers.items()):
                self.printmailer(i, name, m)
        else:
            self.write("Usage: =Sruleset or =M\n" if len(p) == 1
                       else "Unknown \"=\" command %s\n" % p)

    def printmailer(self, i, name, m):
        """printmailer()'s line; the mailers are numbered in cf order."""
        def rs(n):
            n = self.engine.ruleset_number(n.strip()) if n.strip() else -1
            return self.engine.numbers_to_names.get(n, str(n))
        se, re_ = [(x or "").split("/") * 2 for x in (m.sender_rw, m.recipient_rw)]
        t = ((m.field("T") or "").split("/") + ["", ""])[:3]
        self.write("mailer %d (%s): P=%s S=%s/%s R=%s/%s M=%d U=0:0 F=%s L=%s E=%s T=%s r=%s "
                   "A=%s\n" % (i, name, m.path or "", rs(se[0]), rs(se[1]), rs(re_[0]),
                               rs(re_[1]), m.maxsize or 0, "".join(sorted(set(m.flags))),
                               m.field("L") or 0, repr(m.eol)[1:-1],
                               "/".join(x or "<undefined>" for x in t), m.field("r") or 100,
                               " ".join((m.argv or "").split())))

    def cmd_slash(self, p):
        p = p.rstrip()
        k = min([j for j in (p.find(" "), p.find("\t")) if j >= 0] or [len(p)])
        word, rest = p[:k], p[k:].lstrip(" \t")
        cmd = word[1:].lower()
        if not cmd:
            self.write("Usage: /[canon|map|mx|parse|try|tryflags]\n")
        elif cmd == "quit":
            raise EOFError()        # /quit
        elif cmd not in USAGE or cmd == "-":
            self.write("Unknown \"/\" command %s\n" % word)
        elif not rest or (cmd == "try" and not rest.partition(" ")[2].strip()):
            self.write("Usage: %s\n" % USAGE[cmd])
        elif cmd == "parse":
            self.cmd_parse(rest)
        elif cmd == "try":
            mailer, _, addr = rest.partition(" ")
            self.cmd_try(mailer, addr.strip())
        elif cmd == "tryflags":
            for c in rest:
                self.header = {"h": True, "e": False}.get(c.lower(), self.header)
                self.sender = {"s": True, "r": False}.get(c.lower(), self.sender)
        elif cmd == "canon":
            self.write("getcanonname(%s) returns %s\n" % (rest, self.canonify(rest) or rest))
        elif cmd == "map":
            self.cmd_map(rest)
        else:
            self.cmd_mx(rest)

    def cmd_mx(self, host):
        """getmxrr(): without "dns" for hosts in the service switch Sendmail does not use
        the name server and answers with the host itself; with it, no name server is asked
        here (none is reachable in a test), which is Sendmail's failed lookup: -1."""
        if "dns" not in self.services.get("hosts", ["dns"]):
            self.write("getmxrr(%s) returns 1 value(s):\n\t%s\n" % (host, host))
        else:
            self.write("getmxrr(%s) returns -1 value(s):\n" % host)

    def cmd_map(self, rest):
        name, sep, key = rest.partition(" ")
        m = self.engine.maps.get(name)          # the cf's K maps and the built-in "host"
        if not sep or m is None:
            self.write('Map named "%s" not found\n' % name if sep else "No key specified\n")
            return
        try:
            value, st = m.lookup(key, ()), 0
        except TempFail:
            value, st = None, EX_TEMPFAIL
        found = "no match" if value is None else "returns " + value
        self.write("map_lookup: %s (%s) %s (%d)\n" % (name, key, found, st))

    @staticmethod
    def mailer_rw(mailer, sender, header):
        """The mailer's S= or R= ruleset for that kind of address ("0": none), or None."""
        parts = ((mailer.sender_rw if sender else mailer.recipient_rw) or "").split("/")
        return (parts[1] if header and len(parts) > 1 else parts[0]).strip() or None

    def rewrite(self, ruleset, toks):
        """engine.rewrite(); its errors are syserrs; an infinite loop's status is OK."""
        toks, st = self.engine.rewrite(ruleset, toks)
        if self.engine.messages:
            self.error(EX_SYSERR)
        return toks, (0 if st == 70 else st)

    def cmd_try(self, mailer_name, addr):
        """remotename(): 3, 1 or 2, the mailer's, 4, in crackaddr's template; Rcode 0/75."""
        mailer = self.cf.mailers.get(mailer_name)
        if mailer is None:
            self.write("Unknown mailer %s\n" % mailer_name)
            return
        self.write("Trying %s %s address %s for mailer %s\n"
                   % (self.flags_text() + (addr, mailer_name)))
        rs, rcode, toks = self.mailer_rw(mailer, self.sender, self.header), 0, None
        if rs is not None:
            fancy = crackaddr(addr, self.options.get("MustQuoteChars", ".'"), self.colon_ok)
            toks = self.tokens(addr, True).tokens
        for number in (3, 1 if self.sender else 2, rs, 4) if toks is not None else ():
            if number == "0":
                continue
            toks, st = self.rewrite(number, toks)
            rcode = EX_TEMPFAIL if st == EX_TEMPFAIL else rcode
        result = addr if toks is None else fancy.replace("$g", self.detok(toks))
        self.write("Rcode = %d, addr = %s\n" % (rcode, result))

    def cmd_rulesets(self, p):
        parts = p.split(None, 1)
        if len(parts) < 2:
            self.write("No address!\n")
            return
        names, rest = parts[0].split(","), parts[1]
        while True:
            scan = prescan(rest, self.operator_chars, comments=self.level < 9, delim=",")
            for msg in scan.errors:
                self.usrerr(rest, msg)
            for k, name in enumerate(names if scan.tokens is not None else ()):
                number = self.engine.ruleset_number(name)
                if number is None:
                    self.write("Undefined ruleset %s\n" % ",".join(names[k:]))
                    break
                scan.tokens, st = self.rewrite(number, scan.tokens)
                if st:
                    self.write("== Ruleset %s (%d) status %d\n" % (",".join(names[k:]),
                                                                    number, st))
            if scan.end >= len(rest):
                break
            rest = rest[scan.end + 1:]

    # ---- /parse
    def cmd_parse(self, addr):
        """parseaddr() and buildaddr(): rulesets 3 and 0, the user part through 2, the
        mailer's envelope R= and 4; prog, *file*, *include* as the mailer's F=| F=/ F=: ask."""
        self.write("Cracked address = %s\n" % crackaddr(
            addr, self.options.get("MustQuoteChars", ".'"), self.colon_ok))
        self.write("Parsing %s %s address\n" % self.flags_text())
        scan = self.tokens(addr, True)
        for msg in scan.errors:
            self.usrerr(addr, msg)
        if not scan.tokens:
            self.write("Cannot parse\n")
            return
        toks = self.rewrite(0, self.rewrite(3, scan.tokens)[0])[0]
        parts = resolve(toks, self.spacesub, self.operator_chars)
        mailer = parts and self.cf.mailers.get(parts[0])
        if parts is None or (mailer is None and parts[0] != "error"):
            self.write("buildaddr: %s\n" % ("no mailer in parsed address" if parts is None
                                            else "unknown mailer " + parts[0]))
            self.error(EX_SYSERR)
            self.write("mailer *error*, user \n")
            return
        mailer_name, host, user = parts
        k = next((k for k, t in enumerate(toks) if t == "$:" and type(t) is not str), -1)
        user_toks = list(toks[k + 1:]) if k >= 0 else []
        if mailer_name == "error":
            self.usrerr(addr, user.replace('"', ""))
            self.error(self.dsn_status(host))
            self.write("mailer *error*%s, user %s\n" % (", host " + host if host else "", user))
            return
        flags = mailer.flags
        if "@" in flags and user_toks[:1] == ["@"]:
            user_toks = user_toks[1:]
        ubuf = detokenize(user_toks, "", self.operator_chars)
        first = ubuf[1:2] if ubuf[:1] == '"' else ubuf[:1]
        if first == ":" and ":" in flags and ubuf.replace('"', "")[:9].lower() == ":include:":
            hostpart = ", host " + host if host else ""     # no further rewriting
            self.write("mailer *include*%s, user %s\n" % (hostpart, ubuf.replace('"', "")[9:]))
            return
        special = {"|": "prog", "/": "*file*"}.get(first) if first and first in flags else None
        if special is not None:
            mailer_name, mailer = special, self.cf.mailers.get(special)
            flags = mailer.flags if mailer is not None else BUILTIN_FLAGS[special]
        # V10 cfs (and envelope recipients) get 2, the mailer's envelope R=, 4; others 4
        t = user_toks
        if self.level >= 10 or not (self.sender or self.header):
            rs = self.mailer_rw(mailer, False, False) if mailer is not None else None
            t = self.rewrite(2, t)[0]
            t = self.rewrite(rs, t)[0] if rs not in (None, "0") else t
        user = self.detok(self.rewrite(4, t)[0])
        if "u" not in flags:
            user = user.lower()
        if host and "h" not in flags:
            host = host.lower()
        hostpart = ", host " + host if host else ""
        self.write("mailer %s%s, user %s\n" % (mailer_name, hostpart, user))

    @staticmethod
    def dsn_status(host):
        """Sendmail's dsntoexitstat() for the $@ of the error mailer (5.1.x: addressing)."""
        parts = (host or "").split(".") + ["", ""]
        if parts[0] == "4":
            return EX_TEMPFAIL
        return {"1": 67, "2": 68, "3": 68}.get(parts[2] if parts[:2] == ["5", "1"] else "",
                                               EX_UNAVAILABLE)


def run(cf, options, infile, out, warn=None, hostname=None):
    """Run a session over *infile*; returns the exit status."""
    session = AddrTest(cf, options, hostname or os.uname().nodename, out, warn=warn)
    out.write(BANNER)
    while True:
        out.write("> ")
        out.flush()
        line = infile.readline()
        if not line:
            break
        try:
            session.line(line)
        except EOFError:
            break
    return session.status


def main(inv, layout, options, ident, log):
    """The `-bt` mode of the sendmail command."""
    from ..config import cf as cfmod
    from ..errors import MTAError
    out = sys.stdout
    try:
        cf = cfmod.load(inv.cf or layout.cf)
    except MTAError as e:
        out.write("%s\n" % e.message)
        return EX_CONFIG
    return run(cf, dict(options, **inv.options), sys.stdin, out, lambda m: out.write(m + "\n"))

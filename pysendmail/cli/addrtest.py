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
from ..config.rules import Rules
from ..config.crackaddr import crackaddr
from ..config.tokenize import prescan

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
def stab_hash(name):
    """A class member's bucket in Sendmail's symbol table, the order $=X lists members in."""
    h = 1
    for b in name.encode("utf-8", "surrogateescape"):
        h = ((h << 1) ^ (b + 32 if 65 <= b <= 90 else b)) % 2003
    return h



class AddrTest:
    """One -bt session over a loaded cf."""

    def __init__(self, cf, options, hostname, out, warn=None, resolv_confs=("/etc/resolv.conf",)):
        self.cf, self.out, self.status, self.write = cf, out, EX_OK, out.write
        self.rules = rules = Rules(cf, options, hostname, resolv_confs=resolv_confs,
                                   trace=lambda line: self.write(line + "\n"))
        rules.on_syserr = lambda: self.error(EX_SYSERR)
        self.options, self.macros, self.classes = rules.options, rules.macros, rules.classes
        self.canonify, self.services, self.engine = rules.canonify, rules.services, rules.engine
        if rules.complaints:
            self.error(EX_SYSERR)
        for _line, text in rules.complaints if warn else ():
            warn(text)
        self.header = self.sender = False       # /tryflags: envelope recipient

    # ---- helpers
    def add_class(self, name, words):
        self.rules.add_class(name, words)

    def error(self, code):
        """Sendmail's ExitStat: the first error's code sticks (a temporary failure
        gives way to a later error)."""
        if self.status in (EX_OK, EX_TEMPFAIL):
            self.status = code

    def tokens(self, text, comments):
        return self.rules.tokens(text, comments)

    def detok(self, toks):
        return self.rules.detok(toks)

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
                self.add_class(name, [self.rules.expand(value)])
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
            for lhs, rhs in (self.engine.rules(number) if number in self.cf.rulesets
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
            try:
                name = self.canonify(rest)
            except TempFail:                # the name servers failed: the name unchanged
                name = None
            self.write("getcanonname(%s) returns %s\n" % (rest, name or rest))
        elif cmd == "map":
            self.cmd_map(rest)
        else:
            self.cmd_mx(rest)

    def cmd_mx(self, host):
        """getmxrr(): without "dns" for hosts in the service switch Sendmail does not use
        the name server and answers with the host itself; with it, the MX records by
        preference (the host itself when it has none), -1 when the name does not exist
        or the name servers failed."""
        dns = self.canonify.dns
        hosts = [host] if dns is None else dns.mx(host)
        if hosts is None:
            self.write("getmxrr(%s) returns -1 value(s):\n" % host)
            return
        self.write("getmxrr(%s) returns %d value(s):\n" % (host, len(hosts))
                   + "".join("\t%s\n" % h for h in hosts))

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

    def rewrite(self, ruleset, toks):
        return self.rules.rewrite(ruleset, toks)

    def cmd_try(self, mailer_name, addr):
        """remotename(): 3, 1 or 2, the mailer's, 4, in crackaddr's template; Rcode 0/75."""
        mailer = self.cf.mailers.get(mailer_name)
        if mailer is None:
            self.write("Unknown mailer %s\n" % mailer_name)
            return
        self.write("Trying %s %s address %s for mailer %s\n"
                   % (self.flags_text() + (addr, mailer_name)))
        rcode, result = 0, addr
        if Rules.mailer_rw(mailer, self.sender, self.header) is not None:
            result, rcode = self.rules.remotename(addr, mailer, self.sender, self.header)
        self.write("Rcode = %d, addr = %s\n" % (rcode, result))

    def cmd_rulesets(self, p):
        parts = p.split(None, 1)
        if len(parts) < 2:
            self.write("No address!\n")
            return
        names, rest = parts[0].split(","), parts[1]
        while True:
            scan = prescan(rest, self.rules.operator_chars, comments=self.rules.level < 9,
                           delim=",")
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
        """parseaddr() and buildaddr() (config/rules.py), with their trace and reports."""
        r = self.rules
        self.write("Cracked address = %s\n" % crackaddr(addr, r.must_quote, r.colon_ok))
        self.write("Parsing %s %s address\n" % self.flags_text())
        p = r.parse(addr, self.sender, self.header, usrerr=lambda m: self.usrerr(addr, m))
        if p.kind == "unparsable":
            self.write("Cannot parse\n")
            return
        if p.kind == "syserr":
            self.write(p.problem + "\n")
            self.error(EX_SYSERR)
            self.write("mailer *error*, user \n")
            return
        hostpart = ", host " + p.host if p.host else ""
        if p.kind == "error":
            self.usrerr(addr, p.user.replace('"', ""))
            self.error(p.exit)
            self.write("mailer *error*%s, user %s\n" % (hostpart, p.user))
            return
        self.write("mailer %s%s, user %s\n" % (p.mailer, hostpart, p.user))


def run(cf, options, infile, out, warn=None, hostname=None, resolv_confs=("/etc/resolv.conf",)):
    """Run a session over *infile*; returns the exit status."""
    session = AddrTest(cf, options, hostname or os.uname().nodename, out, warn=warn,
                       resolv_confs=resolv_confs)
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
        cf = cfmod.load(inv.cf or layout.cf, cache_dir=layout.cache_dir)
    except MTAError as e:
        out.write("%s\n" % e.message)
        return e.status
    return run(cf, dict(options, **inv.options), sys.stdin, out, lambda m: out.write(m + "\n"),
               resolv_confs=layout.resolv_confs)

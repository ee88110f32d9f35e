"""The cf made runnable: Sendmail's parseaddr()/buildaddr() and remotename() over a loaded cf.

`Rules(cf, options, hostname)` turns a CfConfig (config/cf.py) and the host's identity into
what the rewriting rules read at run time: the macros ($w $j $m from the host's entry in
the HostsFile, as Sendmail's myhostname()), the classes (C lines, F files, $=w with the
host's names and addresses), the maps (K lines) and the rewriting Engine.  On top of it:

  parse(addr)            parseaddr() + buildaddr(): rulesets 3 and 0 give the triple
                         `$# mailer $@ host $: user`; prog, *file* and *include* are chosen
                         by the mailer's F=| F=/ F=: flags; the user part goes through 2,
                         the mailer's envelope R= ruleset and 4, and is lower-cased unless
                         F=u.  The error mailer's $@ and $: become a status and a reply.
  remotename(addr, m)    an address as mailer m writes it: 3, then 1 (senders) or 2
                         (recipients), the mailer's S= or R= ruleset (envelope or header
                         part), 4, put back into crackaddr()'s template for header
                         addresses.

Both `-bt` (cli/addrtest.py, which adds the trace lines) and the router
(delivery/router.py) use it, so what -bt shows is what delivery does.  Pure apart from
reading the files the cf names (class files, the hosts file, the service switch, maps).
"""
import os

from .canon import make_canonify, read_switch, read_table
from .rewrite import Engine, resolve
from .tokenize import detokenize, prescan

EX_TEMPFAIL = 75
EX_UNAVAILABLE = 69
LOOP = 70
# Sendmail's built-in mailers, used when the cf defines none of that name.
BUILTIN_FLAGS = {"prog": "lsouDq9", "*file*": "lsDFMPEouq9", "*include*": "su",
                 "discard": "", "error": ""}
# buildaddr()'s ErrorCodes: $#error $@ NAME sets the exit status by name.
ERROR_CODES = {"usage": 64, "nouser": 67, "nohost": 68, "unavailable": 69,
               "software": 70, "tempfail": 75, "protocol": 76, "config": 78}


def interface_addresses():
    """The host's own addresses, as Sendmail's load_if_names() adds them to $=w:
    ["[127.0.0.1]", "[IPv6:::1]", ...] from /proc (Linux); [] where that is absent."""
    out = []
    try:
        with open("/proc/net/fib_trie", "rb") as f:
            lines = f.read().decode("ascii", "replace").splitlines()
        for prev, line in zip(lines, lines[1:]):
            if line.strip() == "/32 host LOCAL":
                a = "[%s]" % prev.split("-- ")[-1].strip()
                if a not in out:
                    out.append(a)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6", "rb") as f:
            for line in f.read().decode("ascii", "replace").splitlines():
                word = line.split()[0] if line.split() else ""
                if len(word) == 32 and not word.startswith("fe80"):
                    a = "[IPv6:%s]" % ipv6_text(word)
                    if a not in out:
                        out.append(a)
    except (OSError, ValueError):
        pass
    return out


def ipv6_text(hex32):
    """RFC 5952 text of an IPv6 address given as 32 hex digits (the longest run of two
    or more zero groups, the first of equals, becomes "::")."""
    groups = ["%x" % int(hex32[i:i + 4], 16) for i in range(0, 32, 4)]
    best, at, run = 1, -1, 0
    for i, g in enumerate(groups + ["x"]):
        if g == "0":
            run += 1
        else:
            if run > best:
                best, at = run, i - run
            run = 0
    if at < 0:
        return ":".join(groups)
    return ":".join(groups[:at]) + "::" + ":".join(groups[at + best:])


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


def dsn_status(host):
    """Sendmail's dsntoexitstat() for the $@ of the error mailer (5.1.x: addressing)."""
    parts = (host or "").split(".") + ["", ""]
    if parts[0] == "4":
        return EX_TEMPFAIL
    return {"1": 67, "2": 68, "3": 68}.get(parts[2] if parts[:2] == ["5", "1"] else "",
                                           EX_UNAVAILABLE)


def _is_status(text):
    parts = text.split(".")
    return (len(parts) == 3 and parts[0] in ("2", "4", "5")
            and all(p.isdigit() and 0 < len(p) <= 3 for p in parts))


class Parsed:
    """What parseaddr() made of an address.  `mailer` is the mailer's name ("prog",
    "*file*", "*include*" when the flags chose them; "error" for $#error and for every
    failure), `host` (None without $@), `user`.  For an error: `problem` is the text
    buildaddr reports ("Cannot parse", "buildaddr: unknown mailer X", or the $: text),
    `reply` the SMTP reply ("553 5.3.0 text"), `status` the DSN status, `exit` the
    sysexits code, `temporary` True for a 4xx, or (kind "ok") when a map failed for now
    while rewriting (Sendmail queues such an address and parses it again later).  `kind`
    says which: "ok", "unparsable"
    (prescan found no tokens), "syserr" (a configuration error: no or an unknown mailer)
    or "error" (the $#error mailer)."""

    __slots__ = ("mailer", "host", "user", "mailer_def", "problem", "reply", "status",
                 "exit", "temporary", "kind")

    def __init__(self, mailer, host=None, user="", mailer_def=None):
        self.mailer, self.host, self.user, self.mailer_def = mailer, host, user, mailer_def
        self.problem = self.reply = self.status = ""
        self.exit = 0
        self.temporary = False
        self.kind = "ok"

    @property
    def flags(self):
        if self.mailer_def is not None:
            return self.mailer_def.flags
        return BUILTIN_FLAGS.get(self.mailer, "")

    def __repr__(self):
        return "Parsed(%r, host=%r, user=%r%s)" % (
            self.mailer, self.host, self.user,
            ", reply=%r" % self.reply if self.mailer == "error" else "")


def error_result(problem, reply, status, code, kind="error"):
    p = Parsed("error", None, problem)
    p.problem, p.reply, p.status, p.exit, p.kind = problem, reply, status, code, kind
    p.temporary = reply.startswith("4")
    return p


class Rules:
    """A cf with the host's identity, ready to rewrite (see the module docstring).
    `trace(line)` receives the engine's trace lines (-bt); `complaints` lists
    (line, text) of readcf's problems (class files that cannot be read, options)."""

    def __init__(self, cf, options=None, hostname=None, trace=None, cache_dir=None,
                 resolv_confs=("/etc/resolv.conf",)):
        from . import maps as maps_mod
        self.cf = cf
        self.options = opts = dict(cf.options)
        opts.update(options or {})
        self.operator_chars = opts.get("OperatorChars") or ".:%@!^/[]+"
        self.spacesub = opts.get("BlankSub") or " "
        self.services = read_switch(opts.get("ServiceSwitchFile") or "/etc/mail/service.switch")
        self.canonify = make_canonify(opts, self.services, resolv_confs)
        self.macros = dict(cf.macros)
        hostname = hostname or os.uname().nodename
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
        self.engine = None
        self.add_class("w", [fq, fq.split(".", 1)[0]] + aliases + ["[%s]" % a for a in addrs])
        if opts.get("DontProbeInterfaces", "").lower() not in ("true", "t", "yes", "y"):
            self.add_class("w", interface_addresses())
        for name, words in cf.classes.items():
            self.add_class(name, [self.expand(w) for w in words])
        self.complaints = []
        for cfile in cf.class_files:
            self.read_class_file(cfile)
        for file, line, msg, text in cf.warnings:       # readcf's syserrs, Sendmail's form
            self.complaints.append((line, "%s: line %d: %s%s" % (
                file, line, msg, ' "%s"' % text if msg == "unknown configuration line" else "")))
        self.complaints += config_warnings(cf)
        self.complaints.sort(key=lambda c: c[0])
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
                             dict(cf.ruleset_names), canonify=self.canonify, trace=trace,
                             operator_chars=self.operator_chars, spacesub=self.spacesub)
        version = cf.version or ""
        digits = len(version) - len(version.lstrip("0123456789"))
        self.level = int(version[:digits] or 0)                            # ConfigLevel
        self.colon_ok = opts.get("ColonOkInAddr", "").lower() in ("true", "t", "yes", "y")
        self.must_quote = opts.get("MustQuoteChars", ".'")
        self.on_syserr = lambda: None       # called when a rewrite reports an error
        if cache_dir is not None:
            self._use_compiled_cache(cache_dir)

    def _use_compiled_cache(self, cache_dir):
        """The compiled rules from cache_dir, keyed on the rules, the macros they were
        compiled with and OperatorChars; compiled and stored there on a miss."""
        import marshal
        from .cf_cache import cache_file, digest, read_blob, write_blob
        rulesets = {n: [(r.lhs, r.rhs) for r in rs.rules] for n, rs in self.cf.rulesets.items()}
        key = digest(marshal.dumps((sorted(rulesets.items()), sorted(self.macros.items()),
                                    self.operator_chars)))
        where = cache_file(self.cf.path, cache_dir, "rules")
        data = read_blob(where, key)
        if data is not None:
            self.engine.import_compiled(data)
        else:
            write_blob(where, key, self.engine.export_compiled())

    # ---- the environment
    def expand(self, value, depth=0):
        """$x and ${name} in value replaced by their values (as readcf does for C lines)."""
        if depth >= 10 or "$" not in value:
            return value
        out, i, n = [], 0, len(value)
        while i < n:
            c = value[i]
            if c != "$" or i + 1 >= n:
                out.append(c)
                i += 1
                continue
            if value[i + 1] == "{":
                end = value.find("}", i + 2)
                name = value[i + 2:end] if end >= 0 else value[i + 2:]
                i = end + 1 if end >= 0 else n
            else:
                name = value[i + 1]
                i += 2
            out.append(self.expand(self.macros.get(name, ""), depth + 1))
        return "".join(out)

    def add_class(self, name, words):
        """Add words to a class, keeping the order they came in ($=X lists by hash)."""
        members = self.classes.setdefault(name, [])
        seen = {m.lower() for m in members}
        for word in (x for w in words for x in w.split()):
            if word.lower() not in seen:
                seen.add(word.lower())
                members.append(word)
        if self.engine is not None:
            self.engine.class_changed(name)

    def read_class_file(self, cfile):
        if cfile.path.startswith("|"):
            return
        try:
            rows = read_table(cfile.path)
        except OSError as e:
            if not cfile.optional:
                self.complaints.append((cfile.line, "%s: line %d: fileclass: cannot open "
                                        "'%s': %s" % (cfile.file, cfile.line, cfile.path,
                                                      os.strerror(e.errno))))
            return
        self.add_class(cfile.name, [w for row in rows for w in row])

    def mailer(self, name):
        """The M line named *name* (case-insensitive, as Sendmail's lookup), or None."""
        m = self.cf.mailers.get(name)
        if m is None:
            low = name.lower()
            m = next((v for k, v in self.cf.mailers.items() if k.lower() == low), None)
        return m

    # ---- rewriting
    def tokens(self, text, comments=True):
        return prescan(text, self.operator_chars, comments=comments)

    def detok(self, toks):
        return detokenize(toks, self.spacesub, self.operator_chars)

    def rewrite(self, ruleset, toks):
        """engine.rewrite(); its errors are syserrs; an infinite loop's status is OK."""
        toks, st = self.engine.rewrite(ruleset, toks)
        if self.engine.messages:
            self.on_syserr()
        return toks, (0 if st == LOOP else st)

    @staticmethod
    def mailer_rw(mailer, sender, header):
        """The mailer's S= or R= ruleset for that kind of address ("0": none), or None."""
        parts = ((mailer.sender_rw if sender else mailer.recipient_rw) or "").split("/")
        return (parts[1] if header and len(parts) > 1 else parts[0]).strip() or None

    # ---- parseaddr
    def parse(self, addr, sender=False, header=False, usrerr=None):
        """parseaddr() + buildaddr() of one address (see the module docstring).
        usrerr(msg) receives prescan's complaints as they happen."""
        self.macros["addr_type"] = ("h " if header else "e ") + ("s" if sender else "r")
        scan = self.tokens(addr, True)
        for msg in scan.errors:
            if usrerr is not None:
                usrerr(msg)
        if not scan.tokens:
            msg = scan.errors[0] if scan.errors else "553 5.1.3 Cannot parse"
            if not (len(msg) > 4 and msg[:3].isdigit() and msg[3] == " "):
                msg = "553 5.1.3 " + msg
            return error_result("Cannot parse", msg, "5.1.3", 65, "unparsable")
        temp = False
        toks, st = self.rewrite(3, scan.tokens)
        temp = st == EX_TEMPFAIL
        toks, st = self.rewrite(0, toks)
        temp = temp or st == EX_TEMPFAIL
        parts = resolve(toks, self.spacesub, self.operator_chars)
        if parts is None:
            return error_result("buildaddr: no mailer in parsed address",
                                "554 5.3.5 buildaddr: no mailer in parsed address",
                                "5.3.5", 70, "syserr")
        name, host, user = parts
        k = next((k for k, t in enumerate(toks) if t == "$:" and type(t) is not str), -1)
        user_toks = list(toks[k + 1:]) if k >= 0 else []
        if name.lower() == "error":        # cataddr(..., ' ') : a space, not BlankSub
            return self._error_mailer(host, detokenize(user_toks, " ", self.operator_chars))
        mailer = self.mailer(name)
        if mailer is None and name.lower() != "discard":
            text = "buildaddr: unknown mailer " + name
            return error_result(text, "554 5.3.5 " + text, "5.3.5", 70, "syserr")
        if mailer is None:
            return Parsed("discard", host, user)
        flags = mailer.flags
        if "@" in flags and user_toks[:1] == ["@"]:
            user_toks = user_toks[1:]
        ubuf = detokenize(user_toks, "", self.operator_chars)
        first = ubuf[1:2] if ubuf[:1] == '"' else ubuf[:1]
        if first == ":" and ":" in flags and ubuf.replace('"', "")[:9].lower() == ":include:":
            return Parsed("*include*", host, ubuf.replace('"', "")[9:],
                          self.mailer("*include*"))
        if first and first in flags and first in "|/":
            name = {"|": "prog", "/": "*file*"}[first]
            mailer = self.mailer(name)
            flags = mailer.flags if mailer is not None else BUILTIN_FLAGS[name]
        # V10 cfs (and envelope recipients) get 2, the mailer's envelope R=, 4; others 4
        t = user_toks
        if self.level >= 10 or not (sender or header):
            rs = self.mailer_rw(mailer, False, False) if mailer is not None else None
            t = self.rewrite(2, t)[0]
            t = self.rewrite(rs, t)[0] if rs not in (None, "0") else t
        user = self.detok(self.rewrite(4, t)[0])
        if "u" not in flags:
            user = user.lower()
        if host and "h" not in flags:
            host = host.lower()
        p = Parsed(name, host, user, mailer)
        if temp:
            p.temporary = True
        return p

    def _error_mailer(self, host, user):
        """buildaddr()'s error mailer: $@ a DSN status, an exit code or its name; $: the
        text, "NNN [x.y.z] text" or plain (then 553 5.3.0)."""
        code = EX_UNAVAILABLE
        status = ""
        if host is not None:
            if "." in host:
                status, code = host, dsn_status(host)
            elif host[:1].isdigit():
                code = int("".join(c for c in host if c.isdigit())[:3] or 69)
            else:
                code = ERROR_CODES.get(host.lower(), 0)
        text = user.replace('"', "")
        if len(text) > 4 and text[:3].isdigit() and text[0] in "245" and text[3] == " ":
            reply, rest = text[:3], text[4:]
            word, _, after = rest.partition(" ")
            if _is_status(word):
                status, rest = word, after
            elif not _is_status(status):
                status = reply[0] + ".0.0"
            p = error_result(rest, "%s %s %s" % (reply, status, rest), status, code)
        else:
            status = status if _is_status(status) else "5.3.0"
            p = error_result(text, "553 %s %s" % (status, text), status, code)
        p.host, p.user = host, user
        return p

    # ---- remotename
    def remotename(self, addr, mailer, sender, header, canonical=False):
        """An address as *mailer* (an M line) writes it: (text, rcode).  The address keeps
        its phrase and comments (crackaddr's template) unless *canonical* (an envelope
        address in its bare form); rcode is 75 when a map failed temporarily, else 0."""
        rs = self.mailer_rw(mailer, sender, header)
        self.macros["addr_type"] = ("h " if header else "e ") + ("s" if sender else "r")
        if canonical:
            fancy = "$g"
        else:
            from .crackaddr import crackaddr
            fancy = crackaddr(addr, self.must_quote, self.colon_ok)
        toks = self.tokens(addr, True).tokens
        if toks is None:
            return addr, 0
        rcode = 0
        for number in (3, 1 if sender else 2, rs, 4):
            if number in (None, "0"):
                continue
            toks, st = self.rewrite(number, toks)
            if st == EX_TEMPFAIL:
                rcode = EX_TEMPFAIL
        return fancy.replace("$g", self.detok(toks)), rcode

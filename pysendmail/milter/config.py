"""The milter configuration, read the Sendmail way from the parsed cf.

Role: turn the cf's X lines and milter options into plain objects the SMTP session and
`milter.chain` use.  Nothing here opens a socket.

  Xname, S=inet:port@host | inet6:port@host | unix:/path | local:/path, F=R|T|4, T=C:5m;S:10s;R:10s;E:5m
  O InputMailFilters=a, b                 the filters in use, in this order (Sendmail's
                                          InputFilters); X lines not listed are defined, unused
  O Milter.macros.connect|helo|envfrom|envrcpt|data|eoh|eom=j, _, {daemon_name}
                                          macro names per stage (default: the cf defaults,
                                          milter.client.DEFAULT_MACROS; an empty value: none)
  O Milter.LogLevel=N                     default: the LogLevel option (Sendmail's 9)
  O Milter.maxdatasize=N                  65535, 262143 or 1048575 (rounded up as Sendmail)
  O Milter.submission=True                the filters also see locally submitted mail
                                          (pysendmail's; see milter.submission)

As milter.c's milter_setup(): the equate is its first letter (S, F, T); F= is a set of
letters (R: reject on failure, T: tempfail, 4: 421 and close; none: carry on without the
filter); T= fields are the first letter C (connect), S (send), R (read), E (end of
message, overall) with Sendmail's convtime values, defaults C:5m S:10s R:10s E:5m.
S= without a type, or with an empty one, is a unix socket.

`load_milters(cf_or_rules, options=None) -> MilterConfig`.  Problems never raise: each is
a message in `MilterConfig.errors`, prefixed by the cf's file:line, worded as Sendmail's
syserr()s; a bad X line is left out (`defined` lacks it), a bad InputMailFilters entry is
left out of `filters`.  `MilterConfig.check()` raises ConfigError (EX_CONFIG) with them all,
for a daemon that must refuse to start, as Sendmail exits EX_CONFIG.
"""
from ..errors import ConfigError, EX_CONFIG
from .client import DEFAULT_MACROS, DEFAULT_TIMEOUTS, parse_socket_spec, parse_time

MAXFILTERS = 25             # Sendmail's conf.h: at most 24 filters in InputMailFilters
MAXFILTERMACROS = 50        # macros per stage
DEFAULT_LOG_LEVEL = 9       # Sendmail's LogLevel default
STAGES = ("connect", "helo", "envfrom", "envrcpt", "data", "eoh", "eom")
_DATA_SIZES = (65535, 262143, 1048575)


class MilterSpec:
    """One X line.

    name      the filter's name
    socket    the S= value normalised for MilterClient: 'inet:PORT@HOST',
              'inet6:PORT@HOST' or 'unix:/path' (local: is unix:)
    address   ('inet'|'inet6', host, port) or ('unix', path, None)
    flags     frozenset of the F= letters ('R', 'T', '4'; others kept, unused)
    timeouts  {'C', 'S', 'R', 'E'}: seconds, 0 = no limit
    file, line  where the X line is
    """
    __slots__ = ("name", "socket", "address", "flags", "timeouts", "file", "line")

    def __init__(self, name, socket, flags=frozenset(), timeouts=None, address=None,
                 file=None, line=None):
        self.name, self.socket = name, socket
        self.address = address or parse_socket_spec(socket)
        self.flags = frozenset(flags)
        self.timeouts = dict(DEFAULT_TIMEOUTS)
        self.timeouts.update(timeouts or {})
        self.file, self.line = file, line

    @property
    def on_failure(self):
        """What a failure of this filter does, in Sendmail's order of checks:
        'tempfail' (F=T), 'shutdown' (F=4), 'reject' (F=R) or None (carry on)."""
        if "T" in self.flags:
            return "tempfail"
        if "4" in self.flags:
            return "shutdown"
        if "R" in self.flags:
            return "reject"
        return None

    def __repr__(self):
        return "MilterSpec(%r, %r, flags=%r, timeouts=%r)" % (
            self.name, self.socket, "".join(sorted(self.flags)), self.timeouts)


class MilterConfig:
    """What the cf says about milters.

    filters    [MilterSpec] of O InputMailFilters, in order (empty: no filtering)
    defined    {name: MilterSpec} of every valid X line
    macros     {stage: tuple of macro names} for the STAGES
    log_level  Milter.LogLevel
    max_data_size  Milter.maxdatasize (None: not set; the client offers 64K)
    errors     ["file:line: message"]: the configuration problems
    """
    __slots__ = ("filters", "defined", "macros", "log_level", "max_data_size", "errors")

    def __init__(self):
        self.filters, self.defined, self.errors = [], {}, []
        self.macros = {s: tuple(DEFAULT_MACROS.get(s, ())) for s in STAGES}
        self.log_level = DEFAULT_LOG_LEVEL
        self.max_data_size = None

    def __bool__(self):
        return bool(self.filters)

    def check(self):
        """Raise ConfigError (EX_CONFIG) naming every problem, if there is one."""
        if self.errors:
            raise ConfigError("\n".join(self.errors), EX_CONFIG)
        return self


def _where(file, line):
    if file is None:
        return ""
    return "%s: line %d: " % (file, line) if line else "%s: " % file


def parse_socket(name, value):
    """S= of X`name`: (normalised spec, address) or (None, Sendmail's message)."""
    value = (value or "").strip()
    if not value:
        return None, "X%s: empty or missing socket information" % name
    kind, colon, rest = value.partition(":")
    if not colon:
        kind, rest = "unix", value
    kind = kind.strip().lower() or "unix"
    if kind == "local":
        kind = "unix"
    if kind == "unix":
        if not rest.startswith("/"):
            return None, "X%s: local socket name %s must be an absolute path" % (name, rest)
        if len(rest.encode()) >= 108:
            return None, "X%s: local socket name %s too long" % (name, rest)
        spec = "unix:" + rest
        return spec, parse_socket_spec(spec)
    if kind not in ("inet", "inet6"):
        return None, "X%s: unknown socket type %s" % (name, kind)
    port, at, host = rest.partition("@")
    port, host = port.strip(), host.strip()
    if not at or not host:
        return None, "X%s: bad address %s (expected port@host)" % (name, rest)
    if not port.isdigit():
        try:
            import socket
            port = str(socket.getservbyname(port, "tcp"))
        except (OSError, UnicodeError):
            return None, "X%s: unknown port name %s" % (name, port)
    if not 0 < int(port) < 65536:
        return None, "X%s: invalid port number %s" % (name, port)
    spec = "%s:%d@%s" % (kind, int(port), host)
    address = parse_socket_spec(spec)
    if address is None:
        return None, "X%s: bad address %s (expected port@host)" % (name, rest)
    return spec, address


def parse_timeouts(name, value):
    """T= of X`name` as milter_parse_timeouts(): (timeouts dict, [messages])."""
    out, problems = dict(DEFAULT_TIMEOUTS), []
    for field in value.split(";"):
        field = field.strip()
        if not field:
            continue
        code, colon, text = field.partition(":")
        if not colon:
            problems.append("X%s, T=: `:' expected" % name)
            break
        code = code.strip()[:1]
        if code not in out:
            problems.append("X%s: unknown filter timeout %s" % (name, code or "''"))
            continue
        seconds = parse_time(text)
        if seconds is None:
            problems.append("X%s: bad timeout %s:%s (want a number and s, m, h, d or w)"
                            % (name, code, text.strip()))
            continue
        out[code] = seconds
    return out, problems


def parse_x_line(milter):
    """One cf_model.Milter (an X line): (MilterSpec or None, [messages without file:line])."""
    name = milter.name
    problems, socket, flags, timeouts = [], None, frozenset(), None
    for key, value in milter.equate.items():
        code = key[:1]
        if code == "S":
            socket = value
        elif code == "F":
            flags = frozenset(c for c in value if not c.isspace())
        elif code == "T":
            timeouts, more = parse_timeouts(name, value)
            problems += more
        else:
            problems.append("X%s: unknown filter equate %s=" % (name, code))
    spec, address = parse_socket(name, socket)
    if spec is None:
        problems.append(address)
        return None, problems
    if problems:
        return None, problems
    return MilterSpec(name, spec, flags, timeouts, address, milter.file, milter.line), []


def parse_macro_list(value):
    """O Milter.macros.*: names separated by commas and/or white space."""
    return tuple(value.replace(",", " ").split())


def _options(cf, options):
    """{lower-case name: (name, value, file, line)}: the cf's O lines, then `options`."""
    out = {}
    for name, value, file, line in getattr(cf, "option_list", ()):
        out[name.lower()] = (name, value, file, line)
    if not getattr(cf, "option_list", None):
        for name, value in getattr(cf, "options", {}).items():
            file, line = getattr(cf, "origins", {}).get(("O", name), (None, None))
            out[name.lower()] = (name, value, file, line)
    for name, value in (options or {}).items():
        out[name.lower()] = (name, value, None, None)
    return out


def load_milters(cf, options=None):
    """The MilterConfig of a parsed cf (a config.cf_model.CfConfig, or a config.rules.Rules:
    its .cf is used).  `options`: {name: value} that override the cf's O lines (-O on the
    command line, tests).  Never raises for what the cf says; see MilterConfig.errors."""
    cf = getattr(cf, "cf", cf)
    cfg = MilterConfig()
    for m in getattr(cf, "milters", {}).values():
        spec, problems = parse_x_line(m)
        where = _where(m.file, m.line)
        cfg.errors += [where + p for p in problems]
        if spec is not None:
            cfg.defined[spec.name] = spec
    names = {m.name for m in getattr(cf, "milters", {}).values()}
    opts = _options(cf, options)
    loglevel = opts.get("loglevel")
    if loglevel and loglevel[1].strip().isdigit():
        cfg.log_level = int(loglevel[1])
    for key, (name, value, file, line) in opts.items():
        if not key.startswith("milter."):
            continue
        sub = key[len("milter."):]
        where = _where(file, line)
        if sub.startswith("macros.") and sub[len("macros."):] in STAGES:
            macros = parse_macro_list(value)
            if len(macros) > MAXFILTERMACROS:
                cfg.errors.append(where + "milter_set_option: too many macros in Milter.%s "
                                  "(max %d)" % (name[len("milter."):], MAXFILTERMACROS))
                macros = macros[:MAXFILTERMACROS]
            cfg.macros[sub[len("macros."):]] = macros
        elif sub == "loglevel":
            text = value.strip()
            cfg.log_level = int(text) if text.lstrip("-").isdigit() else 0
        elif sub == "submission":
            pass                            # milter.submission reads it
        elif sub == "maxdatasize":
            text = value.strip()
            size = int(text) if text.isdigit() else 0
            cfg.max_data_size = next((s for s in _DATA_SIZES if size <= s), _DATA_SIZES[-1])
        else:
            cfg.errors.append(where + "milter_set_option: invalid Milter option %s"
                              % name[len("milter."):])
    filters = opts.get("inputmailfilters")
    if filters:
        name, value, file, line = filters
        where = _where(file, line)
        wanted = [n.strip() for n in value.replace(";", ",").split(",") if n.strip()]
        if len(wanted) > MAXFILTERS - 1:
            cfg.errors.append(where + "Too many filters defined, %d max" % (MAXFILTERS - 1))
            wanted = []
        for n in wanted:
            if n in cfg.defined:
                if cfg.defined[n] not in cfg.filters:
                    cfg.filters.append(cfg.defined[n])
            elif n in names:
                cfg.errors.append(where + "InputFilter %s not usable: its X line is in error" % n)
            else:
                cfg.errors.append(where + "InputFilter %s not defined" % n)
    return cfg

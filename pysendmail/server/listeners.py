"""The SMTP daemon's listeners: Sendmail's DaemonPortOptions, and binding their sockets.

    O DaemonPortOptions=Port=smtp, Addr=0.0.0.0, Family=inet, Name=MTA
    O DaemonPortOptions=Port=587, Name=MSA, M=Ea
    O DaemonPortOptions=Port=465, Name=SMTPS, M=s

Each `O DaemonPortOptions=` line of the cf adds a listener (a later one with the same
Name replaces it, as in Sendmail, so `-O DaemonPortOptions=Port=2600,Name=MTA` on the
command line moves the MTA). Keys: Port (number or service name), Addr, Family (inet,
inet6), Name, Listen (backlog), M / Modifiers (letters below), Checks (pysendmail's:
the inbound authentication checks of this listener, spf+dkim+arc+dmarc, all or none;
default: O AuthChecks for a listener without M=a, none with it); unknown keys are
warned about and ignored. Modifiers: a require AUTH, A no AUTH, s TLS from the first
byte (SMTPS, port 465), S no STARTTLS, E no ETRN, O optional (a listener that cannot
be bound is skipped), f require fully qualified addresses, u allow unqualified ones.

Without any: the system instance listens as Sendmail does (MTA on 25, MSA on 587 with
M=Ea, SMTPS on 465); a private instance (any user, no configuration) on
127.0.0.1:2525 only, which needs no privilege.

Sockets are bound by the master (as root for the low ports) before the workers drop
privileges; with several workers each gets its own socket on the port (SO_REUSEPORT)
so the kernel spreads connections over them.
"""
import socket

SERVICES = {"smtp": 25, "submission": 587, "smtps": 465, "submissions": 465}


class ListenerSpec:
    __slots__ = ("name", "port", "addr", "family", "modifiers", "backlog", "checks")

    def __init__(self, name="MTA", port=25, addr="", family="inet", modifiers="",
                 backlog=4096, checks=None):
        self.checks = checks            # Checks=spf+dkim+dmarc+arc|none; None: O AuthChecks
        self.name = name
        self.port = port
        self.addr = addr
        self.family = family
        self.modifiers = modifiers
        self.backlog = backlog

    @property
    def implicit_tls(self):
        return "s" in self.modifiers

    @property
    def auth_required(self):
        return "a" in self.modifiers

    @property
    def auth_offered(self):
        return "A" not in self.modifiers

    @property
    def starttls_offered(self):
        return "S" not in self.modifiers and "s" not in self.modifiers

    @property
    def optional(self):
        return "O" in self.modifiers

    def bind_address(self):
        if self.addr:
            return self.addr
        return "::" if self.family == "inet6" else "0.0.0.0"

    def __repr__(self):
        return "ListenerSpec(%s %s:%d M=%s)" % (self.name, self.bind_address(), self.port,
                                                 self.modifiers)


def _port(text):
    text = text.strip()
    if text.isdigit():
        port = int(text)
        if not 0 < port < 65536:
            raise ValueError("bad port %s" % text)
        return port
    if text.lower() in SERVICES:
        return SERVICES[text.lower()]
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise ValueError("unknown service %s" % text) from None


def parse(value, warn=None):
    """One DaemonPortOptions value -> ListenerSpec. Raises ValueError on bad values."""
    spec = ListenerSpec(name="", port=25)
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError("DaemonPortOptions: %s: no '=' in %r" % (value, item))
        key, val = key.strip().lower(), val.strip()
        if key == "port":
            spec.port = _port(val)
        elif key == "addr":
            spec.addr = val.strip("[]")
        elif key == "family":
            if val not in ("inet", "inet6"):
                raise ValueError("DaemonPortOptions: unknown address family %s" % val)
            spec.family = val
        elif key == "name":
            spec.name = val
        elif key in ("m", "modifiers", "modify"):
            spec.modifiers = val.replace(" ", "")
        elif key == "listen":
            spec.backlog = max(int(val), 1)
        elif key == "checks":
            spec.checks = val
        elif warn is not None:
            warn("DaemonPortOptions: option %s ignored" % key)
    if spec.addr and ":" in spec.addr and spec.family == "inet":
        spec.family = "inet6"
    if not spec.name:
        spec.name = "Daemon%d" % spec.port
    return spec


def cf_values(cf_path):
    """Every `O DaemonPortOptions=` value of a cf, in order (the quick option scan keeps
    only the last one of a name)."""
    out = []
    try:
        with open(cf_path, "rb") as f:
            data = f.read()
    except OSError:
        return out
    for raw in data.split(b"\n"):
        if raw.startswith(b"O DaemonPortOptions"):
            line = raw.decode("utf-8", "surrogateescape").rstrip("\r")
            _, sep, value = line.partition("=")
            if sep:
                out.append(value.strip())
    return out


def defaults(system):
    if system:
        return [ListenerSpec("MTA", 25), ListenerSpec("MSA", 587, modifiers="Ea"),
                ListenerSpec("SMTPS", 465, modifiers="s")]
    return [ListenerSpec("MTA", 2525, addr="127.0.0.1")]


def configured(cf_path, command_line_value, system, warn=None):
    """The listeners to open: the cf's lines, then the command line's, by Name."""
    specs = []
    values = cf_values(cf_path) if cf_path else []
    if command_line_value:              # several -O DaemonPortOptions= are kept apart by LF
        values.extend(v for v in command_line_value.split("\n") if v.strip())
    for value in values:
        spec = parse(value, warn)
        specs = [s for s in specs if s.name != spec.name] + [spec]
    return specs or defaults(system)


def bind(spec, copies=1):
    """Listening sockets for one spec (non-blocking; `copies` > 1 shares the port
    with SO_REUSEPORT). Raises OSError."""
    family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
    out = []
    if copies > 1:
        # SO_REUSEPORT would let a second daemon share the port silently: first make
        # sure nobody listens there (a plain bind fails with EADDRINUSE if someone does).
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind((spec.bind_address(), spec.port))
        finally:
            probe.close()
    try:
        for _ in range(copies):
            s = socket.socket(family, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if copies > 1:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((spec.bind_address(), spec.port))
            s.listen(spec.backlog)
            s.setblocking(False)
    except OSError:
        for s in out:
            s.close()
        raise
    return out

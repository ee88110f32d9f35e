"""Sendmail's command line: getopt with Sendmail's option string, and what each flag means.

Why not the stdlib `getopt`: importing it pulls in gettext, locale and re (~9 ms),
which every cron job and PHP mail() would pay; and Sendmail's parsing has its own
quirks: `-q` and `-Q` take optional attached arguments, `-f ''` is the null sender,
flags that mean nothing here are accepted and ignored, and the error lines read
`sendmail: illegal option -- Z` / `option requires an argument -- f` (exit 64).
"""
from ..errors import UsageError

# Sendmail 8.17's OPTIONS string, plus U (accepted and ignored, as older Sendmails had it).
OPTION_STRING = "A:B:b:C:cD:d:e:F:f:Gh:IiL:M:mN:nO:o:p:Q:q:R:r:sTtUV:vX:"
OPTIONAL_ARG = "qQ"      # -q and -q30m, -Q and -Qreason


def _spec(optstring):
    takes = {}
    i = 0
    while i < len(optstring):
        letter = optstring[i]
        arg = i + 1 < len(optstring) and optstring[i + 1] == ":"
        takes[letter] = arg
        i += 2 if arg else 1
    return takes


_TAKES_ARG = _spec(OPTION_STRING)


def getopt(argv, prog="sendmail"):
    """POSIX getopt over argv (without argv[0]): returns ([(letter, value)], operands).
    Parsing stops at `--` or the first operand, as Sendmail's getopt does."""
    opts = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        j = 1
        while j < len(arg):
            letter = arg[j]
            if letter not in _TAKES_ARG:
                raise UsageError("%s: illegal option -- %s" % (prog, letter))
            if letter in OPTIONAL_ARG:
                opts.append((letter, arg[j + 1:]))
                break
            if _TAKES_ARG[letter]:
                if j + 1 < len(arg):
                    value = arg[j + 1:]
                else:
                    i += 1
                    if i >= len(argv):
                        raise UsageError("%s: option requires an argument -- %s" % (prog, letter))
                    value = argv[i]
                opts.append((letter, value))
                break
            opts.append((letter, None))
            j += 1
        i += 1
    return opts, argv[i:]


# One-letter -o options (the old cf forms) and their long names.
SHORT_OPTIONS = {
    "A": "AliasFile", "a": "AliasWait", "B": "BlankSub", "b": "MinFreeBlocks",
    "C": "CheckpointInterval", "c": "HoldExpensive", "D": "DeliverByMin", "d": "DeliveryMode",
    "E": "ErrorHeader", "e": "ErrorMode", "F": "TempFileMode", "f": "SaveFromLine",
    "G": "MatchGECOS", "g": "DefaultGroup", "H": "HelpFile", "h": "MaxHopCount",
    "i": "IgnoreDots", "j": "SendMimeErrors", "k": "ConnectionCacheSize",
    "K": "ConnectionCacheTimeout", "L": "LogLevel", "l": "UseErrorsTo", "m": "MeToo",
    "n": "CheckAliases", "O": "DaemonPortOptions", "o": "OldStyleHeaders",
    "P": "PostmasterCopy", "p": "PrivacyOptions", "Q": "QueueDirectory",
    "q": "QueueFactor", "R": "DontPruneRoutes", "r": "Timeout", "S": "StatusFile",
    "s": "SuperSafe", "T": "QueueTimeout", "t": "TimeZoneSpec", "U": "UserDatabaseSpec",
    "u": "DefaultUser", "V": "FallbackMXhost", "v": "Verbose", "w": "TryNullMXList",
    "X": "RefuseLA", "x": "QueueLA", "Y": "ForkEachJob", "y": "RecipientFactor",
    "Z": "RetryFactor", "z": "ClassFactor", "7": "SevenBitInput", "8": "EightBitMode",
}

VALID_MODES = "mspivtdDaPhHC"   # the -b letters Sendmail 8.17 knows
MODE_NAMES = {"mailq": "p", "newaliases": "i", "hoststat": "h", "purgestat": "H", "smtpd": "d"}


class Invocation:
    """What one `sendmail` command line asks for."""

    __slots__ = ("prog", "mode", "read_recipients", "ignore_dots", "sender", "sender_given",
                 "full_name", "body_type", "notify", "ret", "envid", "delivery_mode",
                 "error_mode", "verbose", "cf", "options", "macros", "queue_interval",
                 "queue_filters", "queue_run", "recipients", "no_alias", "hop_count",
                 "quarantine", "submit_mode", "log_tag", "protocol", "debug", "json",
                 "subcommand", "traffic_log")

    def __init__(self, prog):
        self.prog = prog
        self.mode = MODE_NAMES.get(prog, "m")
        self.read_recipients = False
        self.ignore_dots = False
        self.sender = None          # None: the caller; "" the null sender
        self.sender_given = False
        self.full_name = None
        self.body_type = ""
        self.notify = ""
        self.ret = ""
        self.envid = ""
        self.delivery_mode = None
        self.error_mode = None
        self.verbose = False
        self.cf = None
        self.options = {}
        self.macros = {}
        self.queue_interval = None
        self.queue_filters = []     # ("R"|"S"|"I"|"Q", value, negated)
        self.queue_run = False
        self.recipients = []
        self.no_alias = False
        self.hop_count = None
        self.quarantine = None
        self.submit_mode = ""
        self.log_tag = None
        self.protocol = ""
        self.debug = []
        self.json = False
        self.subcommand = None
        self.traffic_log = None


def _set_option(inv, name, value):
    """Record an option; the few that change how this run reads input are applied here."""
    lname = name.lower()
    if lname == "ignoredots":
        inv.ignore_dots = value.lower() not in ("f", "false", "no", "0")
        return
    if lname == "deliverymode":
        inv.delivery_mode = value[:1] if value != "True" and value else "b"
        return
    if lname == "errormode":
        inv.error_mode = value[:1] if value != "True" and value else "p"
        return
    if lname == "verbose":
        inv.verbose = True
    if lname == "daemonportoptions" and inv.options.get("DaemonPortOptions"):
        value = inv.options["DaemonPortOptions"] + "\n" + value   # each one is a listener
        name = "DaemonPortOptions"
    inv.options[name] = value


def _short_option(inv, text):
    """-oXvalue: one-letter option X (the old cf form), recorded under its long name;
    `-oi` alone means IgnoreDots=True, `-od`/`-oe` alone the defaults b and p."""
    letter, value = text[:1], text[1:]
    name = SHORT_OPTIONS.get(letter)
    if name is None:
        return          # meaningless here: accepted and ignored
    _set_option(inv, name, value if value else "True")


def _queue_arg(inv, value):
    """-q, -q30m, -qIsubstr, -qRsubstr, -qSsubstr, -qQ, -q!Rx, -qf, -qp30m."""
    inv.queue_run = True
    if not value:
        return
    negate = value.startswith("!")
    body = value[1:] if negate else value
    kind = body[:1]
    if kind in ("I", "R", "S", "Q", "L"):
        inv.queue_filters.append((kind, body[1:], negate))
    elif kind == "f":
        inv.options["QueueForeground"] = "True"
    elif kind == "p":
        inv.queue_interval = body[1:] or "0"
    elif kind == "G":
        inv.options["QueueGroup"] = body[1:]
    else:
        inv.queue_interval = value


def parse(argv, prog="sendmail"):
    """Parse argv (without argv[0]) into an Invocation; UsageError carries Sendmail's line."""
    inv = Invocation(prog)
    opts, operands = getopt(argv, prog)
    for letter, value in opts:
        if letter == "b":
            mode = value[:1]
            if not mode or mode not in VALID_MODES:
                raise UsageError("Invalid operation mode %s" % (value[:1] or ""))
            inv.mode = mode
        elif letter == "I":
            inv.mode = "i"
        elif letter == "t":
            inv.read_recipients = True
        elif letter == "i":
            inv.ignore_dots = True
        elif letter in ("f", "r"):
            inv.sender = value
            inv.sender_given = True
        elif letter == "F":
            inv.full_name = value
        elif letter == "B":
            inv.body_type = value.upper()
        elif letter == "N":
            inv.notify = value.upper()
        elif letter == "R":
            inv.ret = value.upper()
        elif letter == "V":
            inv.envid = value
        elif letter == "v":
            inv.verbose = True
        elif letter == "C":
            inv.cf = value
        elif letter == "o":
            _short_option(inv, value)
        elif letter == "O":
            name, sep, val = value.partition("=")
            _set_option(inv, name.strip(), val.strip() if sep else "True")
        elif letter == "M":
            if value:
                name = value[0]
                rest = value[1:]
                if name == "{" and "}" in rest:
                    name, rest = rest.split("}", 1)
                inv.macros[name] = rest
        elif letter == "q":
            _queue_arg(inv, value)
        elif letter == "Q":
            inv.quarantine = value
        elif letter == "n":
            inv.no_alias = True
        elif letter == "h":
            inv.hop_count = value
        elif letter == "e":
            _set_option(inv, "ErrorMode", value or "True")
        elif letter == "L":
            inv.log_tag = value
        elif letter == "p":
            inv.protocol = value
        elif letter == "d":
            inv.debug.append(value)
        elif letter == "A":
            inv.submit_mode = value
        elif letter == "X":
            inv.traffic_log = value
        # c G m s T U D: meaningless here, accepted and ignored
    inv.recipients = operands
    return inv

"""The checks Sendmail's readcf() makes on a sendmail.cf line after its syntax: the `$`
operators of rewriting rules, the required fields of mailers, option names and the
option values Sendmail refuses outright, map classes, the V line.

pysendmail/config/cf.py calls these on the lines its grammar accepted.  Each check
returns None when the line is fine, else Sendmail's message text (the wording of
Sendmail 8.17's readcf.c, main.c and macro.c), sometimes with where in the text the
fault is; cf.py decides, per kind, whether it is a warning or a CfError and adds
file:line.  Pure functions over strings: no I/O, nothing imported at module level but
what the submission path may import.
"""

MAXMATCH = 9                 # wildcards in one LHS ($1..$9)
MAX_MAP_ARGS = 10            # $@ arguments in one $( $) lookup
MAX_CONFIG_LEVEL = 10        # the highest V level Sendmail 8.17 knows
VENDORS = ("berkeley", "pysendmail")
SENDMAIL_VERSION = "8.17.1.9"  # the Sendmail whose behaviour pysendmail follows
# Option names of Sendmail 8.17's OptionTab (some behind compile-time switches) that
# pysendmail.config.options.KNOWN lacks: a cf may set them without a complaint.
MORE_OPTIONS = frozenset(n.lower() for n in """
AddBcc AddrTypeModes BadRcptShutdown BadRcptShutdownGood BadRcptThrottleDelay BounceQueue
CertFingerprintAlgorithm CheckQueueRunners DANE DontLockFilesForRead EightBitAddrOK
FIPSMode InetQoS MaxForwardEntries MemoryResource MessageAccept QueueLowMem QueueTimeout
RefuseLowMem RejectNUL SetCertAltnames SMTPUTF8 SSLEnginePath
""".split())

# LHS operators that match something: each gives a $n to the RHS.
_WILDCARDS = "*+-=~"
# What Sendmail says about operators out of place ("Inappropriate use of X on LHS").
_NOT_ON_LHS = {":": "$:", ">": "$>", "?": "$?", ".": "$.", "[": "$[", "]": "$]",
               "(": "$(", ")": "$)"}
_LOOKUP_END = {"[": "]", "(": ")"}
_DIGITS = "0123456789"
# First letter of DeliveryMode / EightBitMode values Sendmail accepts (else it exits 64).
DELIVERY_MODES = "iqdb"
EIGHT_BIT_MODES = "pms"


def _skip_name(text, i):
    """The index after a macro or class name at text[i]: one character or {long}."""
    if i >= len(text):
        return i
    if text[i] == "{":
        end = text.find("}", i)
        return len(text) if end < 0 else end + 1
    return i + 1


def operators(text):
    """The `$` operators of one side of a rule, as (offset, code): code is the character
    after the `$` (`*`, `=`, `1`, `(`...).  Macros (`$x`, `${name}`, `$&x`) and `$$`
    are no operators; class names after `$=` / `$~` are skipped."""
    i, n = 0, len(text)
    while i < n:
        if text[i] != "$" or i + 1 >= n:
            i += 1
            continue
        code = text[i + 1]
        if code in "=~":
            yield i, code
            i = _skip_name(text, i + 2)
        elif code in "*+-#@:>[]()|?.0123456789":
            yield i, code
            i += 2
        elif code == "$":
            i += 2
        elif code == "&":
            i = _skip_name(text, i + 2)
        else:
            i = _skip_name(text, i + 1)


def rule_problem(lhs, rhs):
    """What readcf says about an R line's LHS and RHS (raw text, before macro expansion):
    None, or (message, side, offset) with side "lhs" or "rhs" and the offset of the
    operator at fault in that side's text."""
    if not lhs.strip():
        return "R line: null LHS", "lhs", 0
    wildcards = 0
    for at, code in operators(lhs):
        if code in _WILDCARDS:
            wildcards += 1
            if wildcards > MAXMATCH:
                return "R line: too many wildcards", "lhs", at
        elif code in _DIGITS:
            return "Inappropriate use of $1-$9 on LHS", "lhs", at
        elif code in _NOT_ON_LHS:
            return "Inappropriate use of %s on LHS" % _NOT_ON_LHS[code], "lhs", at
    if not rhs.strip():
        return "R line: null RHS", "rhs", 0
    opened = None                   # (offset, closing code) of the lookup we are in
    args = 0
    for at, code in operators(rhs):
        if code in _DIGITS:
            if code == "0" or int(code) > wildcards:
                return "replacement $%s out of bounds" % code, "rhs", at
        elif code in _WILDCARDS:
            return "Inappropriate use of $%s on RHS" % code, "rhs", at
        elif code in _LOOKUP_END:
            if opened is not None:
                return "cannot nest map lookups", "rhs", at
            opened, args = (at, _LOOKUP_END[code]), 0
        elif opened is not None and code == opened[1]:
            opened = None
        elif opened is not None and code == "@":
            args += 1
            if args >= MAX_MAP_ARGS:
                return "too many arguments for map lookup", "rhs", at
    if opened is not None:
        return "missing map closing token", "rhs", opened[0]
    return None


def mailer_problem(mailer):
    """makemailer()'s rationality checks on a parsed Mailer: None or the message."""
    name = mailer.name
    argv = mailer.argv.split() if mailer.argv is not None else None
    if argv is None:
        return "M%s: A= argument required" % name
    if not mailer.path:
        return "M%s: P= argument required" % name
    if mailer.path == "[TCP]":
        return "M%s: P=[TCP] must be replaced by P=[IPC]" % name
    if mailer.path == "[IPC]" and len(argv) < 2:
        return "M%s: too few parameters for [IPC] mailer" % name
    if mailer.path == "[FILE]":
        if len(argv) != 2:
            return "M%s: too %s parameters for [FILE] mailer" % (
                name, "few" if len(argv) < 2 else "many")
        if argv[0] != "FILE":
            return "M%s: first argument in [FILE] mailer must be FILE" % name
    return None


def option_name_problem(name):
    """setoption()'s check of a long option name (a prefix of one known name is
    accepted, as Sendmail takes abbreviations): None or the message."""
    from .options import KNOWN
    base = name.split(".", 1)[0]
    if not base:
        return "readcf: null option name"
    low = base.lower()
    if low in KNOWN or low in MORE_OPTIONS or any(
            k.startswith(low) for k in KNOWN | MORE_OPTIONS):
        return None
    return "readcf: unknown option name %s" % base


def option_value_problem(name, value):
    """The option values Sendmail refuses by exiting EX_USAGE: None or the message."""
    first = value[:1]
    low = name.lower()
    if low == "deliverymode" and first and first not in DELIVERY_MODES:
        return "Unknown delivery mode %s" % first
    if low == "eightbitmode" and first not in EIGHT_BIT_MODES:
        return "Unknown 8-bit mode %s" % first
    return None


def map_class_problem(name, mclass):
    """makemapentry()'s class check against the classes pysendmail.config.maps builds."""
    from .maps import _CLASSES
    if mclass not in _CLASSES:
        return "readcf: map %s: class %s not available" % (name, mclass)
    return None


def version_problems(text):
    """The V line: (fatal message or None, [warnings]).  text is what follows the V."""
    rest = text.lstrip()
    digits = 0
    while digits < len(rest) and rest[digits] in _DIGITS:
        digits += 1
    if not digits:
        return 'invalid argument to V line: "%.20s"' % text, []
    warnings = []
    level = int(rest[:digits])
    if level > MAX_CONFIG_LEVEL:
        warnings.append("Warning: .cf version level (%d) exceeds sendmail version %s "
                        "functionality (%d)" % (level, SENDMAIL_VERSION, MAX_CONFIG_LEVEL))
    if rest[digits:digits + 1] == "/":
        vendor = rest[digits + 1:]
        end = 0
        while end < len(vendor) and vendor[end].isascii() and vendor[end].isalpha():
            end += 1
        vendor = vendor[:end]
        if vendor.lower() not in VENDORS:
            warnings.append('invalid V line vendor code: "%s"' % vendor)
    return None, warnings

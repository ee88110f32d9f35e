"""Options: Sendmail's option names, their defaults here, and the quick read of a cf's
`O` and `D` lines that the submission path needs.

The full sendmail.cf grammar and rewriting engine are a separate module; this one
only scans `O Name=value`, `Dx value` and `Cw`/`Fw` lines, cheaply (it runs on
every submission). Unknown option names are rejected as Sendmail does
(`readcf: unknown option name X`); known names that mean nothing here yet are
accepted and ignored.
"""
from ..errors import ConfigError, EX_OSFILE, EX_SOFTWARE

# Every long option name Sendmail 8.17 knows (readcf.c OptionTab), plus pysendmail's own.
KNOWN = frozenset(n.lower() for n in """
AliasFile AliasWait AllowBogusHELO AuthMaxBits AuthMechanisms AuthOptions AuthRealm
AutoRebuildAliases BadRcptThrottle BadRcptThrottleDelay BlankSub CACertFile CACertPath
CheckAliases CheckpointInterval ClassFactor ClientCertFile ClientKeyFile ClientPortOptions
ColonOkInAddr ConnectionCacheSize ConnectionCacheTimeout ConnectionRateThrottle
ConnectionRateWindowSize ConnectOnlyTo ControlSocketName CRLFile CRLPath DHParameters
DaemonPortOptions DataFileBufferSize DeadLetterDrop DefaultAuthInfo DefaultCharSet
DefaultUser DelayLA DeliverByMin DeliveryMode DialDelay DirectSubmissionModifiers
DontBlameSendmail DontExpandCnames DontInitGroups DontProbeInterfaces DontPruneRoutes
DoubleBounceAddress EightBitMode ErrorHeader ErrorMode FallbackMXhost FallBackSmartHost
FastSplit ForkEachJob ForwardPath HeloName HelpFile HoldExpensive HostsFile HostStatusDirectory
IgnoreDots InputMailFilters LDAPDefaultSpec LogLevel MailboxDatabase MatchGECOS
MaxAliasRecursion MaxDaemonChildren MaxHeadersLength MaxHopCount MaxMessageSize
MaxMimeHeaderLength MaxNOOPCommands MaxQueueChildren MaxQueueRunSize MaxRcptsPerMessage
MaxRecipientsPerMessage MaxRunnersPerQueue MaxQueueAge MeToo Milter MinFreeBlocks MinQueueAge
MustQuoteChars NiceQueueRun NoRecipientAction OldStyleHeaders OperatorChars PidFile
PostmasterCopy PrivacyOptions ProcessTitlePrefix QueueDirectory QueueFactor QueueFileMode
QueueLA QueueSortOrder RandFile RecipientFactor RefuseLA RejectLogInterval RequiresDirfsync
ResolverOptions RetryFactor RrtImpliesDsn RunAsUser SafeFileEnvironment SaveFromLine
SendMimeErrors ServerCertFile ServerKeyFile ServiceSwitchFile SevenBitInput SharedMemoryKey
SharedMemoryKeyFile SingleLineFromHeader SingleThreadDelivery SmtpGreetingMessage
SoftBounce StatusFile StrictRFC821 SuperSafe TLSSrvOptions TempFileMode TimeZoneSpec
Timeout TrustedUser TryNullMXList UnixFromLine UnsafeGroupWrites UseErrorsTo UseMSP
UserDatabaseSpec Verbose XscriptFileBufferSize CipherList ServerSSLOptions ClientSSLOptions
SSLEngine SSLEngineePath TLSFallbacktoClear UseCompressedIPv6Addresses MaxNOOPCommands
HeaderCheckTimeout QueueFileMode DeliveryMode LogLevel MailboxFormat MaildirPath
QueueForeground QueueGroup LocalDomains AliasDatabase QueueInterval
DaemonWorkers AuthPasswordFile ClientRate ClientConn
AuthInfoFile TLSRequiredHosts TLSVerifyHosts MaxHostConnections MaxOutboundConnections
AuthChecks AuthReject AuthCheckThreads DKIMKeyTable
""".split())


def check_name(name):
    base = name.split(".", 1)[0].lower()
    if base not in KNOWN:
        raise ConfigError("readcf: unknown option name %s" % name, EX_SOFTWARE)


class CfQuick:
    """What a quick scan of the cf found: options and macros."""

    __slots__ = ("path", "options", "macros")

    def __init__(self, path):
        self.path = path
        self.options = {}
        self.macros = {}


def read_quick(path):
    """Scan a cf for O and D lines (the local host names, $=w, are the cf rules' business:
    config/rules.py). Missing file: Sendmail's message, exit 72."""
    cf = CfQuick(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError("%s: line 0: cannot open: %s" % (path, e.strerror), EX_OSFILE)
    for raw in data.split(b"\n"):
        if not raw or raw[:1] not in (b"O", b"D"):
            continue
        line = raw.decode("utf-8", "surrogateescape").rstrip("\r")
        tag = line[0]
        if tag == "O" and line[1:2] == " ":
            name, sep, value = line[2:].partition("=")
            if sep:
                cf.options[name.strip()] = value.strip()
        elif tag == "D" and len(line) > 1:
            if line[1] == "{":
                name, _, value = line[2:].partition("}")
            else:
                name, value = line[1], line[2:]
            cf.macros[name] = value
    return cf


def truthy(value):
    return str(value).strip().lower() in ("t", "true", "yes", "y", "1", "on")


def parse_interval(text, default_unit="s"):
    """Sendmail time values: 30m, 1h30m, 5d, 90 (seconds unless default_unit)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    total = 0
    num = ""
    for c in text.strip():
        if c.isdigit():
            num += c
        elif c in units:
            total += int(num or "0") * units[c]
            num = ""
        else:
            raise ValueError("bad time value %r" % text)
    if num:
        total += int(num) * units[default_unit]
    return total


def interval_option(options, name, default):
    """Option `name` as seconds (a bare number in minutes, as Sendmail's queue
    timeouts); its `default` text when unset or unreadable."""
    try:
        return parse_interval(options.get(name) or default, "m")
    except ValueError:
        return parse_interval(default)


"""Exit codes (sysexits.h) and the errors every role shares.

An error here carries what the user is told: the sysexits status for the CLI
and, where it applies, an SMTP reply code with its enhanced status code.
Any other exception is a bug and is reported as one (EX_SOFTWARE).
"""

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_NOHOST = 68
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_OSFILE = 72
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78

# The texts Sendmail shows for an exit status (sm_sysexitmsg / the "stat=" log field).
EXIT_TEXT = {
    EX_USAGE: "Bad usage",
    EX_DATAERR: "Data format error",
    EX_NOINPUT: "Cannot open input",
    EX_NOUSER: "User unknown",
    EX_NOHOST: "Host unknown",
    EX_UNAVAILABLE: "Service unavailable",
    EX_SOFTWARE: "Internal error",
    EX_OSERR: "Operating system error",
    EX_OSFILE: "System file missing",
    EX_CANTCREAT: "Can't create output",
    EX_IOERR: "I/O error",
    EX_TEMPFAIL: "Deferred",
    EX_PROTOCOL: "Remote protocol error",
    EX_NOPERM: "Insufficient permission",
    EX_CONFIG: "Local configuration error",
}

# Enhanced status codes (RFC 3463) that go with an exit status when nothing better is known.
EXIT_DSN = {
    EX_USAGE: "5.5.4",
    EX_DATAERR: "5.6.0",
    EX_NOINPUT: "5.3.0",
    EX_NOUSER: "5.1.1",
    EX_NOHOST: "5.1.2",
    EX_UNAVAILABLE: "5.5.0",
    EX_SOFTWARE: "5.3.0",
    EX_OSERR: "4.0.0",
    EX_OSFILE: "4.3.0",
    EX_CANTCREAT: "5.3.0",
    EX_IOERR: "4.3.0",
    EX_TEMPFAIL: "4.0.0",
    EX_PROTOCOL: "5.5.0",
    EX_NOPERM: "5.7.1",
    EX_CONFIG: "5.3.5",
}


class MTAError(Exception):
    """An expected failure with the exit status and one-line message to report."""

    def __init__(self, message, status=EX_SOFTWARE, dsn=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.dsn = dsn or EXIT_DSN.get(status, "5.0.0")


class UsageError(MTAError):
    def __init__(self, message):
        super().__init__(message, EX_USAGE)


class ConfigError(MTAError):
    def __init__(self, message, status=EX_CONFIG):
        super().__init__(message, status)


class AddressError(MTAError):
    """A syntactically bad address: Sendmail's `addr... Unbalanced '<'` family."""

    def __init__(self, address, reason, status=EX_DATAERR):
        super().__init__(f"{address}... {reason}", status, "5.1.3")
        self.address = address
        self.reason = reason


class QueueError(MTAError):
    """The spool could not take the message: nothing was acknowledged."""

    def __init__(self, message, status=EX_TEMPFAIL):
        super().__init__(message, status, "4.3.0")

"""SMTP AUTH exchanges (RFC 4954): the SASL PLAIN (RFC 4616) and LOGIN mechanisms, sans-I/O.

The SMTP core (smtp_server) turns "AUTH mech [initial]" into an `Auth(mechanism,
initial)` event and each client line after a 334 into `AuthResponse(data)`, both
already base64-decoded (it answers bad base64 with "501 5.5.4 cannot BASE64 decode"
and a "*" line with "501 5.0.0 AUTH aborted" itself: the driver then forgets the
exchange). The driver keeps one `SaslExchange` per AUTH command:

    x = SaslExchange(event.mechanism, event.initial)
    step = x.step(None)                  # on Auth; x.step(event.data) on AuthResponse
    Challenge    -> conn.send(step.reply)                  # 334 <base64>
    Failure      -> conn.send(step.reply)                  # 535 5.7.0 authentication failed
    Credentials  -> check step.authcid / step.password, then conn.send(x.finish(ok))

Replies are Sendmail's: "334 VXNlcm5hbWU6" / "334 UGFzc3dvcmQ6" for LOGIN, "334 " for
PLAIN without an initial response, "235 2.0.0 OK Authenticated", "535 5.7.0
authentication failed". Security stance: a PLAIN authorization identity (authzid)
other than the authentication identity is refused (we have no proxy-authorization
policy); credentials must be UTF-8 without NUL; usernames and passwords are
bounded in length. Pure code: imports only binascii and its sibling smtp_reply.
"""
import binascii

from .smtp_reply import Reply, auth_failed, auth_ok

# What the server offers, in the order Cyrus SASL lists them in Sendmail's EHLO.
MECHANISMS = ("LOGIN", "PLAIN")

MAX_USER = 255          # octets of a username (authcid / authzid)
MAX_PASSWORD = 1024     # octets of a password

# Log reasons, worded as Cyrus SASL's sasl_errstring/sasl_errdetail (what Sendmail logs).
BADAUTH = "authentication failure"      # SASL_BADAUTH (-13)
BADPROT = "bad protocol / cancel"       # SASL_BADPROT (-5)
NOAUTHZ = "authorization failure"       # SASL_NOAUTHZ (-14)
SASL_CODES = {BADAUTH: -13, BADPROT: -5, NOAUTHZ: -14}


def temp_failure():
    """When the user store cannot be read: Sendmail's temporary AUTH failure."""
    return Reply(454, "4.5.4", "Temporary authentication failure")


class Challenge:
    """Send `reply` (334 and the base64 of `data`) and wait for the client's answer."""
    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    @property
    def reply(self):
        text = binascii.b2a_base64(self.data, newline=False).decode("ascii")
        return Reply(334, None, text)

    def __repr__(self):
        return "Challenge(%r)" % (self.data,)


class Credentials:
    """The client's claim: check `password` for `authcid`, then send exchange.finish(ok).
    `authzid` is "" or equal to `authcid` (anything else is refused before this)."""
    __slots__ = ("mechanism", "authzid", "authcid", "password")

    def __init__(self, mechanism, authzid, authcid, password):
        self.mechanism = mechanism
        self.authzid = authzid
        self.authcid = authcid
        self.password = password

    def __repr__(self):        # never the password
        return "Credentials(%r, authzid=%r, authcid=%r)" % (
            self.mechanism, self.authzid, self.authcid)


class Failure:
    """The exchange failed: send `reply`. `reason` is one of BADAUTH/BADPROT/NOAUTHZ,
    `detail` Cyrus-style text, `user` the claimed identity if any (for the log line)."""
    __slots__ = ("reply", "reason", "detail", "user")

    def __init__(self, reason, detail, user=None, reply=None):
        self.reply = reply or auth_failed()
        self.reason = reason
        self.detail = detail
        self.user = user

    def __repr__(self):
        return "Failure(%r, %r, user=%r)" % (self.reason, self.detail, self.user)


def _text(data, limit):
    """`data` as str if it is valid UTF-8, without NUL, at most `limit` octets; else None."""
    if len(data) > limit or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class SaslExchange:
    """One AUTH exchange for `mechanism` ("PLAIN" or "LOGIN"); `initial` is the decoded
    initial response of the AUTH command (b"" for "=") or None."""

    def __init__(self, mechanism, initial=None):
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise ValueError("unsupported SASL mechanism %r" % (mechanism,))
        self.mechanism = mechanism
        self.initial = initial
        self.done = False
        self.user = None              # the authentication identity once known
        self._started = False
        self._state = "start"

    def step(self, response):
        """Advance with the client's decoded response (None for the first step, which
        consumes `initial`). Returns Challenge, Credentials or Failure."""
        if self.done:
            raise ValueError("the SASL exchange is over")
        if not self._started:
            if response is not None:
                raise ValueError("the first step takes no response (it uses `initial`)")
            self._started = True
            response = self.initial
            if response is None:
                return self._challenge_first()
        elif response is None:
            raise ValueError("a response is needed after a challenge")
        if self.mechanism == "PLAIN":
            return self._plain(response)
        return self._login(response)

    def finish(self, ok):
        """The reply to send after checking Credentials: 235 or 535."""
        self.done = True
        return auth_ok() if ok else auth_failed()

    # -- the mechanisms --------------------------------------------------------------
    def _challenge_first(self):
        if self.mechanism == "PLAIN":
            self._state = "plain"
            return Challenge(b"")
        self._state = "user"
        return Challenge(b"Username:")

    def _fail(self, reason, detail):
        self.done = True
        return Failure(reason, detail, self.user)

    def _plain(self, data):
        # message = [authzid] UTF8NUL authcid UTF8NUL passwd   (RFC 4616 section 2)
        parts = data.split(b"\0")
        if len(parts) != 3:
            return self._fail(BADPROT, "PLAIN: need authzid NUL authcid NUL password")
        authzid = _text(parts[0], MAX_USER)
        authcid = _text(parts[1], MAX_USER)
        password = _text(parts[2], MAX_PASSWORD)
        if authcid is not None:
            self.user = authcid
        if authzid is None or not authcid or password is None or not password:
            return self._fail(BADPROT, "PLAIN: bad authentication identity or password")
        if authzid and authzid != authcid:
            return self._fail(NOAUTHZ, "requested identity not authenticated identity")
        self.done = True
        return Credentials("PLAIN", authzid, authcid, password)

    def _login(self, data):
        if self._state in ("start", "user"):
            user = _text(data, MAX_USER)
            if not user:
                return self._fail(BADPROT, "LOGIN: bad username")
            self.user = user
            self._state = "password"
            return Challenge(b"Password:")
        password = _text(data, MAX_PASSWORD)
        if not password:
            return self._fail(BADAUTH, "Password verification failed")
        self.done = True
        return Credentials("LOGIN", "", self.user, password)

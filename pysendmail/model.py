"""The values every role shares: envelope, recipient, delivery status.

Plain classes with __slots__ rather than dataclasses: `dataclasses` costs ~18 ms
to import, which every cron and PHP submission would pay.
"""

# Recipient states in the queue.
PENDING = "pending"      # not yet tried, or to be tried again
DEFERRED = "deferred"    # tried, failed temporarily
SENT = "sent"            # delivered (final)
FAILED = "failed"        # failed permanently (final; a bounce is owed or was sent)
FINAL_STATES = (SENT, FAILED)


class Recipient:
    """One envelope recipient and where its delivery stands.

    `address` is the address as given (what mailq prints, e.g. "Carol <c@x>");
    `addr` the bare route address; `mailer`/`host`/`user` the router's verdict.
    `notify` is the DSN NOTIFY list ("" means the default: FAILURE,DELAY);
    `orcpt` the DSN ORCPT value; `parent` the alias it came from, if any.
    """

    __slots__ = ("address", "addr", "state", "notify", "orcpt", "mailer", "host",
                 "user", "status", "diag", "attempts", "parent", "owner", "reported")

    def __init__(self, address, addr=None, state=PENDING, notify="", orcpt="",
                 mailer="", host="", user="", status="", diag="", attempts=0,
                 parent="", owner="", reported=""):
        self.address = address
        self.addr = addr if addr is not None else address
        self.state = state
        self.notify = notify
        self.orcpt = orcpt
        self.mailer = mailer
        self.host = host
        self.user = user
        self.status = status
        self.diag = diag
        self.attempts = attempts
        self.parent = parent
        self.owner = owner
        self.reported = reported      # DSN kinds already sent for it: "failure", "delay,success"

    @property
    def final(self):
        return self.state in FINAL_STATES

    def wants(self, what):
        """Does this recipient's NOTIFY ask for `what` (SUCCESS, FAILURE, DELAY)?"""
        if not self.notify:
            return what in ("FAILURE", "DELAY")
        parts = self.notify.upper().split(",")
        return "NEVER" not in parts and what in parts

    def __repr__(self):
        return f"Recipient({self.address!r}, state={self.state!r}, mailer={self.mailer!r})"


class Envelope:
    """A queued message's envelope and bookkeeping; the headers live here too
    (as in Sendmail's qf file) so header edits never rewrite the body file.

    `headers` is a list of raw header fields as bytes, each "Name: value" with
    LF-terminated folded lines (no final LF). `sender` is "" for the null sender.
    """

    __slots__ = ("qid", "created", "sender", "recipients", "headers", "uid",
                 "user", "full_name", "body_type", "envid", "ret", "priority",
                 "attempts", "last_attempt", "next_attempt", "hold_reason",
                 "size", "protocol", "relay", "warned", "macros", "error_mode",
                 "flags")

    def __init__(self, qid="", created=0, sender="", recipients=None, headers=None,
                 uid=-1, user="", full_name="", body_type="", envid="", ret="",
                 priority=0, attempts=0, last_attempt=0, next_attempt=0,
                 hold_reason="", size=0, protocol="", relay="", warned=False,
                 macros=None, error_mode="", flags=""):
        self.qid = qid
        self.created = created
        self.sender = sender
        self.recipients = recipients if recipients is not None else []
        self.headers = headers if headers is not None else []
        self.uid = uid
        self.user = user
        self.full_name = full_name
        self.body_type = body_type
        self.envid = envid
        self.ret = ret
        self.priority = priority
        self.attempts = attempts
        self.last_attempt = last_attempt
        self.next_attempt = next_attempt
        self.hold_reason = hold_reason
        self.size = size
        self.protocol = protocol
        self.relay = relay
        self.warned = warned
        self.macros = macros if macros is not None else {}
        self.error_mode = error_mode
        self.flags = flags

    @property
    def done(self):
        return all(r.final for r in self.recipients)

    def header(self, name):
        """The value of the first header called `name` (bytes, unfolded), or None."""
        key = name.lower().encode() + b":"
        for h in self.headers:
            if h[: len(key)].lower() == key:
                return h[len(key):].replace(b"\n", b"").strip()
        return None

    def header_block(self):
        """The headers as they go into a message: LF line ends, no blank line."""
        return b"".join(h + b"\n" for h in self.headers)

    def __repr__(self):
        return f"Envelope({self.qid!r}, sender={self.sender!r}, rcpts={len(self.recipients)})"


class DeliveryStatus:
    """The outcome of one delivery attempt for one recipient (Postfix's dsn.h idea).

    `status` is an RFC 3463 code ("2.0.0", "4.2.2", "5.1.1"); its class decides:
    2 delivered, 4 try again later, 5 bounce. `reply` is the text shown to people
    (the remote reply, or Sendmail's "User unknown"), `action` the DSN action.
    """

    __slots__ = ("status", "reply", "action", "mta")

    def __init__(self, status, reply="", action=None, mta=""):
        self.status = status
        self.reply = reply
        self.action = action or {"2": "delivered", "4": "delayed"}.get(status[:1], "failed")
        self.mta = mta

    @property
    def ok(self):
        return self.status.startswith("2")

    @property
    def temporary(self):
        return self.status.startswith("4")

    @property
    def permanent(self):
        return self.status.startswith("5")

    def __repr__(self):
        return f"DeliveryStatus({self.status!r}, {self.reply!r})"

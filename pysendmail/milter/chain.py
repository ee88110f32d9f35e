"""The milter chain of one SMTP session: the filters of O InputMailFilters, in order.

Role: Sendmail's milter_command()/milter_data() over `milter.client.MilterClient`s.  Each
stage (connect, helo, mail, rcpt, data, unknown) asks the filters in order; the first one
that rejects, tempfails, discards or answers a reply code decides and the later ones are
not asked; ACCEPT takes that filter out for the rest of the message (at connect/helo: the
session) while the others go on.  At end of message each filter gets the headers and body
as the earlier filters left them, and its changes are applied, in its order, to a
`Message`.  A filter that fails (down, slow, garbage: the client's FAILED) acts by its F=:
T tempfail, 4 close with 421, R reject, none: a log line and the chain carries on without
it; a failed filter never half-edits the message (its changes come only with its verdict).

API (every coroutine returns a `Verdict`, end_of_message an `EomResult`):

  chain = MilterChain(specs, macros=None, log=None, hostname="localhost", log_level=9)
  chain = MilterChain.from_config(milter_config, **kw)      # config.MilterConfig
  await chain.connect(hostname, family, port, address, macros)   # family b'4' b'6' b'L' b'U'
  await chain.helo(name, macros)
  await chain.mail(["<sender>", "SIZE=10"], macros)              # starts a message
  await chain.rcpt(["<rcpt>", "NOTIFY=NEVER"], macros, rejected=False)
  await chain.data(macros);  await chain.unknown(line, macros)
  await chain.end_of_message(headers, body, macros, sender=None, recipients=None)
  await chain.abort()   # RSET / message given up;   await chain.quit()   # session end

Verdict.action: CONTINUE (go on), ACCEPT (go on; no filter left for this message, or at
end of message: deliver), REJECT, TEMPFAIL, SHUTDOWN (reply 421 and close), DISCARD
(accept the message, then drop it).  Verdict.reply is the SMTP reply to give, Sendmail's
texts: "550 5.7.1 Command rejected" (mail, rcpt, data, unknown), "554 5.7.1 Command
rejected" (end of message), "451 4.3.2 Please try again later", "421 4.3.0 closing
connection" / "421 4.7.0 HOST closing connection", or the filter's own (maybe multi-line,
CRLF inside; a 4xx is TEMPFAIL, 421 SHUTDOWN, 5xx REJECT).  At connect a reply code only
picks the action (Sendmail ignores its text): REJECT there means greet with 554 and answer
commands with the reply ("550 5.0.0 Command rejected"), TEMPFAIL means answer MAIL with
451 4.3.2.  A REJECT/TEMPFAIL/SHUTDOWN at connect or helo sticks: every later call
returns it without asking the filters (Sendmail's sm_milterize = false).  A DISCARD
before end of message sticks for that message.
"""
import os

from ..proto import milter_codec as mc
from . import client as mcl
from .client import (ACCEPT, CONTINUE, DISCARD, FAILED, REJECT, REPLY, SKIP, TEMPFAIL,
                     MilterClient)

SHUTDOWN = "shutdown"
MSG_TEMPFAIL = "451 4.3.2 Please try again later"
_REJECT_TEXT = {"connect": "550 5.0.0 Command rejected", "helo": "550 5.0.0 Command rejected",
                "eom": "554 5.7.1 Command rejected"}
_SESSION_STAGES = ("connect", "helo")


class Verdict:
    """What the chain says about one stage (see the module docstring).

    action  CONTINUE, ACCEPT, REJECT, TEMPFAIL, SHUTDOWN, DISCARD
    reply   the SMTP reply text for REJECT/TEMPFAIL/SHUTDOWN, else None
    milter  the name of the filter that decided, or None
    stage   'connect', 'helo', 'mail', 'rcpt', 'data', 'unknown', 'eom'
    failed  True when the decision comes from a filter's failure (F=R/T/4)
    """
    __slots__ = ("action", "reply", "milter", "stage", "failed")

    def __init__(self, action, reply=None, milter=None, stage=None, failed=False):
        self.action, self.reply, self.milter = action, reply, milter
        self.stage, self.failed = stage, failed

    @property
    def proceeds(self):
        """True for CONTINUE and ACCEPT: the SMTP command goes on as if no filter were."""
        return self.action in (CONTINUE, ACCEPT)

    @property
    def code(self):
        return int(self.reply[:3]) if self.reply and self.reply[:3].isdigit() else 0

    def lines(self):
        """The reply's lines as [(code, text)], text without the code and separator."""
        out = []
        for line in (self.reply or "").replace("\r\n", "\n").split("\n"):
            if line:
                code = line[:3] if line[:3].isdigit() else str(self.code)
                out.append((code, line[4:] if line[:3].isdigit() else line))
        return out

    def __eq__(self, other):
        return isinstance(other, Verdict) and (self.action, self.reply) == (other.action, other.reply)

    def __repr__(self):
        return "Verdict(%s%s%s)" % (self.action, ", %r" % self.reply if self.reply else "",
                                    ", milter=%r" % self.milter if self.milter else "")


def strip_address(addr):
    """'<a@b>' -> 'a@b' (white space and one pair of angle brackets off)."""
    addr = addr.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    return addr


class Recipient:
    """An envelope recipient: address without brackets, ESMTP arguments (a tuple)."""
    __slots__ = ("address", "args")

    def __init__(self, address, args=()):
        self.address, self.args = strip_address(address), tuple(args)

    def __eq__(self, other):
        return isinstance(other, Recipient) and (self.address, self.args) == (other.address, other.args)

    def __repr__(self):
        return "Recipient(%r%s)" % (self.address, ", %r" % (self.args,) if self.args else "")


class Message:
    """The message as the filters leave it.

    sender       envelope sender without brackets ('' for <>); sender_args: its ESMTP args
    recipients   [Recipient]
    headers      [[name, value]] in order; value as it follows the colon (with its leading
                 space, LF inside folded values)
    body         bytes, LF line ends
    quarantine   the reason of the last SMFIR_QUARANTINE, or None
    changed      set of what changed: 'headers', 'body', 'sender', 'recipients'
    """
    __slots__ = ("sender", "sender_args", "recipients", "headers", "body", "quarantine",
                 "changed")

    def __init__(self, sender="", sender_args=(), recipients=(), headers=(), body=b""):
        self.sender, self.sender_args = strip_address(sender), tuple(sender_args)
        self.recipients = [r if isinstance(r, Recipient) else Recipient(r) for r in recipients]
        self.headers = [[n, v] for n, v in headers]
        self.body = bytes(body).replace(b"\r\n", b"\n")
        self.quarantine = None
        self.changed = set()

    def header_values(self, name):
        low = name.lower()
        return [v for n, v in self.headers if n.lower() == low]

    # ---------------------------------------------------------- the actions

    def add_header(self, name, value):
        self.headers.append([name, value])
        self.changed.add("headers")

    def insert_header(self, index, name, value):
        self.headers.insert(max(0, min(index, len(self.headers))), [name, value])
        self.changed.add("headers")

    def change_header(self, index, name, value):
        """SMFIR_CHGHEADER: the index-th (1-based; 0 counts as 1) header called name
        (any case) gets value; an empty value deletes it; a missing one is added unless
        value is empty (Sendmail's milter_changeheader)."""
        low, left = name.lower(), index
        for pos, (n, _) in enumerate(self.headers):
            if n.lower() == low:
                left -= 1
                if left <= 0:
                    if value.strip() == "":
                        del self.headers[pos]
                    else:
                        self.headers[pos][1] = value
                    self.changed.add("headers")
                    return
        if value.strip() != "":
            self.add_header(name, value)

    def add_recipient(self, address, args=()):
        self.recipients.append(Recipient(address, args))
        self.changed.add("recipients")

    def delete_recipient(self, address):
        low = strip_address(address).lower()
        keep = [r for r in self.recipients if r.address.lower() != low]
        if len(keep) != len(self.recipients):
            self.recipients[:] = keep
            self.changed.add("recipients")

    def change_sender(self, address, args=()):
        self.sender, self.sender_args = strip_address(address), tuple(args)
        self.changed.add("sender")

    def replace_body(self, body):
        self.body = bytes(body).replace(b"\r\n", b"\n")
        self.changed.add("body")

    def apply(self, modifications, leadspc=False):
        """Apply one filter's mc.Modification list in its order.  Without HDR_LEADSPC a
        header value gets the space after the colon that libmilter took off."""
        def hv(value):
            value = value.replace("\r\n", "\n")
            return value if leadspc or value == "" else " " + value
        body = None
        for m in modifications:
            if isinstance(m, mc.AddHeader):
                self.add_header(m.name, hv(m.value))
            elif isinstance(m, mc.InsHeader):
                self.insert_header(m.index, m.name, hv(m.value))
            elif isinstance(m, mc.ChgHeader):
                self.change_header(m.index, m.name, hv(m.value))
            elif isinstance(m, mc.AddRcptPar):
                self.add_recipient(m.rcpt, m.args)
            elif isinstance(m, mc.AddRcpt):
                self.add_recipient(m.rcpt)
            elif isinstance(m, mc.DelRcpt):
                self.delete_recipient(m.rcpt)
            elif isinstance(m, mc.ChgFrom):
                self.change_sender(m.sender, m.args)
            elif isinstance(m, mc.ReplBody):
                body = (body or []) + [m.chunk]
        if body is not None:
            self.replace_body(b"".join(body))

    def __repr__(self):
        return "Message(%r, %r, %d headers, %d bytes)" % (
            self.sender, self.recipients, len(self.headers), len(self.body))


class EomResult:
    """end_of_message(): verdict (ACCEPT = deliver), message (the Message), quarantine."""
    __slots__ = ("verdict", "message")

    def __init__(self, verdict, message):
        self.verdict, self.message = verdict, message

    @property
    def quarantine(self):
        return self.message.quarantine

    def __repr__(self):
        return "EomResult(%r, %r)" % (self.verdict, self.message)


class MilterChain:
    """The filters of one SMTP session (see the module docstring).

    specs      [config.MilterSpec] (or anything with name, socket, flags, timeouts), in order
    macros     {stage: macro names} (config.MilterConfig.macros); DEFAULT_MACROS otherwise
    log        callable(text) for the log lines; kept in self.log_lines when None
    hostname   $j, for the "421 4.7.0 HOST closing connection" reply
    log_level  Milter.LogLevel: failures are logged above 0, decisions above 3
    """

    def __init__(self, specs, macros=None, log=None, hostname="localhost", log_level=9,
                 data_size=None, client_factory=MilterClient):
        self.specs = list(specs)
        self.hostname = hostname
        self.log_level = log_level
        self.log_lines = []
        self._log = log or self.log_lines.append
        kw = {"data_size": data_size} if data_size else {}
        self.clients = [client_factory(s.name, s.socket, timeouts=getattr(s, "timeouts", None),
                                       macros=macros, **kw) for s in self.specs]
        self._sticky = None         # a connect/helo verdict that ends filtering
        self._discard = False       # the message is to be discarded
        self._logged = set()        # filters whose failure is logged
        self.sender, self.sender_args, self.recipients = "", (), []

    @classmethod
    def from_config(cls, config, **kw):
        """A chain of config.MilterConfig's filters, macros and log level."""
        kw.setdefault("macros", config.macros)
        kw.setdefault("log_level", config.log_level)
        if getattr(config, "max_data_size", None):
            kw.setdefault("data_size", config.max_data_size)
        return cls(config.filters, **kw)

    def log(self, level, text):
        if self.log_level > level:
            self._log(text)

    # ------------------------------------------------------------ verdicts

    def _reply(self, action, stage):
        if action == REJECT:
            return _REJECT_TEXT.get(stage, "550 5.7.1 Command rejected")
        if action == TEMPFAIL:
            return MSG_TEMPFAIL
        if action == SHUTDOWN:
            if stage in ("mail", "rcpt", "unknown"):
                return "421 4.3.0 closing connection"
            return "421 4.7.0 %s closing connection" % self.hostname
        return None

    def _decide(self, action, stage, name, failed=False, reply=None):
        return Verdict(action, reply or self._reply(action, stage), name, stage, failed)

    def _from_result(self, result, stage, name):
        """The Verdict of a filter's deciding Result (not CONTINUE/ACCEPT/SKIP/FAILED)."""
        if result.action == REPLY:
            text = result.reply.text
            if text.startswith("421"):
                action = SHUTDOWN
            else:
                action = TEMPFAIL if text[:1] == "4" else REJECT
            if stage == "connect":          # Sendmail keeps the state, not the text
                return self._decide(action, stage, name)
            return self._decide(action, stage, name, reply=text)
        return self._decide(result.action, stage, name)

    def _failure(self, spec, result, stage):
        """A FAILED Result: the F= verdict, or None to carry on without the filter."""
        mode = getattr(spec, "on_failure", None)
        if mode is None:
            flags = getattr(spec, "flags", ())
            mode = ("tempfail" if "T" in flags else "shutdown" if "4" in flags
                    else "reject" if "R" in flags else None)
        if spec.name not in self._logged:
            self._logged.add(spec.name)
            self.log(0, "%s; %s" % (result.error or "milter %s: failed" % spec.name,
                                    "to error state (%s)" % mode if mode
                                    else "carrying on without it"))
        if mode is None:
            return None
        action = {"tempfail": TEMPFAIL, "shutdown": SHUTDOWN, "reject": REJECT}[mode]
        return self._decide(action, stage, spec.name, failed=True)

    def _active(self, client, spec):
        if client.state == mcl.ERROR:
            return bool(getattr(spec, "flags", ()) and set(spec.flags) & set("RT4"))
        return client.state in (mcl.OPEN, mcl.INMSG)

    def _left(self, stage):
        if any(self._active(c, s) for c, s in zip(self.clients, self.specs)):
            return Verdict(CONTINUE, stage=stage)
        return Verdict(ACCEPT, stage=stage)

    async def _stage(self, stage, call):
        if self._sticky is not None:
            return self._sticky
        if self._discard and stage not in _SESSION_STAGES:
            return Verdict(DISCARD, stage=stage)
        for client, spec in zip(self.clients, self.specs):
            result = await call(client)
            if result.action in (CONTINUE, ACCEPT, SKIP):
                if result.action == ACCEPT:
                    self.log(9, "milter=%s, action=%s, accepted" % (spec.name, stage))
                continue
            if result.action == FAILED:
                verdict = self._failure(spec, result, stage)
                if verdict is None:
                    continue
            else:
                verdict = self._from_result(result, stage, spec.name)
            self.log(3, "Milter: %s: %s by %s%s" % (stage, verdict.action, spec.name,
                                                    ", reply=%s" % verdict.reply
                                                    if verdict.reply else ""))
            return await self._decided(verdict, stage)
        return self._left(stage)

    async def _decided(self, verdict, stage):
        if stage in _SESSION_STAGES:        # Sendmail stops filtering the session
            await self.quit()
            if verdict.action == DISCARD:   # no meaning at connect/helo: go on unfiltered
                verdict = Verdict(ACCEPT, stage=stage, milter=verdict.milter)
            self._sticky = verdict
        elif verdict.action == DISCARD:
            self._discard = True
        return verdict

    # ------------------------------------------------------------ stages

    async def connect(self, hostname, family=mc.SMFIA_UNKNOWN, port=0, address="", macros=None):
        """SMFIC_CONNECT to every filter (each connects first; C: timeout)."""
        return await self._stage("connect", lambda c: c.connect(hostname, family, port,
                                                                 address, macros))

    async def helo(self, name, macros=None):
        return await self._stage("helo", lambda c: c.helo(name, macros))

    async def mail(self, args, macros=None):
        """MAIL FROM: args = ['<sender>', 'ESMTP=arg'...].  Starts a message (ABORT to the
        filters that were in one)."""
        self._discard = False
        self.sender, self.sender_args = strip_address(args[0]), tuple(args[1:])
        self.recipients = []
        return await self._stage("mail", lambda c: c.mail(args, macros))

    async def rcpt(self, args, macros=None, rejected=False):
        """RCPT TO: args = ['<rcpt>', 'ESMTP=arg'...].  rejected=True: the MTA refused it
        (only the filters that asked for RCPT_REJ see it).  A proceeding verdict for an
        MTA-accepted recipient records it for end_of_message's envelope."""
        verdict = await self._stage("rcpt", lambda c: c.rcpt(args, macros, rejected))
        if not rejected and verdict.action in (CONTINUE, ACCEPT, DISCARD):
            self.recipients.append(Recipient(args[0], args[1:]))
        return verdict

    async def data(self, macros=None):
        return await self._stage("data", lambda c: c.data(macros))

    async def unknown(self, line, macros=None):
        return await self._stage("unknown", lambda c: c.unknown(line, macros))

    async def end_of_message(self, headers, body, macros=None, sender=None, recipients=None):
        """Headers ([(name, value)], value as after the colon), EOH, body, EOM to each
        filter in turn, each seeing the Message as the earlier ones changed it.  body:
        bytes or a file path (read whole).  sender/recipients: the envelope (default: what
        mail() and rcpt() recorded; recipients as Recipient or '<addr>').  macros: the
        values for the eoh and eom stages.  Returns EomResult(verdict, message)."""
        if isinstance(body, (str, os.PathLike)):
            with open(body, "rb") as f:
                body = f.read()
        if sender is None:
            sender, sender_args = self.sender, self.sender_args
        else:
            sender_args = ()
        msg = Message(sender, sender_args,
                      self.recipients if recipients is None else recipients, headers, body)
        if self._sticky is not None:
            return EomResult(self._sticky, msg)
        if self._discard:
            await self.abort()
            return EomResult(Verdict(DISCARD, stage="eom"), msg)
        verdict = None
        for client, spec in zip(self.clients, self.specs):
            if client.state not in (mcl.OPEN, mcl.INMSG, mcl.ERROR):
                continue
            result = await client.message([(n, v) for n, v in msg.headers], msg.body,
                                          macros, macros)
            if result.action in (ACCEPT, CONTINUE, SKIP):
                leadspc = bool(client.negotiated and
                               client.negotiated.protocol & mc.SMFIP_HDR_LEADSPC)
                msg.apply(result.modifications, leadspc)
                if result.quarantine is not None:
                    msg.quarantine = result.quarantine
                    self.log(3, "milter=%s, quarantine=%s" % (spec.name, result.quarantine))
                continue
            if result.action == FAILED:
                verdict = self._failure(spec, result, "eom")
                if verdict is None:
                    continue
            else:
                verdict = self._from_result(result, "eom", spec.name)
            self.log(3, "Milter: data, %s by %s%s" % (verdict.action, spec.name,
                                                      ", reply=%s" % verdict.reply
                                                      if verdict.reply else ""))
            break
        await self.abort()                  # the filters not asked, if any
        return EomResult(verdict or Verdict(ACCEPT, stage="eom"), msg)

    # ------------------------------------------------------------ ends

    async def abort(self):
        """SMFIC_ABORT to the filters inside a message (RSET, a refused DATA)."""
        self._discard = False
        for client in self.clients:
            await client.abort()

    async def quit(self):
        """SMFIC_QUIT to every filter and close (end of the SMTP session).  Never fails."""
        for client in self.clients:
            await client.quit()

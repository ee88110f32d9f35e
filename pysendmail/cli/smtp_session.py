"""`sendmail -bs`: the CLI's side of an SMTP session on stdin/stdout.

The protocol is the sans-I/O core (proto.smtp_server) driven by cli.smtp_stdio;
this module is the backend that answers it: addresses are checked by the router
at MAIL and RCPT, and an accepted message goes through the same submission role as
`sendmail -bm` (cleanup, durable queue commit, then delivery per DeliveryMode)
before the 250 reply names its queue id.
"""
import os

from .. import addr as addrmod
from ..errors import AddressError, MTAError, EX_TEMPFAIL
from ..proto.smtp_reply import Reply
from .smtp_stdio import SessionBackend, run_stdio


class CliBackend(SessionBackend):
    def __init__(self, inv, layout, options, ident, log):
        self.inv = inv
        self.layout = layout
        self.options = options
        self.ident = ident
        self.log = log
        self.hostname = ident.j
        self._ctx = None
        try:
            self.max_message_size = int(options.get("MaxMessageSize") or 0)
        except ValueError:
            self.max_message_size = 0

    def _route(self, addr):
        from ..delivery.router import RouteContext, resolve
        if self._ctx is None:
            self._ctx = RouteContext(self.layout, self.options, self.ident,
                                     no_alias=self.inv.no_alias)
        return resolve(addr, self._ctx)

    def check_sender(self, addr, params):
        if addr in ("", "<>"):
            return None
        try:
            addrmod.parse(addr)
        except AddressError as e:
            return Reply(553, "5.0.0", "<%s>... %s" % (addr, e.reason))
        return None

    def check_recipient(self, addr, params):
        try:
            targets = self._route(addr)
        except AddressError as e:
            return Reply(553, "5.0.0", "<%s>... %s" % (addr, e.reason))
        errors = [t for t in targets if t.mailer == "error"]
        if errors and len(errors) == len(targets):
            t = errors[0]
            parts = (t.diag or "550 5.1.1 User unknown").split(" ", 2)
            code = int(parts[0]) if parts[0].isdigit() else 550
            dsn = parts[1] if len(parts) > 2 else (t.status or "5.1.1")
            return Reply(code, dsn, "<%s>... %s" % (addr, parts[-1]))
        return None

    def verify(self, arg):
        return Reply(252, "2.5.2", "Cannot VRFY user; try RCPT to attempt delivery (or try finger)")

    def accept_message(self, sender, recipients, params, data):
        from ..config import cmdline
        from ..submission.submit import Submission
        inv = cmdline.Invocation("sendmail")
        inv.sender = sender
        inv.sender_given = True
        inv.ignore_dots = True
        inv.recipients = [addr for addr, _ in recipients]
        inv.body_type = (params.get("BODY") or "").upper()
        inv.envid = params.get("ENVID") or ""
        inv.ret = (params.get("RET") or "").upper()
        inv.delivery_mode = self.inv.delivery_mode
        inv.error_mode = "m"
        inv.protocol = "ESMTP" if params is not None else "SMTP"
        inv.options = self.inv.options
        fd = os.memfd_create("pysendmail-bs")
        try:
            os.write(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
            sub = Submission(inv, self.layout, self.options, self.ident, self.log, stdin_fd=fd)
            sub.quiet = True
            sub.rcpt_params = {addr: p for addr, p in recipients}
            status = sub.run()
        finally:
            os.close(fd)
        if sub.qid is None or status not in (0, 67):
            raise MTAError("Message not queued", EX_TEMPFAIL)
        return sub.qid


def main(inv, layout, options, ident, log):
    return run_stdio(CliBackend(inv, layout, options, ident, log), 0, 1, peer="%s@localhost" % (
        _login()))


def _login():
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "uid%d" % os.getuid()

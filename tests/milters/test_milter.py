#!/usr/bin/env python3
"""A pymilter milter for tests/test_milter_client.py (libmilter underneath: the reference peer).

Usage: test_milter.py SOCKET LOGFILE [MODE]
SOCKET is a libmilter spec (inet:PORT@127.0.0.1, unix:/path).  Every callback and the
macros it saw are appended to LOGFILE as one JSON object a line.

MODE main (default): the action at end of message is chosen by the sender's local part:
  accept, continue, reject, tempfail, discard, reply, replyml, addheader, insheader,
  chgheader, delheader, addrcpt, addrcptpar, delrcpt, chgfrom, replacebody, quarantine,
  progress (3 progress calls, 1.5 s apart, over a 1 s read timeout); the sender 'skip'
  makes body() answer SKIP; a recipient 'reject@...' is rejected with a custom reply,
  'tempfail@...' is tempfailed; a helo 'rejectme' is rejected.
MODE lean: no replies for connect/helo/rcpt/header/eoh (@noreply), no body and no unknown
  (@nocallback), rejected recipients too (RCPT_REJ).
MODE slow: eom sleeps 3 s.  MODE die: the process exits inside envrcpt.
MODE leadspc: HDR_LEADSPC; eom adds X-Lead ("  two spaces" folded) and X-Tight.
"""
import json
import os
import sys
import time

import Milter

LOG = None
MACROS = ["j", "_", "i", "v", "{daemon_name}", "{if_name}", "{if_addr}", "{client_addr}",
          "{client_name}", "{client_port}", "{auth_type}", "{mail_addr}", "{rcpt_addr}",
          "{msg_id}", "{tls_version}", "{x_data}", "{x_eoh}"]


def log(**kw):
    LOG.write(json.dumps(kw) + "\n")
    LOG.flush()


class Main(Milter.Base):
    def seen(self, stage, **kw):
        macros = {m: self.getsymval(m) for m in MACROS if self.getsymval(m) is not None}
        log(stage=stage, macros=macros, **kw)

    def connect(self, hostname, family, hostaddr):
        self.seen("connect", hostname=hostname, family=family, hostaddr=list(hostaddr)
                  if isinstance(hostaddr, tuple) else hostaddr)
        return Milter.CONTINUE

    def hello(self, name):
        self.seen("helo", name=name)
        if name == "rejectme":
            return Milter.REJECT
        return Milter.CONTINUE

    def envfrom(self, sender, *params):
        self.seen("mail", sender=sender, params=list(params))
        self.mode = sender.strip("<>").split("@")[0]
        self.headers, self.chunks = [], []
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        self.seen("rcpt", rcpt=rcpt, params=list(params))
        local = rcpt.strip("<>").split("@")[0]
        if local == "reject":
            self.setreply("553", "5.1.3", "no such user here")
            return Milter.REJECT
        if local == "tempfail":
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def data(self):
        self.seen("data")
        return Milter.CONTINUE

    def header(self, name, value):
        self.seen("header", name=name, value=value)
        return Milter.CONTINUE

    def eoh(self):
        self.seen("eoh")
        return Milter.CONTINUE

    def body(self, chunk):
        self.chunks.append(len(chunk))
        log(stage="body", size=len(chunk), head=chunk[:40].decode("latin-1"))
        if self.mode == "skip":
            return Milter.SKIP
        return Milter.CONTINUE

    def unknown(self, cmd):
        self.seen("unknown", cmd=cmd.decode("latin-1") if isinstance(cmd, bytes) else cmd)
        return Milter.CONTINUE

    def eom(self):
        self.seen("eom", chunks=self.chunks)
        m = self.mode
        if m == "reject":
            return Milter.REJECT
        if m == "tempfail":
            return Milter.TEMPFAIL
        if m == "discard":
            return Milter.DISCARD
        if m == "reply":
            self.setreply("554", "5.7.0", "go away 100%%")
            return Milter.REJECT
        if m == "replyml":
            self.setreply("451", "4.7.1", "first line", "second line", "third line")
            return Milter.TEMPFAIL
        if m == "addheader":
            self.addheader("X-Added", "one")
            self.addheader("X-Added", "two")
        elif m == "insheader":
            self.addheader("X-Inserted", "at zero", 0)
        elif m == "chgheader":
            self.chgheader("Subject", 1, "changed subject")
        elif m == "delheader":
            self.chgheader("X-Remove", 2, "")
        elif m == "addrcpt":
            self.addrcpt("<new@example.test>")
        elif m == "addrcptpar":
            self.addrcpt("<new2@example.test>", "NOTIFY=NEVER ORCPT=rfc822;x@y")
        elif m == "delrcpt":
            self.delrcpt("<old@example.test>")
        elif m == "chgfrom":
            self.chgfrom("<bounce@example.test>", "SIZE=100 BODY=8BITMIME")
        elif m == "replacebody":
            self.replacebody(b"new body\r\n" * 10000)
        elif m == "quarantine":
            self.quarantine("held for review")
        elif m == "progress":
            for _ in range(3):
                time.sleep(0.6)
                self.progress()
        elif m == "continue":
            return Milter.CONTINUE
        return Milter.ACCEPT

    def abort(self):
        self.seen("abort")
        return Milter.CONTINUE

    def close(self):
        log(stage="close")
        return Milter.CONTINUE


@Milter.rejected_recipients
class Lean(Milter.Base):
    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        log(stage="connect", macros={m: self.getsymval(m) for m in MACROS
                                     if self.getsymval(m) is not None})
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, name):
        log(stage="helo")
        return Milter.CONTINUE

    def envfrom(self, sender, *params):
        log(stage="mail", protocol=self._protocol,
            macros={m: self.getsymval(m) for m in MACROS if self.getsymval(m) is not None})
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, rcpt, *params):
        log(stage="rcpt", rcpt=rcpt)
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        log(stage="header", name=name)
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self):
        log(stage="eoh")
        return Milter.CONTINUE

    @Milter.nocallback
    def body(self, chunk):
        return Milter.CONTINUE

    @Milter.nocallback
    def unknown(self, cmd):
        return Milter.CONTINUE

    def eom(self):
        log(stage="eom")
        self.addheader("X-Lean", "yes")
        return Milter.ACCEPT


class Slow(Main):
    def eom(self):
        time.sleep(3)
        return Milter.ACCEPT


class Die(Main):
    def envrcpt(self, rcpt, *params):
        os._exit(3)


@Milter.header_leading_space
class LeadSpace(Main):
    """HDR_LEADSPC: header values arrive as they are after the colon (leading white space
    and folding kept), and the values it adds are taken as given."""
    def eom(self):
        self.seen("eom")
        self.addheader("X-Lead", "  two spaces\n\tand a fold")
        self.addheader("X-Tight", "no-space")
        return Milter.ACCEPT


def main():
    global LOG
    sock, logfile = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "main"
    LOG = open(logfile, "a")
    Milter.factory = {"main": Main, "lean": Lean, "slow": Slow, "die": Die,
                      "leadspc": LeadSpace}[mode]
    Milter.set_flags(Milter.CURR_ACTS)
    log(stage="start", mode=mode)
    Milter.runmilter("test_milter", sock, 60)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A configurable pymilter milter for tests/test_milter_chain.py (libmilter underneath).

Usage: chain_milter.py SOCKET LOGFILE CONFIG_JSON
Every callback is appended to LOGFILE as one JSON object a line (eom also logs the headers
and the body it was given).  CONFIG_JSON is an object:
  "connect", "helo", "mail", "data", "eom_result": the answer at that stage:
      "continue", "accept", "reject", "tempfail", "discard" or "reply:CODE:XCODE:text"
  "rcpt": {"local part": answer} for the recipients named (others: continue)
  "eom": actions applied at end of message, in order, each a list:
      ["addheader", name, value], ["insheader", index, name, value],
      ["chgheader", name, index, value], ["addrcpt", rcpt], ["addrcpt_par", rcpt, params],
      ["delrcpt", rcpt], ["chgfrom", sender, params], ["replacebody", text],
      ["quarantine", reason], ["tagbody", text] (the body it got, with text appended),
      ["echo", name] (adds header name: the value of Subject it saw)
"""
import json
import sys

import Milter

LOG = None
CONF = {}


def log(**kw):
    LOG.write(json.dumps(kw) + "\n")
    LOG.flush()


def answer(self, what):
    what = what or "continue"
    if what.startswith("reply:"):
        _, code, xcode, text = what.split(":", 3)
        self.setreply(code, xcode, text)
        return Milter.REJECT if code[0] == "5" else Milter.TEMPFAIL
    return {"continue": Milter.CONTINUE, "accept": Milter.ACCEPT, "reject": Milter.REJECT,
            "tempfail": Milter.TEMPFAIL, "discard": Milter.DISCARD}[what]


class Chain(Milter.Base):
    def connect(self, hostname, family, hostaddr):
        log(stage="connect", hostname=hostname)
        return answer(self, CONF.get("connect"))

    def hello(self, name):
        log(stage="helo", name=name)
        return answer(self, CONF.get("helo"))

    def envfrom(self, sender, *params):
        log(stage="mail", sender=sender, params=list(params))
        self.headers, self.got = [], b""
        return answer(self, CONF.get("mail"))

    def envrcpt(self, rcpt, *params):
        log(stage="rcpt", rcpt=rcpt, params=list(params))
        local = rcpt.strip("<>").split("@")[0]
        return answer(self, CONF.get("rcpt", {}).get(local))

    def data(self):
        log(stage="data")
        return answer(self, CONF.get("data"))

    def header(self, name, value):
        self.headers.append([name, value])
        return Milter.CONTINUE

    def body(self, chunk):
        self.got += chunk
        return Milter.CONTINUE

    def eom(self):
        log(stage="eom", headers=self.headers, body=self.got.decode("latin-1"))
        for act in CONF.get("eom", []):
            kind, args = act[0], act[1:]
            if kind == "addheader":
                self.addheader(args[0], args[1])
            elif kind == "insheader":
                self.addheader(args[1], args[2], args[0])
            elif kind == "chgheader":
                self.chgheader(args[0], args[1], args[2])
            elif kind == "addrcpt":
                self.addrcpt(args[0])
            elif kind == "addrcpt_par":
                self.addrcpt(args[0], args[1])
            elif kind == "delrcpt":
                self.delrcpt(args[0])
            elif kind == "chgfrom":
                self.chgfrom(args[0], args[1])
            elif kind == "replacebody":
                self.replacebody(args[0].encode())
            elif kind == "tagbody":
                self.replacebody(self.got + args[0].encode())
            elif kind == "quarantine":
                self.quarantine(args[0])
            elif kind == "echo":
                seen = [v for n, v in self.headers if n.lower() == "subject"]
                self.addheader(args[0], seen[0] if seen else "(none)")
        return answer(self, CONF.get("eom_result", "accept"))

    def abort(self):
        log(stage="abort")
        return Milter.CONTINUE


def main():
    global LOG, CONF
    sock, logfile = sys.argv[1], sys.argv[2]
    CONF = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    LOG = open(logfile, "a")
    Milter.factory = Chain
    Milter.set_flags(Milter.CURR_ACTS)
    log(stage="start")
    Milter.runmilter("chain_milter", sock, 60)


if __name__ == "__main__":
    main()

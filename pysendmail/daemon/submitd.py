"""The service's side of cli.relay: take a submission over the submit socket.

Each connection carries one `sendmail -bm` invocation: its argv, $HOME, then the
message. It is run through the ordinary submission role (submission.submit) with the
message read straight from the socket, so a 50 MB message needs no more memory
than from stdin; the answer (exit status and the text the command would print) is
sent after the durable commit.

Security stance: the peer's identity is its SO_PEERCRED uid, nothing it says. A
private instance's socket is 0600 (only its owner reaches it). The system instance's
(root's) socket is 0666: any local user submits through it, as through the maildrop,
with the same trust as pickup: the sender it names is kept but marked with
X-Authentication-Warning, its dead.letter is written by a child running as that user,
and its connection is served by a child of the service, so a peer that stalls delays
nobody else (reads time out after 5 minutes).
"""
import os
import struct

from ..proto import submit_wire as wire

MAX_PREAMBLE = 1 << 20


class _Reader:
    def __init__(self, sock):
        self.sock = sock

    def exactly(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("short request")
            data += chunk
        return data


def peer_uid(sock):
    import socket
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def handle(sock, layout, options, ident, log):
    """Serve one connection; closes nothing (the caller does)."""
    from ..config import cmdline
    from ..submission.submit import Submission
    from ..errors import EX_NOPERM, EX_SOFTWARE, EX_USAGE, MTAError
    from ..config import options as optmod

    def answer(status, text=b""):
        sock.sendall(wire.encode_answer(status, text))

    uid = peer_uid(sock)
    caller = None
    if uid != os.geteuid():
        if not (layout.system and os.geteuid() == 0):
            answer(EX_NOPERM, b"sendmail: submit socket: permission denied\n")
            return
        from ..submission.submit import Caller
        caller = Caller(uid)
    r = _Reader(sock)
    try:
        length = wire.preamble_length(r.exactly(wire.HEAD_LEN))
        if length > MAX_PREAMBLE:
            raise ValueError("request too large")
        argv, home = wire.decode_preamble(r.exactly(length))
    except ValueError as e:
        answer(EX_USAGE, b"sendmail: submit socket: %s\n" % str(e).encode())
        return
    prog = argv[0].rpartition("/")[2] if argv else "sendmail"
    try:
        inv = cmdline.parse(argv[1:], "sendmail" if prog == "pysendmail" else prog)
        for name in inv.options:
            optmod.check_name(name)
    except MTAError:
        inv = None              # the command reports its own usage errors
    if (inv is None or inv.mode != "m" or inv.queue_run or inv.cf is not None
            or inv.quarantine is not None or not (inv.recipients or inv.read_recipients)):
        sock.sendall(wire.NO)
        return
    sock.sendall(wire.GO)
    opts = dict(options)
    opts.update(inv.options)
    sub = Submission(inv, layout, opts, ident, log, stdin_fd=sock.fileno(), caller=caller)
    sub.output = []
    sub.home = home
    sub.defer_background = True
    try:
        status = sub.run()
    except MTAError as e:
        sub.output.append(e.message)
        status = e.status
    except Exception as e:                      # a bug: say so, keep serving
        log.err(None, "submit socket: internal error: %r" % (e,))
        sub.output.append("sendmail: internal error")
        status = EX_SOFTWARE
    text = "".join(line + "\n" for line in sub.output)
    try:
        answer(status, text.encode("utf-8", "surrogateescape"))
    finally:
        sub.start_background()      # the caller has its answer: now the delivery child

"""The submission client: hand a message to the instance's running service.

When `sendmail -bm` finds the service's submit socket (<spool>/public/submit) and
the socket belongs to the caller's own uid (or is the system instance's, open to
every local user: daemon.submitd trusts only the peer's uid), it sends its argv and
$HOME, streams stdin, and waits for the service's answer: the exit status and what to
print. The service runs the same submission role (submission.submit) with everything already
imported, and answers only after the durable commit, so the contract ("exit 0 means
the message is on disk") is unchanged. This is Postfix's postdrop/pickup idea, and
it is what makes a submission cost little more than the interpreter's start: this
module imports only the builtins `posix` and `_socket` (and the small wire format).

The service answers GO once it has parsed the argv and found a plain submission
(-bm, no -C, no queue run); NO, or no service, a socket of another uid, a refused
connection, returns None before a byte of the message is read, and the command goes
on by itself (parsing its argv, reporting usage errors, running other modes).

The wire format is proto.submit_wire's.
"""
import posix

from ..proto.submit_wire import GO, encode_request, parse_answer_head

EX_OSERR = 71


def _recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def submit_to_service(argv, lay):
    """Submit through the service of layout `lay`; returns the exit status, or None to
    submit directly."""
    from .. import layout as layoutmod
    path = lay.submit_socket
    try:
        st = posix.stat(path)
    except OSError:
        return None
    if st.st_mode & 0o170000 != 0o140000:
        return None
    if st.st_uid != posix.geteuid() and not (lay.system and st.st_uid == 0
                                             and st.st_mode & 0o002):
        return None     # another user's private service: not ours to use
    import _socket
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    try:
        s.sendall(encode_request(argv, layoutmod.getenv("HOME") or ""))
        if _recv_exactly(s, 3) != GO:
            s.close()           # not a plain submission (or not for the service): do it here
            return None
    except OSError:
        s.close()
        return None
    try:
        while True:
            data = posix.read(0, 65536)
            if not data:
                break
            s.sendall(data)
        s.shutdown(_socket.SHUT_WR)
        answer = b""
        while b"\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("no answer")
            answer += chunk
        head, _, rest = answer.partition(b"\n")
        status, length = parse_answer_head(head)
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    except (OSError, ValueError):
        posix.write(2, b"sendmail: the submission service failed; the message was not queued\n")
        return EX_OSERR
    finally:
        s.close()
    view = memoryview(rest)
    while view:
        view = view[posix.write(1, view):]
    return status

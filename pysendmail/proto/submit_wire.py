"""The submit socket's wire format (cli.relay <-> daemon.submitd), without I/O.

    request:  b"PSMSUB1 " + 8-digit length + b"\\n" + netstrings (argv..., "HOME=...")
              then the message bytes until the client shuts down its write side
    answer:   b"<status> <length>\\n" + that many bytes of output for stdout
"""

MAGIC = b"PSMSUB1 "
GO = b"GO\n"
NO = b"NO\n"
HEAD_LEN = len(MAGIC) + 9          # magic, 8 digits, newline


def netstrings(items):
    return b"".join(b"%d:%s," % (len(i), i) for i in items)


def parse_netstrings(data):
    items = []
    pos = 0
    while pos < len(data):
        colon = data.index(b":", pos)
        n = int(data[pos:colon])
        start = colon + 1
        if data[start + n:start + n + 1] != b",":
            raise ValueError("bad netstring")
        items.append(data[start:start + n])
        pos = start + n + 1
    return items


def encode_request(argv, home):
    body = netstrings([a.encode("utf-8", "surrogateescape") for a in argv] +
                      [b"HOME=" + home.encode("utf-8", "surrogateescape")])
    return MAGIC + b"%08d\n" % len(body) + body


def preamble_length(head):
    """The length announced by a request's first HEAD_LEN bytes; ValueError if foreign."""
    if len(head) != HEAD_LEN or not head.startswith(MAGIC) or head[-1:] != b"\n":
        raise ValueError("not a submission")
    return int(head[len(MAGIC):-1])


def decode_preamble(data):
    """(argv, home) from the netstrings of a request."""
    items = [i.decode("utf-8", "surrogateescape") for i in parse_netstrings(data)]
    if not items or not items[-1].startswith("HOME="):
        raise ValueError("no HOME in the request")
    return items[:-1], items[-1][len("HOME="):]


def encode_answer(status, output):
    return b"%d %d\n" % (status, len(output)) + output


def parse_answer_head(line):
    """(status, length) from an answer's first line (without its newline)."""
    status, length = (int(x) for x in line.split())
    return status, length

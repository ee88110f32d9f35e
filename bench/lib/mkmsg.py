"""Test messages for the bench: an exact byte size, the headers `sendmail -t` needs.

make_message(size, to, sender) returns bytes: To, From, Subject, Date and
Message-ID headers, then an ASCII body of numbered lines padded so that the
whole message is exactly `size` bytes, LF line endings (what cron and PHP's
mail() hand to sendmail). Run as a program it writes one to stdout:

    python3 mkmsg.py SIZE [TO] [FROM] > msg
"""
import sys
import time

_LINE = "line %05d of the pysendmail bench message: the quick brown fox jumps over the lazy dog\n"


def make_message(size=2048, to="root@localhost", sender="bench-sender@localhost"):
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    head = (f"To: {to}\nFrom: {sender}\nSubject: pysendmail bench message, {size} bytes\n"
            f"Date: {date}\nMessage-ID: <bench.{size}.{int(time.time())}@localhost>\n\n")
    need = size - len(head.encode())
    if need < 2:
        raise ValueError(f"size {size} is smaller than the headers ({len(head)} bytes)")
    parts, n, got = [], 0, 0
    while got < need:
        n += 1
        line = _LINE % n
        parts.append(line)
        got += len(line)
    body = "".join(parts)[:need - 1] + "\n"
    data = (head + body).encode("ascii")
    assert len(data) == size, (len(data), size)
    return data


if __name__ == "__main__":
    a = sys.argv[1:]
    sys.stdout.buffer.write(make_message(int(a[0]) if a else 2048, *a[1:3]))

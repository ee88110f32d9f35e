"""DATA's bulk reader must decide exactly as the line-by-line one: same message bytes,
same end, same refusal, however the input is split (hypothesis)."""
import random

from hypothesis import given, settings, strategies as st

from pysendmail.proto import smtp_events as ev
from pysendmail.proto.smtp_data import MessageReader

LINES = st.sampled_from([b"plain text line", b".leading dot", b"..two dots", b"", b".",
                         b"x" * 300, b"y" * 1200, b"tab\there", b"bare\rcr", b"bare\nlf",
                         b"\xc3\xa9t\xc3\xa9 8bit", b"end with cr\r", b"MAIL FROM:<x@y>"])


def _run(reader, stream, cuts):
    buf = bytearray()
    data, result = [], None
    pieces, at = [], 0
    for c in sorted(cuts) + [len(stream)]:
        pieces.append(stream[at:c])
        at = c
    for piece in pieces:
        buf += piece
        while True:
            e = reader.read_data(buf)
            if e is ev.NEED_DATA:
                break
            if type(e) is ev.DataChunk:
                data.append(e.data)
                continue
            result = e
            break
        if result is not None:
            break
    return b"".join(data), repr(result), reader.size


class SlowReader(MessageReader):
    def _bulk(self, buf):
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=120), st.booleans(),
       st.lists(st.integers(min_value=0, max_value=200000), max_size=6),
       st.sampled_from([0, 1000]), st.sampled_from([0, 20000]))
def test_bulk_and_line_by_line_agree(lines, terminate, cuts, line_limit, max_size):
    stream = b"\r\n".join(lines) + b"\r\n" + (b".\r\nQUIT\r\n" if terminate else b"")
    cuts = [c % (len(stream) + 1) for c in cuts]
    fast = _run(MessageReader(max_size, line_limit), stream, cuts)
    slow = _run(SlowReader(max_size, line_limit), stream, cuts)
    assert fast == slow


def test_a_large_message_goes_through_the_bulk_path():
    body = b"".join(b"line %05d of the message\r\n" % i for i in range(4000))
    body += b".dot-stuffed\r\n"
    stream = body + b".\r\n"
    r = MessageReader(0, 1000)
    calls = []
    original = r._bulk

    def spy(buf):
        res = original(buf)
        calls.append(res is not None)
        return res
    r._bulk = spy
    data, result, size = _run(r, stream, [random.Random(5).randrange(len(stream))])
    assert result.startswith("MessageComplete")
    assert data == body.replace(b"\r\n.dot", b"\r\ndot")
    assert any(calls)

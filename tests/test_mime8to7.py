"""delivery/mime8to7: Sendmail's 8-bit to 7-bit MIME conversion, checked by decoding
its output with the stdlib `email` package."""
import email
import email.policy
import io
import tracemalloc

import pytest

from pysendmail.delivery import mime8to7
from pysendmail.delivery.mime8to7 import convert, eight_bit_action, needs_conversion


def run(header, body, **kw):
    out = io.BytesIO()
    errors = []
    new = convert(header, io.BytesIO(body), out, "mx.example.org", "4A1B2C3D", errors=errors, **kw)
    return new, out.getvalue(), errors


def parse(header, body):
    raw = b"".join(h + b"\n" for h in header) + b"\n" + body
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def assert_7bit(header, body):
    assert all(h.isascii() for h in header)
    assert body.isascii()
    for line in body.split(b"\n"):
        assert len(line) <= 998


def field(header, name):
    found = [h for h in header if h.lower().startswith(name.lower().encode() + b":")]
    return found


TEXT = "Grüße aus Köln, ça va? naïve café — déjà vu.\n".encode() + b"plain ascii line\n" * 20


def test_plain_text_part_is_quoted_printable_and_round_trips():
    header = [b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=utf-8",
              b"Content-Transfer-Encoding: 8bit", b"Subject: x"]
    new, body, errors = run(header, TEXT)
    assert errors == []
    assert new[:3] == [header[0], header[1], header[3]]
    assert new[-2:] == [b"Content-Transfer-Encoding: quoted-printable",
                        b"X-MIME-Autoconverted: from 8bit to quoted-printable by "
                        b"mx.example.org id 4A1B2C3D"]
    assert len(field(new, "Content-Transfer-Encoding")) == 1
    assert_7bit(new, body)
    assert parse(new, body).get_payload(decode=True) == TEXT


def test_mostly_8bit_part_is_base64_with_crlf_line_ends():
    data = bytes(range(128, 256)) * 40 + b"\nend\n"
    header = [b"MIME-Version: 1.0", b"Content-Type: application/octet-stream"]
    new, body, _ = run(header, data)
    assert b"Content-Transfer-Encoding: base64" in new
    assert new[-1] == b"X-MIME-Autoconverted: from 8bit to base64 by mx.example.org id 4A1B2C3D"
    assert_7bit(new, body)
    lines = body.rstrip(b"\n").split(b"\n")
    assert {len(x) for x in lines[:-1]} == {72}      # Sendmail's base64 line length
    # Sendmail maps the stored LF line ends back to CRLF (the form sent in 8bit)
    assert parse(new, body).get_payload(decode=True) == data.replace(b"\n", b"\r\n")


def test_qp_base64_threshold_is_one_eighth():
    # 100 bytes per line: 12 high bytes (< 1/8) -> QP; 13 high bytes (> 1/8) -> base64
    few = (b"\xe9" * 12 + b"a" * 87 + b"\n") * 10
    many = (b"\xe9" * 13 + b"a" * 86 + b"\n") * 10
    header = [b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=latin1"]
    assert b"Content-Transfer-Encoding: quoted-printable" in run(header, few)[0]
    assert b"Content-Transfer-Encoding: base64" in run(header, many)[0]
    # class q forces quoted-printable; CTE binary forces base64
    assert b"Content-Transfer-Encoding: quoted-printable" in run(header, many, qp_types=["text"])[0]
    binary = header + [b"Content-Transfer-Encoding: binary"]
    assert b"Content-Transfer-Encoding: base64" in run(binary, few)[0]


def test_qp_line_lengths_trailing_space_from_and_dot():
    data = (b"From the start of a line\n"
            b".\n"
            b"trailing space \n"
            b"trailing tab\t\n"
            b"equals = sign\n"
            + b"\xe9" * 100 + b"\n"
            + b"y" * 300 + b"\n"
            + b"a=" * 120 + b" \n"
            + b"x" * 75 + b".\n"
            + b"no final newline \xe9")
    header = [b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=latin1"]
    new, body, _ = run(header, data, qp_types=["text"])
    assert b"Content-Transfer-Encoding: quoted-printable" in new
    lines = body.split(b"\n")
    assert max(len(x) for x in lines) <= 76
    assert b"From=20the start of a line" in lines
    assert b"=2E" in lines and b"." not in lines
    assert b"trailing space=20" in lines and b"trailing tab=09" in lines
    assert b"equals =3D sign" in lines
    for line in lines:
        assert not line.startswith(b"From ")
        assert not line.endswith((b" ", b"\t"))
    # as Sendmail, the last line gets its line end (the body is sent as lines)
    assert parse(new, body).get_payload(decode=True) == data + b"\n"


MULTI = (b"This is the preamble.\n"
         b"--outer\n"
         b"Content-Type: text/plain; charset=utf-8\n"
         b"Content-Transfer-Encoding: 8bit\n"
         b"\n"
         + "Schöne Grüße\n".encode() + b"ascii\n" * 10 +
         b"\n--outer\n"
         b"Content-Type: multipart/alternative; boundary=\"inner\"\n"
         b"\n"
         b"--inner\n"
         b"Content-Type: text/plain\n"
         b"\n"
         b"seven bit only\n"
         b"--inner\n"
         b"Content-Type: text/html; charset=iso-8859-1\n"
         b"Content-Transfer-Encoding: 8bit\n"
         b"\n"
         b"<p>caf\xe9</p>\n"
         b"--inner--\n"
         b"inner epilogue\n"
         b"--outer\n"
         b"Content-Type: image/png\n"
         b"Content-Transfer-Encoding: binary\n"
         b"\n"
         + bytes(range(256)) +
         b"\n--outer\n"
         b"Content-Type: application/pdf\n"
         b"Content-Transfer-Encoding: base64\n"
         b"\n"
         b"JVBERi0xLjQK\n"
         b"--outer--\n"
         b"This is the epilogue.\n")


def test_nested_multipart_round_trip():
    header = [b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="outer"',
              b"Content-Transfer-Encoding: 8bit"]
    new, body, errors = run(header, MULTI)
    assert errors == []
    assert_7bit(new, body)
    # a multipart's own CTE is dropped: its content is 7 bit now
    assert field(new, "Content-Transfer-Encoding") == []
    msg = parse(new, body)
    assert msg.preamble.strip() == "This is the preamble."
    assert msg.epilogue.strip() == "This is the epilogue."
    parts = [p for p in msg.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "text/plain", "text/html", "image/png", "application/pdf"]
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert parts[0].get_payload(decode=True) == "Schöne Grüße\n".encode() + b"ascii\n" * 10
    assert parts[1]["Content-Transfer-Encoding"] is None
    assert parts[1].get_payload(decode=True) == b"seven bit only"
    assert parts[2].get_payload(decode=True) == b"<p>caf\xe9</p>"
    assert parts[3]["Content-Transfer-Encoding"] == "base64"
    assert parts[3].get_payload(decode=True) == bytes(range(256)).replace(b"\n", b"\r\n")
    # an already encoded part is copied as it was
    assert parts[4]["Content-Transfer-Encoding"] == "base64"
    assert parts[4].get_payload(decode=True) == b"%PDF-1.4\n"
    assert b"--inner--\ninner epilogue\n--outer\n" in body
    assert body.count(b"X-MIME-Autoconverted: from 8bit to") == 3


def test_message_rfc822_inside_is_entered():
    inner = (b"From: x@y\nSubject: inner\nContent-Type: text/plain; charset=latin1\n"
             b"Content-Transfer-Encoding: 8bit\n\n" + b"d\xe9j\xe0 vu, inner body\n")
    data = (b"--b1\nContent-Type: text/plain\n\nhello\n"
            b"--b1\nContent-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\n"
            + inner + b"--b1--\n")
    header = [b"MIME-Version: 1.0", b"Content-Type: multipart/mixed; boundary=b1"]
    new, body, _ = run(header, data)
    assert_7bit(new, body)
    msg = parse(new, body)
    rfc822 = msg.get_payload(1)
    assert rfc822.get_content_type() == "message/rfc822"
    assert rfc822["Content-Transfer-Encoding"] is None
    embedded = rfc822.get_payload(0)
    assert embedded["Subject"] == "inner"
    assert embedded["MIME-Version"] == "1.0"          # added, as Sendmail does
    assert embedded["Content-Transfer-Encoding"] == "quoted-printable"
    assert embedded.get_payload(decode=True) == b"d\xe9j\xe0 vu, inner body"


def test_non_mime_message_gets_mime_fields():
    data = b"Hi,\nna\xefve r\xe9sum\xe9 attached.\n"
    header = [("From", "a@example.org"), ("Subject", "plain")]
    new, body, _ = run(header, data)
    assert new == [("From", "a@example.org"), ("Subject", "plain"), ("MIME-Version", "1.0"),
                   ("Content-Type", "text/plain; charset=unknown-8bit"),
                   ("Content-Transfer-Encoding", "quoted-printable"),
                   ("X-MIME-Autoconverted",
                    "from 8bit to quoted-printable by mx.example.org id 4A1B2C3D")]
    raw = [("%s: %s" % h).encode() for h in new]
    assert parse(raw, body).get_payload(decode=True) == data
    new2, _, _ = run([b"Subject: x"], data, default_charset="iso-8859-1")
    assert b"Content-Type: text/plain; charset=iso-8859-1" in new2


def test_seven_bit_message_is_unchanged():
    header = [b"MIME-Version: 1.0", b"Content-Type: multipart/mixed; boundary=outer",
              b"Content-Transfer-Encoding: 7bit"]
    data = MULTI.translate(bytes(list(range(128)) * 2))
    new, body, _ = run(header, data)
    assert new == header and body == data
    assert not needs_conversion(io.BytesIO(data))
    assert needs_conversion(io.BytesIO(MULTI))
    f = io.BytesIO(b"ab\xff")
    f.seek(2)
    assert needs_conversion(f) and f.tell() == 2


def test_signed_and_encoded_parts_are_left_alone():
    signed = (b"--s\nContent-Type: text/plain\n\nsign\xe9d text\n"
              b"--s\nContent-Type: application/pgp-signature\n\nSIG\n--s--\n")
    header = [b"MIME-Version: 1.0",
              b'Content-Type: multipart/signed; boundary="s"; protocol="application/pgp-signature"']
    new, body, _ = run(header, signed)
    assert new == header and body == signed       # class n: cannot be re-encoded


def test_missing_boundary_is_reported():
    header = [b"MIME-Version: 1.0", b"Content-Type: multipart/mixed"]
    _, _, errors = run(header, b"caf\xe9\n")
    assert errors == ['mime8to7: Content-Type: "multipart/mixed": missing boundary']


def test_eight_bit_mode_decisions():
    mime = [b"MIME-Version: 1.0"]
    plain = [b"Subject: x"]
    rfc1049 = [b"Content-Type: postscript"]
    assert eight_bit_action("m", plain) == "convert"
    assert eight_bit_action("m", mime) == "convert"
    assert eight_bit_action("p", mime) == "convert"
    assert eight_bit_action("p", plain) == "pass"
    assert eight_bit_action("p", plain, body_type="8BITMIME") == "convert"
    assert eight_bit_action("s", plain) == "convert"
    assert eight_bit_action("m", rfc1049) == "bounce"
    assert eight_bit_action("p", rfc1049) == "pass"
    assert eight_bit_action("s", mime, has_8bit=False) == "pass"
    with pytest.raises(ValueError):
        eight_bit_action("x", mime)


def test_big_body_in_bounded_memory(tmp_path):
    line = "Ünïcödé text with some accents, mostly ascii otherwise........\n".encode()
    src = tmp_path / "df"
    with open(src, "wb") as fh:
        for _ in range(5 * 1024 * 1024 // len(line) + 1):
            fh.write(line)
    size = src.stat().st_size
    header = [b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=utf-8"]
    tracemalloc.start()
    try:
        with open(src, "rb") as body, open(tmp_path / "out", "wb") as out:
            new = convert(header, body, out, "mx", "Q")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert b"Content-Transfer-Encoding: quoted-printable" in new
    assert peak < size / 20, (peak, size)
    with open(tmp_path / "out", "rb") as fh:
        encoded = fh.read()
    assert encoded.isascii()
    assert parse(new, encoded).get_payload(decode=True) == src.read_bytes()


def test_long_line_without_newlines_in_pieces(monkeypatch):
    monkeypatch.setattr(mime8to7, "LINE_LIMIT", 100)
    data = (b"--not a boundary " + b"\xe9x" * 400 + b"\n--b\n")
    header = [b"MIME-Version: 1.0", b"Content-Type: multipart/mixed; boundary=b"]
    body = b"--b\nContent-Type: text/plain\n\n" + data[:-5] + b"\n--b--\n"
    new, out, _ = run(header, body)
    part = parse(new, out).get_payload(0)
    assert part.get_payload(decode=True) == data[:-5]
    assert max(len(x) for x in out.split(b"\n")) <= 76

"""pysendmail.cleanup.collect: reading a message from a pipe, headers parsed, body streamed.

The body must reach the data file byte for byte (8-bit, NUL and bare CR kept; CRLF
becomes LF), the lone-dot rule must hold wherever the pipe splits the input (fed in
chunks of 1, 2, 3, 7 and 65536 bytes, each chunk read on its own), and a 50 MB body
must go through the installed `sendmail` in bounded memory. The expected results come
from a line-by-line model of the rules written here, independent of the chunked code.
"""
import fcntl
import hashlib
import os
import subprocess
import sys
import termios
import threading
import time

import pytest

from pysendmail.cleanup.collect import collect

CHUNKS = (1, 2, 3, 7, 65536)


# ---- feeding a pipe in exact chunks ----------------------------------------------------

def _pending(fd):
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")


def _feeder(wfd, data, chunk, stop):
    """Write `data` in `chunk`-byte pieces, each only once the reader took the previous one,
    so every os.read of the reader returns exactly one piece."""
    try:
        for i in range(0, len(data), chunk):
            piece = data[i:i + chunk]
            view = memoryview(piece)
            while view:
                view = view[os.write(wfd, view):]
            deadline = time.monotonic() + 10
            while _pending(wfd) and not stop.is_set() and time.monotonic() < deadline:
                time.sleep(0.0002 if chunk < 100 else 0.001)
            if stop.is_set():
                return
    except BrokenPipeError:
        pass
    finally:
        os.close(wfd)


def run_collect(tmp_path, data, chunk=65536, ignore_dots=False, max_headers=32768):
    """Feed `data` through a pipe in `chunk`-byte pieces; return (Collected, body bytes)."""
    rfd, wfd = os.pipe()
    stop = threading.Event()
    t = threading.Thread(target=_feeder, args=(wfd, data, chunk, stop), daemon=True)
    t.start()
    out = tmp_path / ("df.%d" % chunk)
    ofd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        got = collect(rfd, ofd, ignore_dots, max_headers)
    finally:
        stop.set()
        os.close(ofd)
        t.join(15)
        os.close(rfd)
    assert not t.is_alive()
    body = out.read_bytes()
    assert got.body_size == len(body)
    return got, body


# ---- the model ---------------------------------------------------------------------------

def _lines(data):
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _chomp(line):
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(b"\n") else line


def _is_name(name):
    return bool(name) and all(33 <= b <= 126 and b != 58 for b in name)


def model(data, ignore_dots=False):
    """(headers, body) the rules give for `data` (header block well under the limit)."""
    lines = _lines(data)
    headers = []
    i = 0
    while i < len(lines):
        text = _chomp(lines[i])
        if not ignore_dots and text == b".":
            return headers, b""
        if i == 0 and text.startswith(b"From "):
            i += 1
            continue
        if text == b"":
            i += 1
            break
        if text[:1] in (b" ", b"\t") and headers:
            headers[-1] += b"\n" + text
            i += 1
            continue
        name, colon, _ = text.partition(b":")
        if colon and _is_name(name.rstrip(b" \t")):
            headers.append(text)
            i += 1
            continue
        break
    body = []
    for line in lines[i:]:
        if not ignore_dots and _chomp(line) == b".":
            break
        if line.endswith(b"\r\n"):
            line = line[:-2] + b"\n"
        body.append(line)
    body = b"".join(body)
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return headers, body


# ---- byte-exactness ------------------------------------------------------------------------

EIGHT_BIT = bytes(range(256)).replace(b"\n", b"").replace(b"\r", b"")


@pytest.mark.parametrize("chunk", CHUNKS)
def test_body_is_byte_exact(tmp_path, chunk):
    body = (b"plain line\n"
            b"8-bit: " + "déjà vu ✓".encode() + b" \xff\xfe\x80\n"
            b"nul:\0\0 in the middle\n"
            b"bare CR\rinside\n"
            b"CR at end\r\n"
            b"double CR\r\r\n"
            b"all bytes: " + EIGHT_BIT + b"\n"
            b".leading dot kept\n"
            b" . not alone\n"
            b"last line\n")
    data = b"Subject: bytes\r\nX-8bit: \xe9t\xe9\n\n" + body
    got, out = run_collect(tmp_path, data, chunk)
    want = body.replace(b"\r\n", b"\n")
    assert out == want
    assert b"\0\0" in out and b"bare CR\rinside" in out and b"double CR\r\n" in out
    assert got.headers == [b"Subject: bytes", b"X-8bit: \xe9t\xe9"]
    assert got.eight_bit is True


def test_seven_bit_body_is_not_flagged(tmp_path):
    got, out = run_collect(tmp_path, b"Subject: x\n\nplain ascii\n")
    assert got.eight_bit is False
    assert out == b"plain ascii\n"


@pytest.mark.parametrize("chunk", CHUNKS)
def test_crlf_message_becomes_lf(tmp_path, chunk):
    data = b"From: a@b\r\nSubject: crlf\r\n\r\nline 1\r\nline 2\r\n"
    got, out = run_collect(tmp_path, data, chunk)
    assert got.headers == [b"From: a@b", b"Subject: crlf"]
    assert out == b"line 1\nline 2\n"


@pytest.mark.parametrize("chunk", CHUNKS)
def test_final_newline_is_added_when_missing(tmp_path, chunk):
    got, out = run_collect(tmp_path, b"Subject: x\n\nno newline at end", chunk)
    assert out == b"no newline at end\n"
    got, out = run_collect(tmp_path, b"Subject: x\n\nends in CR\r", chunk)
    assert out == b"ends in CR\r\n"


def test_empty_body(tmp_path):
    got, out = run_collect(tmp_path, b"Subject: x\n\n")
    assert (got.headers, out, got.body_size) == ([b"Subject: x"], b"", 0)
    got, out = run_collect(tmp_path, b"")
    assert (got.headers, out) == ([], b"")


# ---- the lone dot, at every chunk boundary ---------------------------------------------------

def _dot_messages():
    """Messages whose ending dot line falls at every offset of a small chunk."""
    out = []
    for pad in range(8):
        filler = b"x" * pad
        out.append(b"Subject: dot\n\nbody " + filler + b"\n.\nafter the dot\n")
        out.append(b"Subject: dot\r\n\r\nbody " + filler + b"\r\n.\r\nafter the dot\r\n")
        out.append(b"Subject: dot\n\n" + filler + b"a\n.\n")
        out.append(b"Subject: dot\n\n" + filler + b"b\n.")                 # dot at EOF, no LF
        out.append(b"Subject: dot\n\n" + filler + b"c\n..\n.x\nx.\n. \n.\nafter\n")
        out.append(b"Subject: dot\n\n.\n" + filler)                       # dot first in body
        out.append(b"Subject: dot\n" + filler + b"X: y\n.\nbody\n")         # dot in the headers
        out.append(b"Subject: dot\n\n" + filler + b"\r\n.\r\n")
    return out


@pytest.mark.parametrize("chunk", (1, 2, 3, 7))
@pytest.mark.parametrize("ignore_dots", (False, True), ids=("no-i", "-i"))
def test_dot_line_at_every_small_chunk_boundary(tmp_path, chunk, ignore_dots):
    for data in _dot_messages():
        headers, body = model(data, ignore_dots)
        got, out = run_collect(tmp_path, data, chunk, ignore_dots)
        assert (got.headers, out) == (headers, body), (chunk, ignore_dots, data)
        if not ignore_dots:
            assert b"after" not in out
        elif b"after" in data:
            assert b"\n.\n" in out and b"after" in out


@pytest.mark.parametrize("ignore_dots", (False, True), ids=("no-i", "-i"))
@pytest.mark.parametrize("shift", range(-4, 5))
def test_dot_line_across_a_64k_boundary(tmp_path, ignore_dots, shift):
    head = b"Subject: big\n\n"
    line = b"y" * 99 + b"\n"
    fill = line * ((65536 - len(head)) // len(line))
    fill += b"z" * (65536 - len(head) - len(fill) + shift - 1) + b"\n"
    for ending in (b".\n", b".\r\n"):
        data = head + fill + ending + b"after the dot\n" + line * 700
        headers, body = model(data, ignore_dots)
        got, out = run_collect(tmp_path, data, 65536, ignore_dots)
        assert got.headers == headers
        assert len(out) == len(body)
        assert out == body
        if ignore_dots:
            assert out.endswith(line) and b"after the dot" in out
        else:
            assert out == fill


@pytest.mark.parametrize("chunk", (1, 3, 65536))
def test_crlf_split_between_chunks(tmp_path, chunk):
    for pad in range(7):
        data = b"Subject: x\r\n\r\n" + b"q" * pad + b"\r\n" + b"r" * pad + b"\r\rs\r\n"
        got, out = run_collect(tmp_path, data, chunk)
        assert out == b"q" * pad + b"\n" + b"r" * pad + b"\r\rs\n"


# ---- header block ------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", (1, 7, 65536))
def test_from_line_is_dropped(tmp_path, chunk):
    data = b"From alice@example.com Thu Nov 26 14:45:26 2026\nSubject: x\n\nbody\nFrom me\n"
    got, out = run_collect(tmp_path, data, chunk)
    assert got.from_line == b"From alice@example.com Thu Nov 26 14:45:26 2026"
    assert got.headers == [b"Subject: x"]
    assert out == b"body\nFrom me\n"


def test_from_line_only_counts_first(tmp_path):
    got, out = run_collect(tmp_path, b"Subject: x\nFrom y\n\nbody\n")
    assert got.from_line is None
    assert got.headers == [b"Subject: x"]
    assert out == b"From y\n\nbody\n"


@pytest.mark.parametrize("chunk", (1, 2, 65536))
def test_folded_headers(tmp_path, chunk):
    data = (b"Subject: a long\r\n subject folded\r\n\tagain\r\n"
            b"To: a@example.com,\n  b@example.com\nX: 1\n\nbody\n")
    got, out = run_collect(tmp_path, data, chunk)
    assert got.headers == [b"Subject: a long\n subject folded\n\tagain",
                           b"To: a@example.com,\n  b@example.com", b"X: 1"]
    assert out == b"body\n"


@pytest.mark.parametrize("data, headers, body", [
    (b"Subject: x\nthis is not a header\nmore\n", [b"Subject: x"], b"this is not a header\nmore\n"),
    (b"Subject: x\nBad Name: y\n\nz\n", [b"Subject: x"], b"Bad Name: y\n\nz\n"),
    (b"no header at all\n\nz\n", [], b"no header at all\n\nz\n"),
    (b" continuation first\nX: y\n", [], b" continuation first\nX: y\n"),
    (b"Subject: x\n:empty name\n", [b"Subject: x"], b":empty name\n"),
    (b"Name : spaced colon ok\n\nb\n", [b"Name : spaced colon ok"], b"b\n"),
    (b"Subject: x\n\xe9t\xe9: y\n\nb\n", [b"Subject: x"], b"\xe9t\xe9: y\n\nb\n"),
])
def test_non_header_line_starts_the_body(tmp_path, data, headers, body):
    for chunk in (1, 65536):
        got, out = run_collect(tmp_path, data, chunk)
        assert (got.headers, out) == (headers, body)
        assert (headers, body) == model(data)


@pytest.mark.parametrize("chunk", (1, 7, 65536))
def test_header_overflow_spills_into_the_body_nothing_lost(tmp_path, chunk):
    fields = [b"X-F%02d: " % i + b"v" * 50 for i in range(40)]          # 57 bytes each
    head = b"\n".join(fields) + b"\n"
    data = head + b"\nbody line\n"
    got, out = run_collect(tmp_path, data, chunk, max_headers=1000)
    assert got.header_overflow is True
    kept = len(got.headers)
    assert 0 < kept < 40
    assert sum(len(h) + 1 for h in got.headers) <= 1000
    assert got.headers == fields[:kept]
    # every byte is somewhere: the kept fields, then the body holds the rest verbatim
    assert b"\n".join(got.headers) + b"\n" + out == data


def test_folded_header_overflow_keeps_the_continuation(tmp_path):
    data = b"Subject: s\nX-Long: a\n" + b"".join(b" c%03d\n" % i for i in range(100)) + b"\nbody\n"
    got, out = run_collect(tmp_path, data, 65536, max_headers=200)
    assert got.header_overflow is True
    assert b"\n".join(got.headers) + b"\n" + out == data


def test_no_overflow_flag_for_a_normal_message(tmp_path):
    got, out = run_collect(tmp_path, b"Subject: x\n\nb\n", max_headers=100)
    assert got.header_overflow is False


# ---- 50 MB through the installed command -------------------------------------------------------

def test_fifty_megabytes_through_a_pipe_in_bounded_memory(sm_root, tmp_path):
    line = b"".join(bytes([33 + (i * 7) % 94]) for i in range(120)) + b" \xc3\xa9\xff\n"
    n = (50 * 1024 * 1024) // len(line) + 1
    sha = hashlib.sha256()
    body_len = 0
    # GNU time reports the peak RSS of sendmail itself: a child forked from this (large)
    # pytest process would carry the parent's resident size into ru_maxrss across exec.
    from conftest import require_program
    gnu_time = require_program("/usr/bin/time")
    rss_file = str(tmp_path / "rss")
    proc = subprocess.Popen([gnu_time, "-f", "%M", "-o", rss_file, sm_root.command(), "-odq",
                             "-oi", "root"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=sm_root.env)
    try:
        proc.stdin.write(b"Subject: big\nTo: root\n\n")
        block = line * 1000
        written = 0
        while written < n:
            k = min(1000, n - written)
            data = block if k == 1000 else line * k
            proc.stdin.write(data)
            sha.update(data)
            body_len += len(data)
            written += k
        proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    assert body_len >= 50 * 1024 * 1024
    with open(rss_file) as f:
        maxrss_mb = int(f.read().split()[-1]) / 1024
    assert maxrss_mb < 40, "sendmail used %.1f MB for a %d MB message" % (maxrss_mb, body_len >> 20)
    q = os.path.join(sm_root.path, "spool", "queue")
    dfs = [n for n in os.listdir(q) if n.startswith("df")]
    assert len(dfs) == 1
    h = hashlib.sha256()
    with open(os.path.join(q, dfs[0]), "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    assert os.path.getsize(os.path.join(q, dfs[0])) == body_len
    assert h.hexdigest() == sha.hexdigest()


# ---- the installed command, fed in chunks -------------------------------------------------------

def _submit_chunked(inst, args, data, chunk):
    rfd, wfd = os.pipe()
    proc = subprocess.Popen([inst.command()] + args, stdin=rfd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=inst.env)
    os.close(rfd)
    stop = threading.Event()
    t = threading.Thread(target=_feeder, args=(wfd, data, chunk, stop), daemon=True)
    t.start()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        t.join(15)
    assert proc.returncode == 0, (out, err)
    q = os.path.join(inst.path, "spool", "queue")
    dfs = sorted(n for n in os.listdir(q) if n.startswith("df"))
    assert len(dfs) == 1
    with open(os.path.join(q, dfs[0]), "rb") as f:
        body = f.read()
    for n in dfs:
        os.unlink(os.path.join(q, n))
        os.unlink(os.path.join(q, "qf" + n[2:]))
    return body


@pytest.mark.parametrize("chunk", (1, 7))
def test_installed_sendmail_dot_handling_in_chunks(sm_root, chunk):
    data = b"Subject: dots\r\n\r\nfirst\r\n.x\r\n.\r\nafter the dot\r\n"
    body = _submit_chunked(sm_root, ["-odq", "root"], data, chunk)
    assert body == b"first\n.x\n"
    body = _submit_chunked(sm_root, ["-odq", "-oi", "root"], data, chunk)
    assert body == b"first\n.x\n.\nafter the dot\n"
    body = _submit_chunked(sm_root, ["-odq", "-i", "root"], b"Subject: x\n\nno final newline", chunk)
    assert body == b"no final newline\n"


def test_installed_header_overflow_keeps_everything(sm_root):
    fields = [b"X-F%02d: " % i + b"v" * 50 for i in range(20)]
    data = b"\n".join(fields) + b"\n\nthe body\n"
    sm_root.run(["-odq", "-O", "MaxHeadersLength=300", "root"], input=data, check=True)
    q = os.path.join(sm_root.path, "spool", "queue")
    (df,) = [n for n in os.listdir(q) if n.startswith("df")]
    with open(os.path.join(q, df), "rb") as f:
        body = f.read()
    with open(os.path.join(q, "qf" + df[2:]), "rb") as f:
        qf = f.read()
    kept = [fl for fl in fields if b"H " + fl + b"\n" in qf]
    assert 0 < len(kept) < 20
    assert kept == fields[:len(kept)]
    assert body == b"\n".join(fields[len(kept):]) + b"\n\nthe body\n"

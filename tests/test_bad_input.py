"""Bad input to the installed `sendmail` and `newaliases`: what a careless or hostile caller
can hand over, and what must come out of it.

  * unknown flags and missing recipients: Sendmail's message and exit status, nothing queued;
  * malformed addresses (unbalanced <>, (), quotes; empty; the null address): Sendmail's
    two lines, exit 67, the good recipients still queued, nothing queued for the bad one;
  * CR/LF injection through -f, -F and a bare CR in a header read by -t: the delivered
    message has no injected header (no line, split at CR or LF, starts with "Bcc:" or the
    injected name) and nobody but the intended recipient gets the message;
  * NUL bytes in headers and body: the message goes through; the body is kept byte for byte;
  * 100 KB lines: in the body kept byte for byte; in a header the message still goes through
    and no byte of the header's text is lost;
  * a broken aliases file: newaliases reports each bad line as Sendmail does and exits 70;
    the good aliases still resolve and deliver;
  * an unwritable spool (the caller is `nobody` when the tests run as root): a temporary
    failure status (71/73/75), one line of explanation, no traceback, no file left behind;
  * a 50 MB message through `sendmail -odi`: peak RSS (RUSAGE_CHILDREN of a wrapper that
    runs only sendmail) below 40 MB, and the body delivered byte for byte.

Every run uses a private instance (PYSENDMAIL_ROOT) set up as in test_cli_formats.py, with
HOME pointing at a private directory (dead.letter goes there).
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import IS_ROOT, require_program
from test_cli_formats import ref_inst  # noqa: F401  (the fixture)

MSG = b"Subject: test one\n\nhello\n"


def queued(inst):
    """Queue ids with a control file in the instance's queue."""
    if not os.path.isdir(inst.queue):
        return []
    return sorted(n[2:] for n in os.listdir(inst.queue) if n.startswith("qf"))


def spool_files(inst):
    out = []
    for top in (inst.queue, os.path.join(inst.path, "spool", "maildrop")):
        if os.path.isdir(top):
            out.extend(os.path.join(top, n) for n in os.listdir(top))
    return sorted(out)


def mbox_messages(inst, user="root"):
    """[(From_ line, header bytes, body bytes)] of DIR/mail/USER, split by hand (bytes kept)."""
    path = os.path.join(inst.path, "mail", user)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b"From "), data[:200]
    out = []
    for chunk in re.split(rb"\n\n(?=From )", data[:-1] if data.endswith(b"\n\n") else data):
        from_line, _, rest = chunk.partition(b"\n")
        head, sep, body = rest.partition(b"\n\n")
        assert sep, "no end of header in %r" % rest[:300]
        out.append((from_line, head + b"\n", body))
    return out


def header_lines(head):
    """Header lines split at CR, LF or CRLF (what a reader that takes a bare CR as a line
    end sees)."""
    return [l for l in re.split(rb"\r\n|\r|\n", head) if l]


def log_text(inst):
    return "\n".join(inst.log_lines())


# ---------------------------------------------------------------------------------------
# flags and recipients

@pytest.mark.parametrize("flag,letter", [("-Z", "Z"), ("-j", "j"), ("-1", "1"), ("-@", "@"),
                                         ("--foo", "-"), ("-tZ", "Z")])
def test_unknown_flag_is_refused_like_sendmail(ref_inst, flag, letter):
    out, rc = ref_inst.run([flag, "root"], MSG)
    assert (out, rc) == ("sendmail: illegal option -- %s\n" % letter, 64)
    assert queued(ref_inst) == [] and ref_inst.dead_letter() is None


def test_irrelevant_sendmail_flags_are_accepted(ref_inst):
    out, rc = ref_inst.run(["-odq", "-oem", "-oi", "-B8BITMIME", "-FCronDaemon", "-m", "-U", "-G",
                            "-s", "-v", "-c", "-L", "tag", "-h", "17", "--", "root"], MSG)
    assert rc == 0, out
    assert len(queued(ref_inst)) == 1


@pytest.mark.parametrize("args", [[], [""], ["-odq"], ["-i", "--"]], ids=["none", "empty", "odq", "dashdash"])
def test_missing_recipients(ref_inst, args):
    out, rc = ref_inst.run(["-odq"] + args, MSG)
    assert rc == 64, out
    assert out == "Recipient names must be specified\n"
    assert queued(ref_inst) == [] and spool_files(ref_inst) == []


@pytest.mark.parametrize("addr,char", [("bad<addr", "<"), ("bad>addr", ">"), ("a(b", "("),
                                       ("a)b", ")"), ('"ab', '"'), ("<<a@b>", "<"),
                                       ("a@b>", ">"), ("(a@b", "(")])
def test_malformed_address_like_sendmail(ref_inst, addr, char):
    out, rc = ref_inst.run(["-odq", addr, "root"], MSG)
    assert rc == 67
    lines = out.splitlines()
    assert lines[:2] == ["%s... Unbalanced '%s'" % (addr, char), "%s... User unknown" % addr], out
    # (where dead.letter goes, $HOME, is checked in test_cli_formats)
    assert len(lines) == 3 and re.match(r"^(\S+)/dead\.letter\.\.\. Saved message in \1/dead\.letter$",
                                        lines[2]), out
    # the good recipient is still queued, the bad one is not
    listing, _ = ref_inst.run([], prog="mailq")
    assert len(queued(ref_inst)) == 1
    assert [l for l in listing.splitlines() if l.startswith("\t\t\t")] == ["\t\t\t\t\t root"], listing


@pytest.mark.parametrize("addr", ["<>", "<", ">", '""', "()", "@", "a@", "@b"])
def test_empty_or_null_recipient_is_refused(ref_inst, addr):
    out, rc = ref_inst.run(["-odq", addr], MSG)
    assert rc in (64, 67), (out, rc)
    assert "Traceback" not in out and out.startswith(addr + "... "), out
    assert queued(ref_inst) == []


# ---------------------------------------------------------------------------------------
# CR/LF injection

def _assert_not_injected(inst, injected_name, out, rc):
    assert rc in (0, 64), (out, rc)
    assert "Traceback" not in out
    if rc == 0:
        msgs = mbox_messages(inst)
        assert len(msgs) == 1, msgs
        from_line, head, body = msgs[0]
        for line in header_lines(head):
            assert not line.lower().startswith(injected_name.lower() + b":"), head
        assert b"\r" not in from_line and b"\n" not in from_line
        assert body == b"hello\n"
    assert queued(inst) == [], "a copy stayed queued (an extra recipient?)"
    assert "to=x@example.net" not in log_text(inst)
    assert not os.path.exists(os.path.join(inst.path, "mail", "x"))


@pytest.mark.parametrize("value", ["a@example.org\r\nBcc: x@example.net",
                                   "a@example.org\nBcc: x@example.net",
                                   "a@example.org\rBcc: x@example.net"],
                         ids=["crlf", "lf", "cr"])
def test_sender_cannot_inject_headers(ref_inst, value):
    out, rc = ref_inst.run(["-odi", "-f", value, "root"], MSG)
    _assert_not_injected(ref_inst, b"Bcc", out, rc)


@pytest.mark.parametrize("value", ["Alice\r\nBcc: x@example.net", "Alice\nX-Injected: yes"],
                         ids=["crlf-bcc", "lf-header"])
def test_full_name_cannot_inject_headers(ref_inst, value):
    out, rc = ref_inst.run(["-odi", "-F", value, "root"], MSG)
    name = b"Bcc" if b"Bcc" in value.encode() else b"X-Injected"
    _assert_not_injected(ref_inst, name, out, rc)


def test_bare_cr_in_subject_injects_no_header_nor_recipient(ref_inst):
    data = b"To: root\nSubject: hi\rBcc: x@example.net\n\nhello\n"
    out, rc = ref_inst.run(["-odi", "-t"], data)
    assert rc == 0, out
    _assert_not_injected(ref_inst, b"Bcc", out, rc)


def test_bare_cr_in_to_header_is_not_a_header_break(ref_inst):
    # "root\rX-Injected: yes" must not become a header line in what is delivered
    data = b"To: root\rX-Injected: yes\nSubject: hi\n\nhello\n"
    out, rc = ref_inst.run(["-odi", "-t", "root"], data)
    assert "Traceback" not in out
    for _, head, _ in mbox_messages(ref_inst):
        for line in header_lines(head):
            assert not line.lower().startswith(b"x-injected:"), head


# ---------------------------------------------------------------------------------------
# NUL bytes and long lines

def test_nul_bytes_in_body_are_kept(ref_inst):
    body = b"a\x00b\n\x00\n\x00\x00\x00 end\x00\n"
    out, rc = ref_inst.run(["-odi", "root"], b"Subject: nul\n\n" + body)
    assert (out, rc) == ("", 0)
    msgs = mbox_messages(ref_inst)
    assert len(msgs) == 1 and msgs[0][2] == body


def test_nul_bytes_in_header_do_not_lose_the_message(ref_inst):
    body = b"body with \x00 too\n"
    out, rc = ref_inst.run(["-odi", "root"], b"Subject: a\x00b\nX-Nul: \x00\x00\n\n" + body)
    assert rc == 0, out
    msgs = mbox_messages(ref_inst)
    assert len(msgs) == 1, out
    assert msgs[0][2] == body
    assert b"Subject: a" in msgs[0][1]


def test_100k_line_in_body_is_kept(ref_inst):
    body = b"start\n" + b"x" * 100000 + b"\nend\n" + b"y" * 100001
    out, rc = ref_inst.run(["-odi", "root"], b"Subject: long\n\n" + body)
    assert (out, rc) == ("", 0)
    msgs = mbox_messages(ref_inst)
    # a last line without LF gets one
    assert len(msgs) == 1 and msgs[0][2] in (body, body + b"\n")


def test_100k_header_line_loses_nothing(ref_inst):
    value = bytes(range(0x41, 0x5b)) * 4000          # 104,000 bytes of A..Z
    data = b"Subject: long header\nX-Long: " + value + b"\nX-After: here\n\nhello\n"
    out, rc = ref_inst.run(["-odi", "root"], data)
    assert rc == 0, out
    msgs = mbox_messages(ref_inst)
    assert len(msgs) == 1, out
    _, head, body = msgs[0]
    whole = head + b"\n" + body
    unfolded = re.sub(rb"\r?\n[ \t]", b"", whole)
    assert value in unfolded, "the long header's text was cut"
    assert b"X-After: here" in whole and whole.endswith(b"hello\n")
    assert b"Subject: long header" in head


# ---------------------------------------------------------------------------------------
# a broken aliases file

BROKEN_ALIASES = (b"# broken on purpose\n"
                  b"good: root\n"
                  b"this line has no colon\n"
                  b"also-good: root, postmaster\n"
                  b"\x01\x02binary junk\n"
                  b"postmaster: root\n")


def test_broken_aliases_file(ref_inst):
    with open(ref_inst.aliases, "wb") as f:
        f.write(BROKEN_ALIASES)
    out, rc = ref_inst.run([], prog="newaliases")
    path = ref_inst.aliases
    # good: 4+4; also-good: 9+16; postmaster: 10+4 -> 3 aliases, longest 16, 47 bytes
    assert (out, rc) == ("%s: line 3: missing colon\n%s: line 5: missing colon\n"
                         "%s: 3 aliases, longest 16 bytes, 47 bytes total\n" % (path, path, path), 70)
    for name in ("good", "also-good"):
        out, rc = ref_inst.run(["-bv", name])
        assert (out, rc) == ("root... deliverable: mailer local, user root\n", 0), name
    out, rc = ref_inst.run(["-odi", "good"], MSG)
    assert (out, rc) == ("", 0)
    msgs = mbox_messages(ref_inst)
    assert len(msgs) == 1 and msgs[0][2] == b"hello\n"


def test_bv_lists_a_target_reached_twice_once(ref_inst):
    # Sendmail's -bv walks the same send list as delivery: duplicates are suppressed
    out, rc = ref_inst.run(["-bv", "postmaster", "root", "team"])
    assert rc == 0
    assert out.splitlines().count("root... deliverable: mailer local, user root") == 1, out


# ---------------------------------------------------------------------------------------
# an unwritable spool

@pytest.fixture
def nobody_instance(sm_bin):
    """(run function, instance dir) for a private instance whose spool the caller cannot
    write: as root the caller is `nobody` (setpriv); otherwise the caller itself."""
    base = tempfile.mkdtemp(prefix="pysendmail-ro-", dir="/tmp")
    os.chmod(base, 0o755)
    root = os.path.join(base, "inst")
    home = os.path.join(base, "home")
    for d in (root, home, os.path.join(root, "spool", "queue"), os.path.join(root, "spool", "maildrop")):
        os.makedirs(d, exist_ok=True)
    prefix = []
    if IS_ROOT:
        setpriv = require_program("setpriv")
        import pwd
        nobody = pwd.getpwnam("nobody")
        for dirpath, dirnames, filenames in os.walk(base):
            os.chown(dirpath, nobody.pw_uid, nobody.pw_gid)
        prefix = [setpriv, "--reuid=%d" % nobody.pw_uid, "--regid=%d" % nobody.pw_gid,
                  "--clear-groups"]
    for d in ("spool/queue", "spool/maildrop", "spool"):
        os.chmod(os.path.join(root, d), 0o500)
    env = dict(os.environ, PYSENDMAIL_ROOT=root, HOME=home, TZ="UTC")

    def run(args, data):
        proc = subprocess.run(prefix + [os.path.join(sm_bin, "sendmail")] + args, input=data,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=60)
        return proc.stdout.decode("utf-8", "replace"), proc.returncode

    yield run, root
    for d in ("spool/queue", "spool/maildrop", "spool"):
        os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("mode", ["-odq", "-odi", "-odb"])
def test_unwritable_spool_is_a_temporary_failure(nobody_instance, mode):
    run, root = nobody_instance
    out, rc = run([mode, "root"], MSG)
    assert rc in (71, 73, 75), (rc, out)
    assert "Traceback" not in out, out
    assert len(out.splitlines()) == 1 and out.strip(), out
    left = []
    for top in ("spool/queue", "spool/maildrop"):
        left += os.listdir(os.path.join(root, top))
    assert left == [], "left behind: %r" % left


# ---------------------------------------------------------------------------------------
# a 50 MB message

_RSS_WRAPPER = """
import resource, subprocess, sys
with open(sys.argv[1], "rb") as f:
    p = subprocess.run(sys.argv[2:], stdin=f, capture_output=True)
sys.stdout.write("%d %d %r\\n" % (p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                                  p.stdout + p.stderr))
"""


def test_50mb_message_with_odi_in_bounded_memory(ref_inst, tmp_path):
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:-_=+*#012\n"
    count = 50 * 1024 * 1024 // len(line) + 1
    digest = hashlib.sha256()
    src = tmp_path / "big.eml"
    with open(src, "wb") as f:
        f.write(b"Subject: big\n\n")
        chunk = line * 1024
        for _ in range(count // 1024):
            f.write(chunk)
            digest.update(chunk)
        rest = line * (count % 1024)
        f.write(rest)
        digest.update(rest)
    argv = ref_inst._wrap([ref_inst.inst.command("sendmail"), "-odi", "root"])
    proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, str(src)] + argv,
                          capture_output=True, text=True, env=ref_inst.env, timeout=600)
    rc, maxrss_kb, output = proc.stdout.split(" ", 2)
    assert int(rc) == 0, output
    assert int(maxrss_kb) < 40 * 1024, "peak RSS %s KB" % maxrss_kb
    os.unlink(src)
    path = os.path.join(ref_inst.path, "mail", "root")
    with open(path, "rb") as f:
        data = f.read()
    head, sep, body = data.partition(b"\n\n")
    assert sep and b"Subject: big" in head
    assert body.endswith(b"\n\n")
    assert hashlib.sha256(body[:-1]).hexdigest() == digest.hexdigest()
    assert queued(ref_inst) == []

"""Sendmail's command line (pysendmail.config.cmdline) and the installed `sendmail` reading it.

Unit part: getopt with Sendmail's option string (attached and separate arguments, `--`,
the first operand ends the options, the optional arguments of -q and -Q), the -o/-O/-M
forms and the -b modes. Installed part: the exact error lines and exit statuses of
sendmail-ref/formats/07_exit_codes.txt, the null sender given as -f '' and -f '<>', and
every flag callers pass (issue list) accepted with exit status 0 and the message queued.
"""
import os
import shutil

import pytest

from pysendmail.config import cmdline
from pysendmail.errors import EX_USAGE, UsageError

MSG = b"Subject: cmdline test\n\nhello\n"


# ---- getopt ---------------------------------------------------------------------------

def test_attached_and_separate_arguments_are_the_same():
    assert cmdline.getopt(["-fa@b", "root"]) == ([("f", "a@b")], ["root"])
    assert cmdline.getopt(["-f", "a@b", "root"]) == ([("f", "a@b")], ["root"])
    assert cmdline.getopt(["-F", "Cron Daemon", "-odq"]) == ([("F", "Cron Daemon"), ("o", "dq")], [])


def test_clustered_flags_and_a_trailing_argument():
    opts, rest = cmdline.getopt(["-tif", "x@y", "u"])
    assert opts == [("t", None), ("i", None), ("f", "x@y")]
    assert rest == ["u"]
    opts, rest = cmdline.getopt(["-itoi"])
    assert opts == [("i", None), ("t", None), ("o", "i")]


def test_double_dash_ends_options():
    assert cmdline.getopt(["-t", "--", "-f", "x"]) == ([("t", None)], ["-f", "x"])
    assert cmdline.getopt(["--"]) == ([], [])


def test_first_operand_ends_options():
    opts, rest = cmdline.getopt(["-odq", "root", "-f", "x@y"])
    assert opts == [("o", "dq")]
    assert rest == ["root", "-f", "x@y"]
    # a lone "-" is an operand
    assert cmdline.getopt(["-", "-t"]) == ([], ["-", "-t"])


def test_an_option_argument_may_look_like_an_option():
    assert cmdline.getopt(["-f", "-t", "root"]) == ([("f", "-t")], ["root"])
    assert cmdline.getopt(["-f", "", "root"]) == ([("f", "")], ["root"])


@pytest.mark.parametrize("argv, value", [
    (["-q"], ""), (["-q30m"], "30m"), (["-qIabc"], "Iabc"), (["-qR"], "R"), (["-qS"], "S"),
    (["-q!Rx"], "!Rx"), (["-qf"], "f"), (["-qp"], "p"),
])
def test_q_takes_an_optional_attached_argument(argv, value):
    opts, rest = cmdline.getopt(argv + ["root"])
    assert opts == [("q", value)]
    assert rest == ["root"]          # never the next word


def test_Q_takes_an_optional_attached_argument():
    assert cmdline.getopt(["-Q", "x"]) == ([("Q", "")], ["x"])
    assert cmdline.getopt(["-Qspam"]) == ([("Q", "spam")], [])


@pytest.mark.parametrize("argv, message", [
    (["-Z"], "sendmail: illegal option -- Z"),
    (["-tZ"], "sendmail: illegal option -- Z"),
    (["-f"], "sendmail: option requires an argument -- f"),
    (["-t", "-F"], "sendmail: option requires an argument -- F"),
    (["-o"], "sendmail: option requires an argument -- o"),
])
def test_getopt_errors(argv, message):
    with pytest.raises(UsageError) as info:
        cmdline.getopt(argv)
    assert info.value.message == message
    assert info.value.status == EX_USAGE


def test_error_names_the_program():
    with pytest.raises(UsageError) as info:
        cmdline.getopt(["-Z"], prog="mailq")
    assert info.value.message == "mailq: illegal option -- Z"


# ---- meanings -------------------------------------------------------------------------

@pytest.mark.parametrize("argv, interval, filters, options", [
    (["-q"], None, [], {}),
    (["-q30m"], "30m", [], {}),
    (["-qIabc"], None, [("I", "abc", False)], {}),
    (["-qR"], None, [("R", "", False)], {}),
    (["-qRbob@x"], None, [("R", "bob@x", False)], {}),
    (["-qS"], None, [("S", "", False)], {}),
    (["-q!Rx"], None, [("R", "x", True)], {}),
    (["-qQ"], None, [("Q", "", False)], {}),
    (["-qf"], None, [], {"QueueForeground": "True"}),
    (["-qp"], "0", [], {}),
    (["-qp5m"], "5m", [], {}),
])
def test_queue_run_arguments(argv, interval, filters, options):
    inv = cmdline.parse(argv)
    assert inv.queue_run
    assert inv.queue_interval == interval
    assert inv.queue_filters == filters
    assert inv.options == options


def test_short_o_options():
    inv = cmdline.parse(["-oi", "-oem", "-odq", "-oXvalue", "-oL9", "-oA/etc/x"])
    assert inv.ignore_dots is True
    assert inv.error_mode == "m"
    assert inv.delivery_mode == "q"
    assert inv.options["LogLevel"] == "9"
    assert inv.options["AliasFile"] == "/etc/x"
    assert inv.options["RefuseLA"] == "value"
    assert cmdline.parse(["-od"]).delivery_mode == "b"
    assert cmdline.parse(["-oe"]).error_mode == "p"
    assert cmdline.parse(["-oep"]).error_mode == "p"


def test_long_O_options():
    inv = cmdline.parse(["-O", "DeliveryMode=queue", "-O", "IgnoreDots=True", "-O",
                         "LogLevel = 14", "-OSaveFromLine", "-O", "ErrorMode=mail"])
    assert inv.delivery_mode == "q"
    assert inv.ignore_dots is True
    assert inv.error_mode == "m"
    assert inv.options["LogLevel"] == "14"
    assert inv.options["SaveFromLine"] == "True"
    assert cmdline.parse(["-O", "IgnoreDots=False"]).ignore_dots is False


def test_macros():
    inv = cmdline.parse(["-Mxvalue", "-M{client_addr}127.0.0.1", "-M", "rsmtp", "-M{bad"])
    assert inv.macros["x"] == "value"
    assert inv.macros["client_addr"] == "127.0.0.1"
    assert inv.macros["r"] == "smtp"
    assert inv.macros["{"] == "bad"            # no closing brace: a one-letter macro "{"


def test_envelope_flags():
    inv = cmdline.parse(["-f", "a@b", "-F", "Cron Daemon", "-B", "8bitmime", "-N", "success,failure",
                         "-R", "hdrs", "-V", "envid-42", "-t", "-i", "-v", "-n", "-h", "7",
                         "-L", "tag", "-A", "m", "-X", "/tmp/log", "-C", "/x.cf", "-p", "ESMTP",
                         "bob", "carol"])
    assert (inv.sender, inv.sender_given) == ("a@b", True)
    assert inv.full_name == "Cron Daemon"
    assert inv.body_type == "8BITMIME"
    assert inv.notify == "SUCCESS,FAILURE"
    assert inv.ret == "HDRS"
    assert inv.envid == "envid-42"
    assert inv.read_recipients and inv.ignore_dots and inv.verbose and inv.no_alias
    assert (inv.hop_count, inv.log_tag, inv.submit_mode) == ("7", "tag", "m")
    assert (inv.traffic_log, inv.cf, inv.protocol) == ("/tmp/log", "/x.cf", "ESMTP")
    assert inv.recipients == ["bob", "carol"]
    assert cmdline.parse(["-r", "x@y"]).sender == "x@y"


def test_null_sender_forms():
    for argv in (["-f", ""], ["-f", "<>"], ["-f<>"]):
        inv = cmdline.parse(argv + ["root"])
        assert inv.sender_given
        assert inv.sender in ("", "<>")
    assert cmdline.parse(["root"]).sender is None


@pytest.mark.parametrize("letter", list("mspivtdDaPhHC"))
def test_valid_b_modes(letter):
    assert cmdline.parse(["-b" + letter]).mode == letter


@pytest.mark.parametrize("arg, letter", [("-bx", "x"), ("-bV", "V"), ("-bz", "z")])
def test_invalid_b_mode(arg, letter):
    with pytest.raises(UsageError) as info:
        cmdline.parse([arg])
    assert info.value.message == "Invalid operation mode %s" % letter


def test_program_name_sets_the_mode():
    assert cmdline.parse([], prog="mailq").mode == "p"
    assert cmdline.parse([], prog="newaliases").mode == "i"
    assert cmdline.parse([], prog="sendmail").mode == "m"
    assert cmdline.parse(["-I"]).mode == "i"


def test_ignored_flags_are_accepted():
    inv = cmdline.parse(["-G", "-U", "-c", "-m", "-s", "-T", "-D", "x", "root"])
    assert inv.recipients == ["root"]


# ---- the installed command ------------------------------------------------------------

def _queued(inst):
    q = os.path.join(inst.path, "spool", "queue")
    return sorted(n for n in os.listdir(q) if n.startswith("qf")) if os.path.isdir(q) else []


def test_installed_illegal_option(sm_root):
    p = sm_root.run(["-Z", "root"], input=MSG)
    assert p.returncode == 64
    assert p.stderr == b"sendmail: illegal option -- Z\n"
    assert p.stdout == b""
    assert _queued(sm_root) == []


def test_installed_missing_argument(sm_root):
    p = sm_root.run(["-f"])
    assert p.returncode == 64
    assert p.stderr == b"sendmail: option requires an argument -- f\n"


def test_installed_invalid_mode(sm_root):
    p = sm_root.run(["-bx"])
    assert p.returncode == 64
    assert (p.stdout + p.stderr) == b"Invalid operation mode x\n"


@pytest.mark.parametrize("sender", ["", "<>"])
def test_installed_null_sender(sm_root, sender):
    sm_root.run(["-odq", "-f", sender, "root"], input=MSG, check=True)
    listing = sm_root.mailq()
    lines = [l for l in listing.splitlines() if l[:1].isalnum() and "Total" not in l]
    assert len(lines) == 1, listing
    assert lines[0].split()[-1] == "<>", listing


def test_installed_double_dash_and_operand(sm_root):
    # "--" ends the options: "-odq" after it would be a recipient, so put only recipients there.
    sm_root.run(["-odq", "--", "root"], input=MSG, check=True)
    assert len(_queued(sm_root)) == 1


FLAGS = [
    ["-t"], ["-i"], ["-oi"], ["-f", "alice@example.com"], ["-r", "alice@example.com"],
    ["-F", "Cron Daemon"], ["-odq"], ["-odd"], ["-oem"], ["-oep"], ["-oeq"], ["-oew"],
    ["-B", "8BITMIME"], ["-N", "never"], ["-R", "hdrs"], ["-V", "envid-1"], ["-v"],
    ["-X", "TRAFFIC"], ["-L", "mytag"], ["-G"], ["-U"], ["-A", "m"], ["-C", "CF"],
    ["-h", "5"], ["-n"], ["-Mxvalue"], ["-M{name}value"], ["-O", "LogLevel=9"],
    ["-o", "L9"], ["-oL9"],
]


@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: " ".join(f))
def test_installed_accepts_flag_and_queues(sm_root, tmp_path, flag):
    flag = [str(tmp_path / "traffic.log") if a == "TRAFFIC" else a for a in flag]
    if "CF" in flag:
        from pysendmail.layout import DEFAULT_CF
        cf = tmp_path / "copy.cf"
        shutil.copyfile(DEFAULT_CF, cf)
        flag = [str(cf) if a == "CF" else a for a in flag]
    msg = b"To: root\n" + MSG
    p = sm_root.run(["-odq"] + flag + ["root"], input=msg)
    assert p.returncode == 0, (flag, p.stdout, p.stderr)
    queued = _queued(sm_root)
    assert len(queued) == 1, (flag, queued, p.stdout, p.stderr)
    assert queued[0][2:] in sm_root.mailq()


@pytest.mark.parametrize("mode", ["-odi", "-odb"])
def test_installed_delivery_modes_deliver(sm_root, mode):
    import time
    p = sm_root.run([mode, "root"], input=MSG)
    assert p.returncode == 0, (p.stdout, p.stderr)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not sm_root.messages("root"):
        time.sleep(0.05)
    msgs = sm_root.messages("root")
    assert len(msgs) == 1
    assert msgs[0]["Subject"] == "cmdline test"
    while time.monotonic() < deadline and _queued(sm_root):
        time.sleep(0.05)
    assert _queued(sm_root) == []


@pytest.mark.parametrize("arg", ["-q", "-qIabc", "-qR", "-qS", "-q!Rx", "-qf", "-qQ"])
def test_installed_queue_run_forms_exit_0(sm_root, arg):
    p = sm_root.run([arg])
    assert p.returncode == 0, (arg, p.stdout, p.stderr)


def test_installed_queue_run_filters(sm_root):
    sm_root.run(["-odq", "-f", "alice@example.com", "root"], input=MSG, check=True)
    (qf,) = _queued(sm_root)
    for arg in ("-qRnobody", "-q!Rroot", "-qSbob", "-qI" + "zz" + qf[2:]):
        sm_root.run([arg], check=True)
        assert _queued(sm_root) == [qf], arg
    assert sm_root.messages("root") == []
    sm_root.run(["-qI" + qf[4:10], "-qSalice", "-qRroot"], check=True)
    assert _queued(sm_root) == []
    assert len(sm_root.messages("root")) == 1

"""`sendmail -Q`: quarantine queued messages by -qI/-qR/-qS, change the reason with -qQ,
release them with a bare -Q; a quarantined message stays out of queue runs until
released. Everything runs through the installed `sendmail` and `mailq` of a private
instance, against its real spool files and log."""
import fcntl
import os
import pwd

ME = pwd.getpwuid(os.getuid()).pw_name


def _queue(sm_root, sender, n=1):
    sm_root.run(["-odq", "-f", sender, ME], input=b"Subject: q%d\n\nbody\n" % n, check=True)


def _qdir(sm_root):
    return os.path.join(sm_root.path, "spool", "queue")


def _files(sm_root, prefix):
    return sorted(n[2:] for n in os.listdir(_qdir(sm_root)) if n.startswith(prefix))


def _qid_of(sm_root, sender):
    import json
    data = json.loads(sm_root.run(["--json"], prog="mailq", check=True).stdout)
    return [m["id"] for m in data["messages"] if m["sender"] == sender][0]


def _log(sm_root):
    with open(os.path.join(sm_root.path, "state", "log", "maillog"), encoding="utf-8") as f:
        return f.read()


def _three(sm_root):
    for i, who in enumerate(("a@example.test", "b@example.test", "c@example.test")):
        _queue(sm_root, who, i)
    return [_qid_of(sm_root, who) for who in ("a@example.test", "b@example.test",
                                               "c@example.test")]


def test_quarantine_hold_change_release_and_deliver(sm_root):
    a, b, c = _three(sm_root)
    qdir = _qdir(sm_root)
    out = sm_root.run(["-Qsuspect spam", "-qI" + a, "-v"], check=True).stdout.decode()
    assert out.splitlines() == ["Processing %s:" % qdir, '%s: Quarantined with "suspect spam"' % a]
    assert _files(sm_root, "hf") == [a]
    assert _files(sm_root, "qf") == sorted([b, c])
    assert a in _files(sm_root, "df")
    listing = sm_root.mailq()
    block = listing.split(a, 1)[1].split("\n")
    assert block[1] == "     QUARANTINE: suspect spam"
    assert listing.count("QUARANTINE:") == 1
    held_only = sm_root.mailq("-qQ")
    assert a in held_only and b not in held_only and c not in held_only
    assert "(1 request)" in held_only
    assert "%s: quarantine=suspect spam" % a in _log(sm_root)

    # a queue run delivers the others, never the quarantined one
    run = sm_root.run(["-q", "-v"], check=True).stdout.decode()
    assert run.splitlines() == ["%s... Sent" % ME] * 2
    assert len(sm_root.messages(ME)) == 2
    assert _files(sm_root, "hf") == [a] and _files(sm_root, "qf") == []
    assert sm_root.run(["-q"], check=True).stdout == b""
    assert len(sm_root.messages(ME)) == 2

    # -qQ: the reason of quarantined messages changes; the same reason is no change
    out = sm_root.run(["-Qreviewed", "-qQ", "-v"], check=True).stdout.decode()
    assert out.splitlines() == ["Processing %s:" % qdir,
                                '%s: Quarantine changed from "suspect spam" to "reviewed"' % a]
    assert "     QUARANTINE: reviewed" in sm_root.mailq()
    out = sm_root.run(["-Qreviewed", "-qQ", "-v"], check=True).stdout.decode()
    assert out.splitlines()[1:] == ['%s: Already quarantined with "reviewed"' % a]
    assert "%s: quarantine=reviewed" % a in _log(sm_root)

    # a bare -Q releases; the next run delivers it
    out = sm_root.run(["-Q", "-qI" + a, "-v"], check=True).stdout.decode()
    assert out.splitlines() == ["Processing %s:" % qdir,
                                '%s: Removed quarantine of "reviewed"' % a]
    assert _files(sm_root, "hf") == [] and _files(sm_root, "qf") == [a]
    assert "QUARANTINE" not in sm_root.mailq()
    assert "%s: unquarantine" % a in _log(sm_root)
    run = sm_root.run(["-q", "-v"], check=True).stdout.decode()
    assert run.splitlines() == ["%s... Sent" % ME]
    assert len(sm_root.messages(ME)) == 3
    assert not os.path.exists(os.path.join(qdir, "qf" + a))


def test_filters_pick_the_messages_and_nothing_is_delivered(sm_root):
    a, b, c = _three(sm_root)
    # -qS and a negated filter; -Q itself delivers nothing and says nothing without -v
    proc = sm_root.run(["-Qbulk", "-q!Sb@example"], check=True)
    assert proc.stdout == b"" and proc.stderr == b""
    assert _files(sm_root, "hf") == sorted([a, c]) and _files(sm_root, "qf") == [b]
    assert sm_root.messages(ME) == []
    # -qR on recipients: all of them are the caller; -qQ with a substring of the reason
    out = sm_root.run(["-Q", "-qQbul", "-qI" + c, "-v"], check=True).stdout.decode()
    assert out.splitlines()[1:] == ['%s: Removed quarantine of "bulk"' % c]
    sm_root.run(["-Qother", "-qR" + ME], check=True)
    assert _files(sm_root, "hf") == sorted([a, b, c])
    assert sm_root.mailq().count("QUARANTINE: other") == 2      # a kept "bulk"
    assert "QUARANTINE: bulk" in sm_root.mailq()


def test_no_matches_and_the_detached_reason(sm_root):
    a, b, c = _three(sm_root)
    qdir = _qdir(sm_root)
    out = sm_root.run(["-Qx", "-qInosuchid", "-v"], check=True).stdout.decode()
    assert out == "%s: no matches\n" % qdir
    # nothing is quarantined yet: a release has no match
    out = sm_root.run(["-Q", "-v"], check=True).stdout.decode()
    assert out == "%s: no matches\n" % qdir
    # Sendmail's `-Q reason` (the reason as its own argument), options after it
    out = sm_root.run(["-Q", "held by hand", "-qI" + b, "-v"], check=True).stdout.decode()
    assert out.splitlines()[1:] == ['%s: Quarantined with "held by hand"' % b]
    assert _files(sm_root, "hf") == [b]
    # the reason is one line: newlines and control characters go
    sm_root.run(["-Qline one\nline\ttwo\x1b", "-qI" + a], check=True)
    assert "     QUARANTINE: line oneline two\n" in sm_root.mailq()
    assert sm_root.run(["-Q\n"], check=64).stdout != b""
    # a recipient is no quarantine argument: refused, nothing changes
    sm_root.run(["-Qx", "-qI" + c, "bob@example.test"], check=64)
    assert c in _files(sm_root, "qf")


def test_a_locked_message_is_skipped(sm_root):
    a, b, c = _three(sm_root)
    qdir = _qdir(sm_root)
    fd = os.open(os.path.join(qdir, "df" + a), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)      # as a delivery in progress holds it
        out = sm_root.run(["-Qlater", "-v"], check=True).stdout.decode()
    finally:
        os.close(fd)
    lines = out.splitlines()
    assert lines[0] == "Processing %s:" % qdir
    assert "Skipping %s: Could not lock %s" % (a, os.path.join(qdir, "qf" + a)) in lines
    assert sorted(lines[1:]) == sorted(["Skipping %s: Could not lock %s"
                                        % (a, os.path.join(qdir, "qf" + a)),
                                        '%s: Quarantined with "later"' % b,
                                        '%s: Quarantined with "later"' % c])
    assert _files(sm_root, "qf") == [a] and _files(sm_root, "hf") == sorted([b, c])


def test_usage_and_queue_errors(sm_root):
    _queue(sm_root, "a@example.test")
    for mode in ("-bs", "-bd", "-bv", "-bp", "-bi"):
        proc = sm_root.run(["-Qx", mode], check=64)
        assert proc.stdout.decode().strip() == "Can not use -Q with -b%s" % mode[2]
    proc = sm_root.run(["-Qx"], prog="mailq", check=64)
    assert b"Can not use -Q with -bp" in proc.stdout
    assert _files(sm_root, "hf") == []


def test_an_unreadable_queue_directory(sm_root):
    os.makedirs(os.path.join(sm_root.path, "spool"))
    with open(_qdir(sm_root), "w") as f:      # not a directory
        f.write("x")
    proc = sm_root.run(["-Qx"], check=72)
    assert proc.stdout.decode().splitlines() == [
        "cannot open queue directory %s: Not a directory" % _qdir(sm_root)]


def test_an_empty_instance_has_no_matches(sm_root):
    proc = sm_root.run(["-Q", "-v"], check=True)
    assert proc.stdout.decode() == "%s: no matches\n" % _qdir(sm_root)

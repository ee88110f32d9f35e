"""`pysendmail install` / `pysendmail uninstall`, run as the installed command.

The system-wide test runs inside a SystemSandbox (private mount namespace with
overlays over /usr/sbin, /usr/lib, /usr/bin, /etc, /var/...), so the test machine's
own MTA (e.g. Postfix's /usr/sbin/sendmail) is displaced and restored only there.
The --root tests do the same on a small fake tree, without namespaces.
"""
import json
import os
import pwd
import shlex
import shutil
import subprocess

import pytest

from conftest import REPO, root_only

LINKS = {
    "/usr/sbin/sendmail": "sendmail",
    "/usr/lib/sendmail": "sendmail",
    "/usr/bin/mailq": "mailq",
    "/usr/bin/newaliases": "newaliases",
}
DIRS = {
    "/var/spool/pysendmail": "0755",
    "/var/spool/pysendmail/queue": "0700",
    "/var/spool/pysendmail/maildrop": "1733",
    "/var/spool/pysendmail/public": "0755",
    "/var/lib/pysendmail": "0755",
    "/run/pysendmail": "0755",
}
MANIFEST = "/var/lib/pysendmail/displaced/manifest.json"


def clean_env():
    env = dict(os.environ)
    env.pop("PYSENDMAIL_ROOT", None)
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def test_installed_package_ships_the_unit():
    from pysendmail.cli import install

    with open(os.path.join(REPO, "etc", "pysendmail.service"), encoding="utf-8") as f:
        shipped = f.read()
    installed = os.path.join(os.path.dirname(install.__file__), "..", "data", "pysendmail.service")
    with open(installed, encoding="utf-8") as f:
        assert f.read() == shipped
    assert "ExecStart=@SENDMAIL@ -bD -q1m" in shipped
    text = install.unit_text("/opt/x/bin/sendmail")
    assert "ExecStart=/opt/x/bin/sendmail -bD -q1m\n" in text and "@SENDMAIL@" not in text
    for directive in ("Type=simple", "Restart=on-failure", "ProtectSystem=full", "PrivateTmp=yes"):
        assert directive + "\n" in text
    # Delivery writes /var/mail and home directories: nothing may forbid that.
    assert "\nProtectHome=" not in text and "ProtectSystem=strict" not in text


def test_unit_file_passes_systemd_analyze(tmp_path, require_program):
    analyze = require_program("systemd-analyze")
    from pysendmail.cli import install

    unit = tmp_path / "pysendmail.service"
    unit.write_text(install.unit_text("/bin/true"))
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, ""), proc


def test_needs_root(sm_bin):
    cmd = [os.path.join(sm_bin, "pysendmail"), "install", "--dry-run"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), cwd="/")
    assert proc.returncode == 77, proc
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "root" in proc.stderr


def test_bad_argument_is_a_usage_error(sm_bin):
    proc = subprocess.run([os.path.join(sm_bin, "pysendmail"), "install", "--bogus"],
                          capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 64, proc


# ---- --root DIR: a fake filesystem tree -----------------------------------------------------

def fake_tree(base):
    for d in ("usr/sbin", "usr/lib", "usr/bin", "etc", "var/spool", "var/lib", "var/mail",
              "run/systemd/system"):
        os.makedirs(os.path.join(base, d))
    with open(os.path.join(base, "usr/sbin/sendmail"), "wb") as f:
        f.write(b"#!/bin/sh\n# the previous MTA\n")
    os.chmod(os.path.join(base, "usr/sbin/sendmail"), 0o2755)
    os.utime(os.path.join(base, "usr/sbin/sendmail"), (1_000_000_000, 1_000_000_000))
    os.symlink("../sbin/sendmail", os.path.join(base, "usr/lib/sendmail"))
    with open(os.path.join(base, "etc/aliases.db"), "wb") as f:
        f.write(b"\0another MTA's alias database")
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy2("/etc/" + name, os.path.join(base, "etc", name))


def tree_state(base):
    """Every path under base with its type, mode, owner, target or content."""
    state = {}
    for top, dirs, files in os.walk(base):
        for name in dirs + files:
            p = os.path.join(top, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, base)
            if os.path.islink(p):
                state[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                state[rel] = ("dir", oct(st.st_mode), st.st_uid, st.st_gid)
            else:
                with open(p, "rb") as f:
                    state[rel] = ("file", oct(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, f.read())
    return state


def pysendmail(sm_bin, *args):
    return subprocess.run([os.path.join(sm_bin, "pysendmail")] + list(args), capture_output=True,
                          text=True, env=clean_env(), timeout=120)


@root_only
def test_install_under_root_dir(sm_bin, tmp_path):
    base = str(tmp_path / "root")
    fake_tree(base)
    before = tree_state(base)

    dry = pysendmail(sm_bin, "install", "--dry-run", "--root", base)
    assert dry.returncode == 0, dry
    assert "would link /usr/sbin/sendmail -> %s/sendmail" % sm_bin in dry.stdout
    assert tree_state(base) == before

    first = pysendmail(sm_bin, "install", "--root", base)
    assert first.returncode == 0, first
    for path, command in LINKS.items():
        assert os.readlink(base + path) == os.path.join(sm_bin, command)
    for path, mode in DIRS.items():
        st = os.lstat(base + path)
        assert ("%04o" % (st.st_mode & 0o7777), st.st_uid, st.st_gid) == (mode, 0, 0), path
    with open(base + MANIFEST, encoding="utf-8") as f:
        entries = json.load(f)["entries"]
    assert entries["/usr/sbin/sendmail"]["type"] == "file"
    assert entries["/usr/lib/sendmail"] == dict(entries["/usr/lib/sendmail"], type="symlink",
                                                target="../sbin/sendmail")
    assert entries["/usr/bin/mailq"]["type"] == "absent"
    with open(os.path.join(base, "var/lib/pysendmail/displaced",
                           entries["/usr/sbin/sendmail"]["stored"]), "rb") as f:
        assert f.read() == b"#!/bin/sh\n# the previous MTA\n"
    with open(base + "/etc/aliases", encoding="utf-8") as f:
        assert "postmaster: root" in f.read()
    with open(base + "/etc/passwd", encoding="utf-8") as f:
        users = {line.split(":")[0]: line.rstrip("\n").split(":") for line in f}
    assert users["pysendmail"][5:] == ["/var/lib/pysendmail", "/usr/sbin/nologin"]
    assert int(users["pysendmail"][2]) < 1000
    with open(base + "/etc/systemd/system/pysendmail.service", encoding="utf-8") as f:
        assert "ExecStart=%s/sendmail -bD -q1m\n" % sm_bin in f.read()
    assert "systemctl enable --now pysendmail" in first.stdout

    installed = tree_state(base)
    second = pysendmail(sm_bin, "install", "--root", base)
    assert second.returncode == 0, second
    assert "nothing to do" in second.stdout and "would" not in second.stdout
    assert tree_state(base) == installed

    undo = pysendmail(sm_bin, "uninstall", "--root", base)
    assert undo.returncode == 0, undo
    after = tree_state(base)
    for rel in ("usr/sbin/sendmail", "usr/lib/sendmail", "usr/bin/mailq", "usr/bin/newaliases",
                "etc/aliases.db"):
        assert after.get(rel) == before.get(rel), rel
    assert "etc/systemd/system/pysendmail.service" not in after
    again = pysendmail(sm_bin, "uninstall", "--root", base)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again


@root_only
def test_reinstall_after_uninstall_and_foreign_file(sm_bin, tmp_path):
    """A file put at a linked path by something else after install is left alone."""
    base = str(tmp_path / "root")
    fake_tree(base)
    assert pysendmail(sm_bin, "install", "--root", base).returncode == 0
    os.unlink(base + "/usr/bin/mailq")
    with open(base + "/usr/bin/mailq", "w") as f:
        f.write("foreign\n")
    undo = pysendmail(sm_bin, "uninstall", "--root", base)
    assert undo.returncode == 0, undo
    assert "leaving /usr/bin/mailq alone" in undo.stdout
    with open(base + "/usr/bin/mailq") as f:
        assert f.read() == "foreign\n"
    with open(base + "/usr/sbin/sendmail", "rb") as f:
        assert f.read() == b"#!/bin/sh\n# the previous MTA\n"


# ---- the real system directories, in a sandbox ----------------------------------------------

WATCHED = list(LINKS) + list(DIRS) + [
    "/etc/aliases", "/etc/aliases.db", "/etc/passwd", "/etc/group", MANIFEST,
    "/var/lib/pysendmail/displaced/usr%sbin%sendmail",
]


@root_only
def test_install_as_system_mta_in_sandbox(sm_bin, system_sandbox):
    sb = system_sandbox
    env = clean_env()
    cmd = shlex.quote(os.path.join(sm_bin, "pysendmail"))
    before = sb.snapshot(WATCHED)
    assert before[DIRS_FIRST] is None, "the sandbox already has a pysendmail spool"

    changes = sb.changes()
    dry = sb.run("%s install --dry-run" % cmd, env=env)
    assert "would link /usr/sbin/sendmail -> %s/sendmail" % sm_bin in dry.stdout
    assert "would create /var/spool/pysendmail/maildrop (mode 1733, root)" in dry.stdout
    assert sb.snapshot(WATCHED) == before
    assert sb.changes() == changes  # the dry run wrote nothing anywhere

    first = sb.run("%s install" % cmd, env=env)
    assert "pysendmail install: done" in first.stdout, first.stdout
    after = sb.snapshot(WATCHED)
    for path, command in LINKS.items():
        assert after[path]["type"] == "symlink" and after[path]["target"] == os.path.join(
            sm_bin, command), path
    for path, mode in DIRS.items():
        assert (after[path]["type"], after[path]["mode"], after[path]["uid"]) == ("directory", mode, 0)
    old = before["/usr/sbin/sendmail"]
    if old and old["type"] == "file":  # e.g. Postfix's sendmail: kept, byte for byte
        kept = after["/var/lib/pysendmail/displaced/usr%sbin%sendmail"]
        assert (kept["sha256"], kept["mode"], kept["uid"]) == (old["sha256"], old["mode"], old["uid"])
    assert after["/etc/aliases"]["type"] == "file"
    if before["/etc/aliases"]:
        assert after["/etc/aliases"]["sha256"] == before["/etc/aliases"]["sha256"]
    passwd = sb.read("/etc/passwd").decode()
    entry = [line.split(":") for line in passwd.splitlines() if line.startswith("pysendmail:")]
    assert len(entry) == 1 and entry[0][5:] == ["/var/lib/pysendmail", "/usr/sbin/nologin"]
    # The installed links work: mailq through /usr/bin/mailq reads the new, empty queue.
    mq = sb.run("/usr/bin/mailq; echo rc=$?", env=env)
    assert "rc=0" in mq.stdout and "/var/spool/pysendmail" in mq.stdout, mq

    changes = sb.changes()
    assert any(line.startswith("./usr_sbin/sendmail l ") for line in changes), changes
    second = sb.run("%s install" % cmd, env=env)
    assert "nothing to do" in second.stdout and "would" not in second.stdout, second.stdout
    assert sb.snapshot(WATCHED) == after
    assert sb.changes() == changes  # the second install wrote nothing anywhere

    undo = sb.run("%s uninstall" % cmd, env=env)
    assert "pysendmail uninstall: done" in undo.stdout, undo.stdout
    restored = sb.snapshot(WATCHED)
    for path in list(LINKS) + ["/etc/aliases.db"]:
        assert restored[path] == before[path], path
    again = sb.run("%s uninstall" % cmd, env=env)
    assert "nothing to do" in again.stdout


DIRS_FIRST = "/var/spool/pysendmail"


def test_other_users_submit_through_the_system_service(sm_bin, system_sandbox):
    """After install, with the system service running (`sendmail -bD`, as the unit runs it),
    a non-root user's `/usr/sbin/sendmail` hands the message to the service's submit socket
    (0666; identity from SO_PEERCRED) instead of the maildrop: it is queued at once, owned
    by that user, and a forged -f is marked with X-Authentication-Warning."""
    sb = system_sandbox
    env = clean_env()
    cmd = shlex.quote(os.path.join(sm_bin, "pysendmail"))
    script = r"""
%(cmd)s install >/dev/null
/usr/sbin/sendmail -bD -q1h &
svc=$!
for i in $(seq 100); do [ -S /var/spool/pysendmail/public/submit ] && break; sleep 0.05; done
stat -c '%%a %%U' /var/spool/pysendmail/public/submit
cd /
printf 'Subject: via service\n\nplain body\n' | setpriv --reuid=nobody --regid=nogroup --clear-groups /usr/sbin/sendmail -odq -i root; echo "rc=$?"
printf 'Subject: forged\n\nforged body\n' | setpriv --reuid=nobody --regid=nogroup --clear-groups /usr/sbin/sendmail -odq -i -f alice@example.com root; echo "rc=$?"
printf 'Subject: x\n\nb\n' | setpriv --reuid=nobody --regid=nogroup --clear-groups /usr/sbin/sendmail -odq nosuchuser; echo "rc=$?"
echo "maildrop=$(ls -A /var/spool/pysendmail/maildrop | wc -l)"
for f in /var/spool/pysendmail/queue/qf*; do echo "== $f"; cat "$f"; done
kill $svc; wait $svc
""" % {"cmd": cmd}
    out = sb.run(script, env=env).stdout
    assert "666 root" in out, out
    assert out.count("rc=0") == 2 and "rc=67" in out, out
    assert "nosuchuser... User unknown" in out, out
    # nobody's home (/nonexistent) takes no dead.letter: the message goes back by mail
    assert "/nonexistent/dead.letter... cannot save message" in out and "nobody... returned to sender" in out, out
    assert "maildrop=0" in out, out
    nobody = pwd.getpwnam("nobody").pw_uid
    controls = [c for c in out.split("== ")[1:] if "\nS <>\n" not in c]   # not the DSN
    assert len(controls) == 2, out
    for text in controls:
        assert "\nu %d nobody\n" % nobody in text, text
    forged = [t for t in controls if "Subject: forged" in t][0]
    assert "X-Authentication-Warning: " in forged and "nobody set sender to alice@example.com using -f" in forged
    plain = [t for t in controls if "Subject: via service" in t][0]
    assert "X-Authentication-Warning" not in plain and "\nS nobody\n" in plain

"""Aliases: parsing, newaliases output and numbers, the database, and recipient expansion.

The reference aliases file (REFERENCE below) is reconstructed from the capture of the
real Sendmail 8.17.1.9 (sendmail-ref/formats/01_newaliases.txt and 06_bv.txt): -bv shows
postmaster -> root, team -> root, carol@example.org, bob@example.net (owner-team exists,
see the qf's C line), archive -> /var/mail/archive and filter -> "|/usr/bin/procmail".
Sendmail counts total = sum(len(name) + len(value)) and longest = max(len(value)); the
team value is exactly 40 bytes, so it is the longest. The remaining entries are chosen to
bring the total to 209 with 8 entries on 9 lines (one comment), so that the appended line
without a colon is line 10 as in the capture; `lp: root` (2 + 4 = 6 bytes) appended after it
gives the capture's 9 aliases and 215 bytes.
"""
import ast
import io
import os
import pwd
import subprocess
import threading
import time

import pytest

from pysendmail import layout as layout_mod
from pysendmail.cli import newaliases
from pysendmail.config import aliases
from pysendmail.delivery import expand as ex
from pysendmail.delivery.router import RouteContext

REFERENCE = """\
# /etc/mail/aliases -- reconstructed from the reference capture
mailer-daemon: postmaster
postmaster: root
team: root, carol@example.org, bob@example.net
owner-team: root
archive: /var/mail/archive
filter: "|/usr/bin/procmail"
staff: :include:/etc/mail/staff.list
gone: error:5.1.6:550 User moved
"""


def write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return str(path)


def run_cli(layout, options=None):
    out, err = io.StringIO(), io.StringIO()
    rc = newaliases.main(["newaliases"], layout, options or {}, stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def make_ctx(tmp_path, text, **options):
    path = write(tmp_path / "aliases", text)
    aliases.rebuild(path)
    opts = {"AliasFile": path}
    opts.update(options)
    return RouteContext(layout_mod.for_root(str(tmp_path)), opts, local_names=["mail.example.com"])


def by_mailer(targets):
    return Sorted((t.mailer, t.user) for t in targets)


class Sorted(list):
    """A sorted list of (mailer, user) that equals any list with the same items."""

    def __init__(self, items):
        super().__init__(sorted(items))

    def __eq__(self, other):
        return list(self) == sorted(other)

    __hash__ = None


# -- parsing --------------------------------------------------------------------------

def test_parse_continuations_comments_quotes_and_specials():
    text = (
        "# comment\n"
        "\n"
        "Team: root,\n"
        "\tcarol@example.org,\n"
        "  bob@example.net\n"
        "filter: \"|/usr/bin/procmail -a x\"\n"
        "lists: :include:/etc/mail/lists\n"
        "gone: error:5.1.1:550 User unknown\n"
        "joined: a,\\\n"
        "b\n"
        "hash: x # not a comment\n"
    )
    p = aliases.parse_text(text, "/etc/aliases")
    assert p.summary.errors == []
    assert p.aliases["team"] == "root,\tcarol@example.org,  bob@example.net"
    assert aliases.split_value(p.aliases["team"]) == ["root", "carol@example.org",
                                                     "bob@example.net"]
    assert p.aliases["filter"] == '"|/usr/bin/procmail -a x"'
    assert p.aliases["lists"] == ":include:/etc/mail/lists"
    assert p.aliases["gone"] == "error:5.1.1:550 User unknown"
    assert p.aliases["joined"] == "a,b"
    assert p.aliases["hash"] == "x # not a comment"
    assert p.summary.count == 6


def test_parse_errors_carry_file_and_line_and_the_rest_is_built():
    text = (
        "a: x\n"
        "no colon here\n"
        " stray continuation\n"
        "b:\n"
        "<bad>: y\n"
        "c: z\n"
        "A: again\n"
    )
    p = aliases.parse_text(text, "/etc/mail/aliases")
    assert p.summary.errors == [
        "/etc/mail/aliases: line 2: missing colon",
        "/etc/mail/aliases: line 3: Non-continuation line starts with space",
        "/etc/mail/aliases: line 4: b... missing value for alias",
        "/etc/mail/aliases: line 5: <bad>: y... illegal alias name",
    ]
    assert p.summary.warnings == ["Warning: duplicate alias name a"]
    # The later definition wins; both count, as in Sendmail.
    assert p.aliases == {"a": "again", "c": "z"}
    assert p.summary.count == 3


def test_split_value_respects_quotes_angles_and_comments():
    v = '"|/bin/prog a,b", Carol <carol@x.org>, (a, comment) bob, "quoted, user"@x.org'
    assert aliases.split_value(v) == ['"|/bin/prog a,b"', "Carol <carol@x.org>",
                                      "(a, comment) bob", '"quoted, user"@x.org']


def test_postmaster_name_is_lowercased_and_names_case_insensitive(tmp_path):
    path = write(tmp_path / "aliases", "PostMaster: carol\nBig: x\n")
    aliases.rebuild(path)
    assert aliases.lookup(path, "POSTMASTER") == ["carol"]
    assert aliases.lookup(path, "big") == ["x"]
    assert aliases.lookup(path, "none") is None


# -- newaliases ---------------------------------------------------------------------

def test_newaliases_reference_numbers_and_missing_colon(tmp_path):
    path = write(tmp_path / "aliases", REFERENCE)
    rc, out, err = run_cli(str(path))
    assert (rc, out, err) == (0, f"{path}: 8 aliases, longest 40 bytes, 209 bytes total\n", "")
    assert os.path.exists(path + ".db")

    with open(path, "a") as f:
        f.write("this line has no colon\nlp: root\n")
    rc, out, err = run_cli(str(path))
    assert rc == 70
    assert err == f"{path}: line 10: missing colon\n"
    assert out == f"{path}: 9 aliases, longest 40 bytes, 215 bytes total\n"
    names = [k for k, _ in aliases.db_items(path + ".db")]
    assert "lp" in names and "team" in names and len(names) == 9


def test_newaliases_path_from_layout_and_from_option(tmp_path):
    lay = layout_mod.for_root(str(tmp_path / "inst"))
    os.makedirs(os.path.dirname(lay.aliases))
    write(lay.aliases, "a: b\n")
    rc, out, _ = run_cli(lay)
    assert rc == 0 and out == f"{lay.aliases}: 1 aliases, longest 1 bytes, 2 bytes total\n"
    other = write(tmp_path / "other", "abc: defg\n")
    rc, out, _ = run_cli(lay, {"AliasFile": other})
    assert rc == 0 and out == f"{other}: 1 aliases, longest 4 bytes, 7 bytes total\n"
    assert os.path.exists(other + ".db")


def test_newaliases_missing_file(tmp_path):
    path = str(tmp_path / "nope")
    rc, out, err = run_cli(path)
    assert rc == 0
    assert out == ""
    assert err == f"newaliases: cannot open {path}: No such file or directory\n"
    assert not os.path.exists(path + ".db")


def test_duplicate_warning_goes_to_stdout(tmp_path):
    path = write(tmp_path / "aliases", "a: x\na: y\n")
    rc, out, err = run_cli(path)
    assert rc == 0 and err == ""
    assert out.splitlines() == ["Warning: duplicate alias name a",
                                f"{path}: 2 aliases, longest 1 bytes, 4 bytes total"]
    assert aliases.lookup(path, "a") == ["y"]


# -- the database -------------------------------------------------------------------

def test_rebuild_replaces_db_by_rename_and_leaves_no_temp(tmp_path):
    path = write(tmp_path / "aliases", "a: one\n")
    aliases.rebuild(path)
    ino1 = os.stat(path + ".db").st_ino
    write(path, "a: two\n")
    s = aliases.rebuild(path)
    assert (s.count, s.longest, s.total) == (1, 3, 4)
    assert os.stat(path + ".db").st_ino != ino1
    assert sorted(os.listdir(tmp_path)) == ["aliases", "aliases.db"]
    assert aliases.db_get(path + ".db", "A") == "two"


def test_reader_never_sees_a_torn_db(tmp_path):
    small = "".join(f"s{i}: v{i}\n" for i in range(5))
    big = "".join(f"b{i}: {'x' * 200}{i}\n" for i in range(3000)) + "s1: big\n"
    path = write(tmp_path / "aliases", small)
    aliases.rebuild(path)
    db = path + ".db"
    stop = time.monotonic() + 3.0
    seen, failures = set(), []

    def reader():
        while time.monotonic() < stop and len(failures) < 5:
            try:
                seen.add(aliases.db_get(db, "s1"))
            except Exception as exc:  # any failure is what this test looks for
                failures.append(repr(exc))

    t = threading.Thread(target=reader)
    t.start()
    rounds = 0
    try:
        while rounds < 40 and time.monotonic() < stop:
            aliases.write_db(db, aliases.parse_text(big if rounds % 2 == 0 else small).aliases)
            rounds += 1
    finally:
        t.join(10)
    assert failures == []
    assert seen <= {"v1", "big"} and "v1" in seen
    assert rounds >= 2


def test_lookup_uses_db_when_fresh_and_text_when_stale(tmp_path):
    path = write(tmp_path / "aliases", "a: fromdb\n")
    aliases.rebuild(path)
    db = path + ".db"
    old = os.stat(db).st_mtime
    warnings = []
    # The db is authoritative while it is at least as new as the text.
    write(path, "a: fromtext\n")
    os.utime(path, (old - 10, old - 10))
    assert aliases.lookup(path, "a", warnings.append) == ["fromdb"]
    assert warnings == []
    # Text newer than the db: parse the text and say the db is out of date.
    os.utime(path, (old + 10, old + 10))
    assert aliases.lookup(path, "a", warnings.append) == ["fromtext"]
    assert warnings == [f"Warning: alias database {db} out of date"]
    # No database at all: the text is used.
    os.unlink(db)
    assert aliases.lookup(path, "A", None) == ["fromtext"]


def test_lookup_with_corrupt_db_falls_back_to_text(tmp_path):
    path = write(tmp_path / "aliases", "a: good\n")
    with open(path + ".db", "wb") as f:
        f.write(b"garbage that is not a database")
    now = time.time()
    os.utime(path, (now - 100, now - 100))
    warnings = []
    assert aliases.lookup(path, "a", warnings.append) == ["good"]
    assert any("unusable" in w for w in warnings)


# -- expansion ----------------------------------------------------------------------

def test_reference_expansions(tmp_path):
    ctx = make_ctx(tmp_path, REFERENCE)
    team = ex.expand("team", ctx)
    assert [(t.address, t.mailer, t.user, t.parent) for t in team] == [
        ("root", "local", "root", "team"),
        ("carol@example.org", "esmtp", "carol@example.org", "team"),
        ("bob@example.net", "esmtp", "bob@example.net", "team"),
    ]
    assert all(t.errors_to == "owner-team" for t in team)
    assert ex.owner_of("team", ctx) == "owner-team"
    assert ex.owner_of("filter", ctx) is None
    (f,) = ex.expand("filter", ctx)
    assert (f.address, f.mailer, f.user, f.owner) == ('"|/usr/bin/procmail"', "prog",
                                                      "/usr/bin/procmail", "")
    (a,) = ex.expand("archive", ctx)
    assert (a.mailer, a.user, a.owner) == ("file", "/var/mail/archive", "")
    (g,) = ex.expand("GONE@mail.example.com", ctx)
    assert (g.mailer, g.status, g.diag) == ("error", "5.1.6", "550 5.1.6 User moved")
    (m,) = ex.expand("mailer-daemon", ctx)
    assert (m.mailer, m.user, m.parent) == ("local", "root", "mailer-daemon>postmaster")
    (r,) = ex.expand("user@example.com", ctx)
    assert (r.mailer, r.user) == ("esmtp", "user@example.com")


def test_unknown_user_and_postmaster_default(tmp_path):
    ctx = make_ctx(tmp_path, "other: root\n")
    (u,) = ex.expand("nosuchuser-pysm", ctx)
    assert (u.address, u.mailer, u.status, u.diag) == (
        "nosuchuser-pysm", "error", "5.1.1", "550 5.1.1 User unknown")
    (p,) = ex.expand("Postmaster@mail.example.com", ctx)
    assert (p.mailer, p.user) == ("local", "root")
    ctx2 = make_ctx(tmp_path, "postmaster: carol@example.org\n")
    (p2,) = ex.expand("postmaster", ctx2)
    assert (p2.mailer, p2.user, p2.parent) == ("esmtp", "carol@example.org", "postmaster")


def test_recursion_depth_limit_and_loops(tmp_path):
    chain = "".join(f"l{i}: l{i + 1}\n" for i in range(15)) + "l15: root\n"
    ctx = make_ctx(tmp_path, chain + "a: b\nb: a\nshort: l6\n")
    (t,) = ex.expand("l0", ctx)
    assert (t.mailer, t.status) == ("error", "5.4.6")
    assert t.diag == "554 5.4.6 aliasing/forwarding loop broken (11 aliases deep; 10 max)"
    # Within the limit the chain resolves (l6 .. l15 is 10 levels).
    (ok,) = ex.expand("l6", ctx)
    assert (ok.mailer, ok.user) == ("local", "root")
    assert ok.parent == ">".join(f"l{i}" for i in range(6, 16))
    (s,) = ex.expand("short", ctx)
    assert s.mailer == "error" and s.status == "5.4.6"
    # A loop between names that are not users is broken, not silently dropped.
    (lp,) = ex.expand("a", ctx)
    assert (lp.mailer, lp.status) == ("error", "5.4.6")
    ctx3 = make_ctx(tmp_path, chain, MaxAliasRecursion="20")
    (deep,) = ex.expand("l0", ctx3)
    assert (deep.mailer, deep.user) == ("local", "root")


def test_self_reference_goes_to_mailbox_and_duplicates_are_dropped(tmp_path):
    ctx = make_ctx(tmp_path, "root: root, carol@example.org\n"
                             "all: team, root, carol@EXAMPLE.org, Carol@example.org\n"
                             "team: root, carol@example.org\n")
    t = ex.expand("root", ctx)
    assert by_mailer(t) == [("esmtp", "carol@example.org"), ("local", "root")]
    # Sendmail's sameaddr(): the domain is compared without case, the local part with.
    assert by_mailer(ex.expand("all", ctx)) == [("esmtp", "Carol@example.org"),
                                               ("esmtp", "carol@example.org"),
                                               ("local", "root")]


def test_plussed_users(tmp_path):
    ctx = make_ctx(tmp_path, "carol+lists: list-archive@example.org\n"
                             "dave+*: dave@example.net\n"
                             "erin: erin@example.net\n")
    assert by_mailer(ex.expand("carol+lists", ctx)) == [("esmtp", "list-archive@example.org")]
    assert by_mailer(ex.expand("dave+foo@mail.example.com", ctx)) == [
        ("esmtp", "dave@example.net")]
    assert by_mailer(ex.expand("erin+foo", ctx)) == [("esmtp", "erin@example.net")]
    (r,) = ex.expand("root+detail", ctx)
    assert (r.mailer, r.user, r.detail, r.address) == ("local", "root", "detail",
                                                       "root+detail")
    (u,) = ex.expand("nosuchuser-pysm+x", ctx)
    assert u.mailer == "error" and u.status == "5.1.1"


def test_backslash_and_direct_programs(tmp_path):
    ctx = make_ctx(tmp_path, "root: carol@example.org\nboth: \\root, root\n")
    (b,) = ex.expand("\\root", ctx)
    assert (b.mailer, b.user) == ("local", "root")
    assert by_mailer(ex.expand("both", ctx)) == [("local", "root"),
                                                ("esmtp", "carol@example.org")]
    for addr, word in (("|/bin/cat", "programs"), ("/tmp/x", "files"),
                       (":include:/etc/passwd", ":include:s")):
        (e,) = ex.expand(addr, ctx)
        assert (e.mailer, e.status, e.diag) == ("error", "5.7.1",
                                                f"550 5.7.1 Cannot mail directly to {word}")


def test_error_values(tmp_path):
    t = ex.error_target
    assert t("x", "error:nouser No such user here").diag == "550 5.1.1 No such user here"
    assert t("x", "error:5.1.1:550 User unknown").status == "5.1.1"
    assert t("x", "error:tempfail try later").diag == "451 4.0.0 try later"
    assert t("x", "error:550 5.7.1 Go away").diag == "550 5.7.1 Go away"
    assert t("x", "error:nouser").diag == "550 5.1.1 User unknown"


def test_include_safety(tmp_path):
    inc_dir = tmp_path / "inc"
    inc_dir.mkdir(mode=0o755)
    good = write(inc_dir / "good", "# members\nroot\ncarol@example.org, \"|/bin/cat\"\n")
    gw = write(inc_dir / "gw", "carol@example.org\n", 0o664)
    os.symlink(good, inc_dir / "link")
    ctx = make_ctx(tmp_path, f"good: :include:{good}\n"
                             f"gw: :include:{gw}\n"
                             f"link: :include:{inc_dir / 'link'}\n"
                             f"missing: :include:{inc_dir / 'nothere'}\n"
                             f"self: :include:{inc_dir / 'self'}\n")
    write(inc_dir / "self", "self, carol@example.org\n")
    t = ex.expand("good", ctx)
    assert by_mailer(t) == [("local", "root"), ("prog", "/bin/cat"),
                            ("esmtp", "carol@example.org")]
    # root-owned include: default identity for its programs
    assert [x.owner for x in t if x.mailer == "prog"] == [""]
    (e,) = ex.expand("gw", ctx)
    assert (e.mailer, e.status) == ("error", "5.2.4")
    assert e.diag == f"550 5.2.4 Cannot open {gw}: Group writable file"
    (e,) = ex.expand("link", ctx)
    assert e.diag.endswith("Symbolic links not allowed")
    (e,) = ex.expand("missing", ctx)
    assert e.diag.endswith("No such file or directory")
    # an include naming its own alias: not a user, so the loop is broken with an error
    s = ex.expand("self", ctx)
    assert ("esmtp", "carol@example.org") in by_mailer(s)
    assert any(x.mailer == "error" and x.status == "5.4.6" for x in s)
    # a group-writable directory makes every file in it unsafe
    os.chmod(inc_dir, 0o775)
    (e,) = ex.expand("good", ctx)
    assert e.diag.endswith("Group writable directory")


def test_forward_path_disabled_or_absent_means_mailbox(tmp_path):
    ctx = make_ctx(tmp_path, "x: y\n", ForwardPath="")
    (r,) = ex.expand("root", ctx)
    assert (r.mailer, r.user) == ("local", "root")


def test_modules_on_cli_path_import_little():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    banned = {"re", "email", "dataclasses", "getopt", "json", "socket", "datetime",
              "logging"}
    for rel in ("pysendmail/config/aliases.py", "pysendmail/cli/newaliases.py"):
        with open(os.path.join(here, rel)) as f:
            tree = ast.parse(f.read())
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                top.add((node.module or "").split(".")[0])
        assert not (top & banned), (rel, top & banned)


# -- .forward and :include: ownership with a real user (root only) -------------------------

USER = "pysm-fwd1"


@pytest.fixture
def fwd_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    subprocess.run(["userdel", USER], capture_output=True, check=False)
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", USER],
                   check=True, capture_output=True, timeout=30)
    try:
        pw = pwd.getpwnam(USER)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        yield pw
    finally:
        subprocess.run(["userdel", USER], capture_output=True, check=False, timeout=30)


def put_forward(pw, text, mode=0o644, uid=None):
    path = os.path.join(pw.pw_dir, ".forward")
    if os.path.lexists(path):
        os.unlink(path)
    write(path, text, mode)
    os.chown(path, pw.pw_uid if uid is None else uid, pw.pw_gid)
    return path


def test_forward_good_and_unsafe(tmp_path, fwd_user):
    pw = fwd_user
    ctx = make_ctx(tmp_path, "list: pysm-fwd1, root\n")
    put_forward(pw, f"# my forward\ncarol@example.org, \\{USER}\n\"|/bin/cat -n\"\n"
                    f"{pw.pw_dir}/mbox\n")
    t = ex.expand(USER, ctx)
    assert by_mailer(t) == [("file", f"{pw.pw_dir}/mbox"), ("local", USER),
                            ("prog", "/bin/cat -n"), ("esmtp", "carol@example.org")]
    assert {x.owner for x in t if x.mailer in ("prog", "file")} == {USER}
    assert [x.parent for x in t if x.mailer == "esmtp"] == [USER]
    # reached through an alias: the chain says so
    t = ex.expand("list", ctx)
    assert ("esmtp", "carol@example.org") in by_mailer(t)
    assert [x.parent for x in t if x.mailer == "esmtp"] == [f"list>{USER}"]

    # A .forward naming the user without a backslash: self reference, mailbox.
    put_forward(pw, f"{USER}, carol@example.org\n")
    assert by_mailer(ex.expand(USER, ctx)) == [("local", USER),
                                              ("esmtp", "carol@example.org")]

    def ignored():
        ctx.messages.clear()
        (only,) = ex.expand(USER, ctx)
        assert (only.mailer, only.user) == ("local", USER)
        return ctx.messages

    path = put_forward(pw, "carol@example.org\n", 0o664)
    assert ignored() == [f"forward {path}: Group writable file"]
    put_forward(pw, "carol@example.org\n", 0o646)
    assert ignored() == [f"forward {path}: World writable file"]
    # owned by another (non-root) user
    put_forward(pw, "carol@example.org\n", uid=pwd.getpwnam("nobody").pw_uid)
    assert "not owned" in ignored()[0]
    # a symlink to a good file elsewhere
    target = put_forward(pw, "carol@example.org\n")
    os.rename(target, tmp_path / "real-forward")
    os.symlink(tmp_path / "real-forward", target)
    assert ignored() == [f"forward {path}: Symbolic links not allowed"]
    os.unlink(target)
    # home directory group-writable
    put_forward(pw, "carol@example.org\n")
    os.chmod(pw.pw_dir, 0o775)
    assert ignored() == [f"forward {path}: Group writable directory"]
    os.chmod(pw.pw_dir, 0o755)
    # owned by root is accepted; empty .forward means the mailbox
    put_forward(pw, "carol@example.org\n", uid=0)
    assert by_mailer(ex.expand(USER, ctx)) == [("esmtp", "carol@example.org")]
    put_forward(pw, "# nothing\n")
    assert by_mailer(ex.expand(USER, ctx)) == [("local", USER)]
    # ForwardPath with $z and $u, and the option turning it off
    put_forward(pw, "carol@example.org\n")
    ctx.options["ForwardPath"] = "$z/.forward.$u:$z/.forward"
    write(os.path.join(pw.pw_dir, f".forward.{USER}"), "bob@example.net\n")
    os.chown(os.path.join(pw.pw_dir, f".forward.{USER}"), pw.pw_uid, pw.pw_gid)
    assert by_mailer(ex.expand(USER, ctx)) == [("esmtp", "bob@example.net")]
    ctx.options["ForwardPath"] = ""
    assert by_mailer(ex.expand(USER, ctx)) == [("local", USER)]


def test_include_owner_rules(tmp_path, fwd_user):
    pw = fwd_user
    inc_dir = tmp_path / "inc"
    inc_dir.mkdir(mode=0o755)
    users = write(inc_dir / "users", '"|/bin/cat", /tmp/pysm-out\n')
    os.chown(users, pw.pw_uid, pw.pw_gid)
    ctx = make_ctx(tmp_path, f"viauser: :include:{users}\n")
    # An include owned by a user: its programs and files run as that user.
    t = ex.expand("viauser", ctx)
    assert sorted((x.mailer, x.owner) for x in t) == [("file", USER), ("prog", USER)]
    # From a .forward, an include must be owned by the user or root.
    nob = write(inc_dir / "nobody", "carol@example.org\n")
    os.chown(nob, pwd.getpwnam("nobody").pw_uid, 0)
    put_forward(pw, f":include:{nob}\n")
    (e,) = ex.expand(USER, ctx)
    assert (e.mailer, e.status) == ("error", "5.2.4")
    assert "not owned" in e.diag
    put_forward(pw, f":include:{users}\n")
    assert sorted((x.mailer, x.owner) for x in ex.expand(USER, ctx)) == [
        ("file", USER), ("prog", USER)]
    # A user without a shell from /etc/shells cannot mail to programs or files.
    subprocess.run(["usermod", "-s", "/usr/sbin/nologin", USER], check=True,
                   capture_output=True, timeout=30)
    put_forward(pw, '"|/bin/cat", carol@example.org\n')
    t = ex.expand(USER, ctx)
    assert by_mailer(t) == [("error", '"|/bin/cat"'), ("esmtp", "carol@example.org")]
    (e,) = [x for x in t if x.mailer == "error"]
    assert (e.status, e.diag) == (
        "5.7.1", f"550 5.7.1 User {USER} doesn't have a valid shell for mailing to programs")


def test_newaliases_locked_and_cannot_create(tmp_path):
    import fcntl
    path = write(tmp_path / "aliases", "a: b\n")
    with open(path, "rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        rc, out, err = run_cli(path)
        assert (rc, out, err) == (0, f"Alias file {path} is locked (maybe being rebuilt)\n", "")
        assert not os.path.exists(path + ".db")
        with pytest.raises(aliases.Locked):
            aliases.rebuild(path, wait=False)
    # The database path is a directory: the rename fails, no temp file is left behind.
    os.mkdir(path + ".db")
    rc, out, err = run_cli(path)
    assert rc == 73 and out == ""
    assert err.startswith(f"Cannot create database for alias file {path}: ")
    assert sorted(os.listdir(tmp_path)) == ["aliases", "aliases.db"]
    assert os.listdir(path + ".db") == []


def test_several_alias_files(tmp_path):
    main = write(tmp_path / "aliases", "a: first\nshared: main\n")
    local = write(tmp_path / "local", "b: second\nshared: local\n")
    opts = {"AliasFile": f"hash:{main}, nis:mail.aliases, {local}"}
    assert aliases.aliases_paths(None, opts) == [main, local]
    rc, out, err = run_cli(None, opts)
    assert rc == 0 and err == ""
    assert out.splitlines() == [f"{main}: 2 aliases, longest 5 bytes, 16 bytes total",
                                f"{local}: 2 aliases, longest 6 bytes, 18 bytes total"]
    assert aliases.lookup(None, "b", None, opts) == ["second"]
    assert aliases.lookup(None, "shared", None, opts) == ["main"]
    ctx = RouteContext(layout_mod.for_root(str(tmp_path)), opts)
    (t,) = ex.expand("b", ctx)
    assert (t.mailer, t.address) == ("error", "second")

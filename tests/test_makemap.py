"""makemap(8) and the hash/btree maps that read what it builds.

The installed `makemap` is run on a virtusertable-like source: Sendmail's input rules
(keys with @, the @domain catch-all, error: values, comments, blank lines, repeated
keys, folding and -f, -t, -D, -e, -r, -d, -o), its messages and sysexits statuses
(usage, unknown and unsupported types, an unwritable directory, links refused without
-s, an unreadable configuration file), the -u dump and the -l/-L/-x listings. Then
config.maps.make_map("virtuser", "hash", ...) must find the keys in the built .db (by
binary search, not through the text: the text is removed or made to disagree), see a
rebuild, and fall back to the text source, with one warning, for a .db that is not
ours (a Berkeley DB file from Sendmail). Last, the sorted_index API itself and the
alias database, which shares the format, still read the same.
"""
import os
import time
import stat
import subprocess

import pytest

from pysendmail.config import aliases, maps, sorted_index

SOURCE = b"""\
# virtusertable: address  target
info@Example.COM\tjoe
sales@example.com   sales-team@example.net

@example.com\terror:nouser 550 5.1.1 No such user here
@other.org\t%1@example.net
Info@example.com\tsomeone-else
postmaster@example.com\troot
"""


def makemap(sm_bin, args, input=b"", cwd=None, env=None):
    return subprocess.run([os.path.join(sm_bin, "makemap")] + list(args), input=input,
                          capture_output=True, timeout=60, cwd=cwd, env=env)


def dump(sm_bin, args, path):
    p = makemap(sm_bin, ["-u"] + list(args) + ["hash", path])
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "virtusertable"
    path.write_bytes(SOURCE)
    return str(path)


# -- building ----------------------------------------------------------------------

def test_builds_virtusertable_and_reports_duplicate(sm_bin, src):
    p = makemap(sm_bin, ["hash", src], SOURCE)
    # the repeated key (folded: Info@ = info@) is refused, the first value kept; the
    # rest is built and the status says the input had a bad line
    assert p.returncode == 65
    assert p.stderr == b"makemap: %s: line 7: key info@example.com: duplicate key\n" % src.encode()
    assert p.stdout == b""
    db = src + ".db"
    assert sorted_index.is_index(db)
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o640 & ~_umask()
    assert dump(sm_bin, [], src) == (
        b"@example.com\terror:nouser 550 5.1.1 No such user here\n"
        b"@other.org\t%1@example.net\n"
        b"info@example.com\tjoe\n"
        b"postmaster@example.com\troot\n"
        b"sales@example.com\tsales-team@example.net\n")


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_clean_input_exits_zero_and_mapname_with_db_suffix(sm_bin, tmp_path):
    db = str(tmp_path / "access.db")
    p = makemap(sm_bin, ["btree", db], b"127.0.0.1\tRELAY\nspam.example\tREJECT\n")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")
    assert os.path.exists(db) and not os.path.exists(db + ".db")
    assert dump(sm_bin, [], db) == b"127.0.0.1\tRELAY\nspam.example\tREJECT\n"


def test_replace_fold_and_verbose(sm_bin, src):
    p = makemap(sm_bin, ["-r", "-v", "hash", src], SOURCE)
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""
    assert b"key=`info@example.com', val=`joe'\n" in p.stdout
    assert b"key=`info@example.com', val=`someone-else'\n" in p.stdout
    assert p.stdout.count(b"key=`") == 6
    out = dump(sm_bin, [], src)
    assert b"info@example.com\tsomeone-else\n" in out and b"\tjoe\n" not in out
    # -f keeps the keys' case: the two spellings are two keys
    p = makemap(sm_bin, ["-f", "hash", src], SOURCE)
    assert p.returncode == 0, p.stderr
    out = dump(sm_bin, [], src)
    assert b"info@Example.COM\tjoe\n" in out and b"Info@example.com\tsomeone-else\n" in out


def test_bad_lines_are_reported_and_skipped(sm_bin, tmp_path):
    path = str(tmp_path / "m")
    data = b"".join([b"good value\n", b"  leading space\n", b"norhs\n", b"tabrhs \t \n",
                     b"x" * 1100 + b" long\n", b"after ok\n"])
    p = makemap(sm_bin, ["hash", path], data)
    assert p.returncode == 65
    assert p.stderr.decode().splitlines() == [
        "makemap: %s: line 2: syntax error (leading space)" % path,
        "makemap: %s: line 3: no RHS for LHS norhs" % path,
        "makemap: %s: line 4: no RHS for LHS tabrhs" % path,
        "makemap: %s: line 5: line too long (1024 bytes max)" % path,
    ]
    assert dump(sm_bin, [], path) == b"after\tok\ngood\tvalue\n"
    # -e allows the empty values
    p = makemap(sm_bin, ["-e", "hash", path], b"norhs\nk v\n")
    assert p.returncode == 0, p.stderr
    assert dump(sm_bin, [], path) == b"k\tv\nnorhs\t\n"


def test_delimiter_comment_char_and_value_kept_as_is(sm_bin, tmp_path):
    path = str(tmp_path / "m")
    p = makemap(sm_bin, ["-t", ":", "-D", ";", "hash", path],
                b"; a comment\n# not a comment:here\nKey With Space::value with  spaces \n")
    assert p.returncode == 0, p.stderr
    assert dump(sm_bin, ["-t", ":"], path) == (
        b"# not a comment:here\nkey with space:value with  spaces \n")
    # the dump's separator is the tab without -t
    assert dump(sm_bin, [], path) == b"# not a comment\there\nkey with space\tvalue with  spaces \n"


def test_u_round_trip(sm_bin, src, tmp_path):
    assert makemap(sm_bin, ["-r", "hash", src], SOURCE).returncode == 0
    first = dump(sm_bin, [], src)
    again = str(tmp_path / "again")
    p = makemap(sm_bin, ["hash", again], first)
    assert p.returncode == 0, p.stderr
    assert dump(sm_bin, [], again) == first
    with open(src + ".db", "rb") as a, open(again + ".db", "rb") as b:
        assert a.read() == b.read()


def test_append_and_duplicates(sm_bin, tmp_path):
    path = str(tmp_path / "m")
    # -o needs an existing map, as Sendmail's (no O_CREAT)
    p = makemap(sm_bin, ["-o", "hash", path], b"a 1\n")
    assert p.returncode == 73
    assert p.stderr == b"makemap: error opening type hash map %s: No such file or directory\n" \
        % path.encode()
    assert makemap(sm_bin, ["hash", path], b"a 1\nb 2\n").returncode == 0
    p = makemap(sm_bin, ["-o", "hash", path], b"c 3\na 9\n")
    assert p.returncode == 65
    assert p.stderr == b"makemap: %s: line 2: key a: duplicate key\n" % path.encode()
    assert dump(sm_bin, [], path) == b"a\t1\nb\t2\nc\t3\n"
    # without -o the map starts empty
    assert makemap(sm_bin, ["hash", path], b"z 26\n").returncode == 0
    assert dump(sm_bin, [], path) == b"z\t26\n"
    # -d keeps both; a lookup finds the first
    assert makemap(sm_bin, ["-d", "btree", path], b"k first\nk second\nj x\n").returncode == 0
    assert dump(sm_bin, [], path) == b"j\tx\nk\tfirst\nk\tsecond\n"
    m = maps.make_map("d", "btree", [path])
    assert m.lookup("k", []) == "first"


# -- bad usage and failures -------------------------------------------------------------

USAGE = (b"Usage: makemap [-C cffile] [-N] [-c cachesize] [-D commentchar]\n"
         b"               [-d] [-e] [-f] [-l] [-o] [-r] [-s] [-t delimiter]\n"
         b"               [-u] [-v] type mapname\n")


@pytest.mark.parametrize("args", [[], ["hash"], ["hash", "a", "b"], ["-t"]])
def test_usage(sm_bin, tmp_path, args):
    p = makemap(sm_bin, args, cwd=str(tmp_path))
    assert p.returncode == 64
    assert p.stderr.endswith(USAGE)
    assert os.listdir(str(tmp_path)) == []


def test_unknown_option(sm_bin, tmp_path):
    p = makemap(sm_bin, ["-z", "hash", str(tmp_path / "m")])
    assert p.returncode == 64
    assert p.stderr == b"%s: invalid option -- 'z'\n" % os.path.join(sm_bin, "makemap").encode() \
        + USAGE


def test_options_after_operands_as_glibc(sm_bin, tmp_path):
    path = str(tmp_path / "m")
    p = makemap(sm_bin, ["hash", path, "-f"], b"Key v\n")
    assert p.returncode == 0, p.stderr
    assert dump(sm_bin, [], path) == b"Key\tv\n"


def test_types(sm_bin, tmp_path):
    assert makemap(sm_bin, ["-l"]).stdout == b"hash\nbtree\n"
    assert makemap(sm_bin, ["-L"]).stdout == b"hash\nbtree\ncf\nCF\n"
    assert makemap(sm_bin, ["-x"]).stdout == b"hash:db\nbtree:db\n"
    path = str(tmp_path / "m")
    p = makemap(sm_bin, ["nosuch", path], b"a b\n")
    assert p.returncode == 73
    assert p.stderr == b"makemap: error opening type nosuch map %s: Unknown database type\n" \
        % path.encode()
    p = makemap(sm_bin, ["dbm", path], b"a b\n")
    assert p.returncode == 73
    assert p.stderr == b"makemap: Need to recompile with -DNDBM for dbm support\n"
    assert not os.path.exists(path + ".db")


def test_type_from_cf(sm_bin, tmp_path):
    cf = tmp_path / "sendmail.cf"
    path = str(tmp_path / "virtusertable")
    cf.write_text("V10/Berkeley\nKvirtuser btree -o %s\nKaccess hash -T<TMPF> /etc/mail/access\n"
                  % path)
    p = makemap(sm_bin, ["-C", str(cf), "cf", path], b"a b\n")
    assert p.returncode == 0, p.stderr
    assert sorted_index.is_index(path + ".db")
    other = str(tmp_path / "access")          # CF compares base names
    assert makemap(sm_bin, ["-C", str(cf), "CF", other], b"a b\n").returncode == 0
    p = makemap(sm_bin, ["-C", str(cf), "cf", other], b"a b\n")
    assert p.returncode == 65
    assert p.stderr == b"makemap: mapfile %s: not found in %s\n" % (other.encode(),
                                                                    str(cf).encode())
    assert makemap(sm_bin, ["-C", str(cf), "-i", "hash", "cf", other], b"a b\n").returncode == 0
    p = makemap(sm_bin, ["-C", str(tmp_path / "nope.cf"), "cf", path], b"a b\n")
    assert p.returncode == 66
    assert p.stderr == b"makemap: %s: No such file or directory\n" % str(tmp_path / "nope.cf").encode()


def test_unwritable_directory(sm_bin, tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        path = str(d / "m")
        env = None
        args = ["hash", path]
        if os.geteuid() == 0:
            # root writes anywhere: use a directory that cannot hold files instead
            path = "/proc/1/m"
            args = ["hash", path]
        p = makemap(sm_bin, args, b"a b\n", env=env)
        assert p.returncode == 73
        assert p.stderr.startswith(b"makemap: error opening type hash map %s: " % path.encode())
        assert not os.path.exists(path + ".db")
    finally:
        d.chmod(0o755)


def test_links_refused_without_s(sm_bin, tmp_path):
    real = str(tmp_path / "real")
    assert makemap(sm_bin, ["hash", real], b"a 1\n").returncode == 0
    link = str(tmp_path / "link")
    os.symlink(real + ".db", link + ".db")
    p = makemap(sm_bin, ["hash", link], b"a 2\n")
    assert p.returncode == 73
    assert p.stderr == b"makemap: error opening type hash map %s: Symbolic links not allowed\n" \
        % link.encode()
    assert makemap(sm_bin, ["-s", "hash", link], b"a 2\n").returncode == 0
    assert os.path.islink(link + ".db")
    assert dump(sm_bin, [], real) == b"a\t2\n"
    hard = str(tmp_path / "hard")
    os.link(real + ".db", hard + ".db")
    p = makemap(sm_bin, ["hash", hard], b"a 3\n")
    assert p.returncode == 73 and b"Hard links not allowed" in p.stderr


def test_u_on_missing_or_foreign_map(sm_bin, tmp_path):
    path = str(tmp_path / "none")
    p = makemap(sm_bin, ["-u", "hash", path])
    assert p.returncode == 73
    assert p.stderr == b"makemap: error opening type hash map %s: No such file or directory\n" \
        % path.encode()
    with open(path + ".db", "wb") as f:
        f.write(b"\x00\x06\x15\x61" + b"\0" * 60)      # a Berkeley DB hash file's magic
    p = makemap(sm_bin, ["-u", "hash", path])
    assert p.returncode == 73 and b"not a pysendmail map database" in p.stderr


def test_existing_mode_is_kept(sm_bin, tmp_path):
    path = str(tmp_path / "m")
    assert makemap(sm_bin, ["hash", path], b"a 1\n").returncode == 0
    os.chmod(path + ".db", 0o604)
    assert makemap(sm_bin, ["hash", path], b"a 2\n").returncode == 0
    assert stat.S_IMODE(os.stat(path + ".db").st_mode) == 0o604
    assert [n for n in os.listdir(str(tmp_path)) if ".tmp" in n] == []


# -- the maps read what makemap built --------------------------------------------------

def test_hash_map_reads_the_built_db(sm_bin, src):
    assert makemap(sm_bin, ["hash", src], SOURCE).returncode == 65
    # the text source now disagrees with the db: lookups must come from the db
    with open(src, "w") as f:
        f.write("info@example.com\tfrom-text\n")
    m = maps.make_map("virtuser", "hash", ["-o", src])
    assert m.lookup("info@example.com", []) == "joe"
    assert m.lookup("INFO@EXAMPLE.COM", []) == "joe"                  # the K line folds
    assert m.lookup("@example.com", []) == "error:nouser 550 5.1.1 No such user here"
    assert m.lookup("@other.org", ["bob"]) == "bob@example.net"      # %1
    assert m.lookup("nobody@example.com", []) is None
    assert m.open_error is None
    # and without any text source at all
    os.unlink(src)
    m = maps.make_map("virtuser", "btree", [src + ".db"])
    assert m.lookup("sales@example.com", []) == "sales-team@example.net"
    assert m.open_error is None


def test_f_on_both_sides(sm_bin, src):
    assert makemap(sm_bin, ["-f", "hash", src], SOURCE).returncode == 0
    m = maps.make_map("virtuser", "hash", ["-f", src])
    assert m.lookup("info@Example.COM", []) == "joe"
    assert m.lookup("info@example.com", []) is None
    # a K line without -f folds the key it looks up: a mixed-case key built with -f
    # is then out of its reach, as with Sendmail
    m = maps.make_map("virtuser", "hash", [src])
    assert m.lookup("Info@example.com", []) is None
    assert m.lookup("postmaster@example.com", []) == "root"


def test_rebuild_is_seen_by_an_open_map(sm_bin, src):
    assert makemap(sm_bin, ["hash", src], b"info@example.com joe\n").returncode == 0
    m = maps.make_map("virtuser", "hash", ["-o", src])
    assert m.lookup("info@example.com", []) == "joe"
    reader = m._index
    assert makemap(sm_bin, ["hash", src], b"info@example.com jane\nnew@example.com x\n"
                   ).returncode == 0
    assert m.lookup("info@example.com", []) == "joe"     # files are looked at once a second
    time.sleep(maps.RECHECK + 0.05)
    assert m.lookup("info@example.com", []) == "jane"
    assert m.lookup("new@example.com", []) == "x"
    assert reader.fd is None                 # the old file was closed, not leaked
    # removing the db: the text source again
    os.unlink(src + ".db")
    with open(src, "w") as f:
        f.write("info@example.com\tfrom-text\n")
    time.sleep(maps.RECHECK + 0.05)
    assert m.lookup("info@example.com", []) == "from-text"


def test_foreign_db_falls_back_to_text(tmp_path):
    src = str(tmp_path / "virtusertable")
    with open(src, "w") as f:
        f.write("info@example.com\tjoe\n")
    with open(src + ".db", "wb") as f:
        f.write(b"\x00\x06\x15\x61" + os.urandom(4092))      # Sendmail's Berkeley DB hash
    m = maps.make_map("virtuser", "hash", ["-o", src])
    assert m.lookup("info@example.com", []) == "joe"
    assert m.lookup("INFO@example.com", []) == "joe"
    assert "not a pysendmail map database" in m.open_error and src + ".db" in m.open_error
    first = m.open_error
    assert m.lookup("other", []) is None and m.open_error == first
    # the text.txt convention too
    os.rename(src, src + ".txt")
    m = maps.make_map("virtuser", "hash", [src])
    assert m.lookup("info@example.com", []) == "joe"
    # foreign db and no text at all: not found, and the one warning
    os.unlink(src + ".txt")
    m = maps.make_map("virtuser", "hash", [src])
    assert m.lookup("info@example.com", []) is None
    assert "not a pysendmail map database" in m.open_error


def test_text_only_setup_unchanged(tmp_path):
    src = tmp_path / "mailertable"
    src.write_text("# comment\nExample.COM\tsmtp:[mx.example.net]\n")
    m = maps.make_map("mailertable", "hash", [str(src)])
    assert m.lookup("example.com", []) == "smtp:[mx.example.net]"
    assert m.open_error is None


# -- the format ------------------------------------------------------------------------

def test_sorted_index_api(tmp_path):
    path = str(tmp_path / "x.db")
    pairs = [(b"k%05d" % i, b"v%d" % i) for i in range(5000, 0, -1)] + [(b"", b"empty")]
    sorted_index.write(path, pairs, 0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted_index.is_index(path)
    with sorted_index.Reader(path) as r:
        assert r.count == 5001
        assert r.get(b"k00001") == b"v1" and r.get(b"k05000") == b"v5000"
        assert r.get(b"") == b"empty" and r.get(b"k0") is None and r.get(b"zz") is None
        assert not r.changed()
        assert [k for k, _ in r.items()][:3] == [b"", b"k00001", b"k00002"]
    assert sorted_index.get(path, b"k02500") == b"v2500"
    # a writer that is aborted leaves nothing and the old file untouched
    w = sorted_index.Writer(path, 0o600)
    w.abort()
    assert os.listdir(str(tmp_path)) == ["x.db"]
    # a cut-short file is refused, not misread
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="truncated"):
        sorted_index.get(path, b"k00001")
    with open(path, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(ValueError, match="not a sorted-index database"):
        sorted_index.Reader(path)
    assert not sorted_index.is_index(path)


def test_alias_database_format_unchanged(tmp_path):
    """aliases' db is the same bytes as before the move: header, big-endian index, data."""
    import struct
    db = str(tmp_path / "aliases.db")
    aliases.write_db(db, {"b": "two", "a": "one"})
    with open(db, "rb") as f:
        data = f.read()
    head = len(b"PYSMADB1\n") + 4 + 32
    assert data == (b"PYSMADB1\n" + struct.pack(">I", 2)
                    + struct.pack(">IIII", head, 1, head + 1, 3)
                    + struct.pack(">IIII", head + 4, 1, head + 5, 3) + b"aone" + b"btwo")
    assert aliases.db_get(db, "A") == "one" and aliases.db_items(db) == [("a", "one"), ("b", "two")]
    with open(db, "wb") as f:
        f.write(b"junk")
    with pytest.raises(ValueError, match="not an alias database"):
        aliases.db_get(db, "a")


def test_man_page_renders_cleanly(require_program):
    groff = require_program("groff")
    page = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "man", "makemap.8")
    for width in ("65n", "100n"):
        p = subprocess.run([groff, "-man", "-ww", "-z", "-rLL=" + width, page],
                           capture_output=True, timeout=60)
        assert (p.returncode, p.stderr) == (0, b"")
    with open(page, encoding="utf-8") as f:
        source = f.read()
    for flag in "CNcDdefiLlorstuvx":
        assert "\n.TP\n.B \\-%s" % flag in source or "\n.TP\n.BI \\-%s " % flag in source, flag

"""`pysendmail install` and `pysendmail uninstall`: make pysendmail the system MTA, and undo it.

install links /usr/sbin/sendmail, /usr/lib/sendmail, /usr/bin/mailq and
/usr/bin/newaliases to the installed commands; whatever was at those paths (a
file or a symlink, e.g. Postfix's sendmail) is moved aside into
/var/lib/pysendmail/displaced/ and recorded in its manifest.json (original path,
type, target, mode, owner), so that uninstall puts it back exactly. It also
creates the system spool (queue/ 0700, the sticky maildrop/ 1733 that non-root
submitters write into, public/ for the pickup trigger), the state, log and run
directories, the unprivileged `pysendmail` system user the daemon drops to, an
/etc/aliases with `postmaster: root` if there is none, then rebuilds the alias
database (keeping a copy of the previous MTA's /etc/aliases.db for uninstall to put
back), and the systemd unit when systemd runs (it never starts it).

Everything is computed first as a plan of steps that each know whether they are
needed, so a second run does nothing and says so, and --dry-run prints the plan.
--root DIR applies everything under DIR instead of / (for tests and images).

Security stance: root only (exit 77 otherwise). It touches only the paths listed
above. It never follows a symlink it replaces (lstat, rename over it), keeps
displaced files by hard link or, across filesystems, by copy (preserving mode,
owner and times), replaces every path atomically so that it is never missing, and
uninstall restores a path only while it is still the link install
made; anything else found there is left alone and reported.
"""
import os
import sys

EX_OK, EX_USAGE, EX_SOFTWARE, EX_NOPERM = 0, 64, 70, 77

# The system paths install links, and the installed command each points to.
LINKS = (
    ("/usr/sbin/sendmail", "sendmail"),
    ("/usr/lib/sendmail", "sendmail"),
    ("/usr/bin/mailq", "mailq"),
    ("/usr/bin/newaliases", "newaliases"),
)
SPOOL = "/var/spool/pysendmail"
STATE = "/var/lib/pysendmail"
DISPLACED = STATE + "/displaced"
MANIFEST = DISPLACED + "/manifest.json"
RUN = "/run/pysendmail"
ALIASES = "/etc/aliases"
UNIT = "/etc/systemd/system/pysendmail.service"
SYSTEMD_RUNNING = "/run/systemd/system"
USER = "pysendmail"
# (path, mode) of every directory install owns; all owned by root.
DIRECTORIES = (
    (SPOOL, 0o755),
    (SPOOL + "/queue", 0o700),
    (SPOOL + "/maildrop", 0o1733),
    (SPOOL + "/public", 0o755),
    (STATE, 0o755),
    (STATE + "/log", 0o755),
    (STATE + "/hoststat", 0o700),
    (RUN, 0o755),
)
ALIASES_TEXT = "# See aliases(5). Written by `pysendmail install`.\npostmaster: root\n"

USAGE = ("usage: pysendmail install [--dry-run] [--root DIR]\n"
         "       pysendmail uninstall [--dry-run] [--root DIR]\n")


class Step:
    """One change of the plan: `text` says what it does, `run()` does it."""

    def __init__(self, text, run):
        self.text = text
        self.run = run


class Installer:
    """Computes and applies the install or uninstall plan for one filesystem root."""

    def __init__(self, root="/", bindir=None, out=None):
        self.root = os.path.abspath(root)
        self.bindir = bindir or find_bindir()
        self.out = out or sys.stdout

    def p(self, path):
        """The real location of the system path `path` under --root."""
        return path if self.root == "/" else os.path.join(self.root, path.lstrip("/"))

    # ---- manifest -------------------------------------------------------------------------
    def load_manifest(self):
        import json

        try:
            with open(self.p(MANIFEST), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {"version": 1, "entries": {}}
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise RuntimeError("%s: not a pysendmail manifest" % self.p(MANIFEST))
        return data

    def save_manifest(self, data):
        import json

        path = self.p(MANIFEST)
        _makedirs(os.path.dirname(path), 0o700)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # ---- install --------------------------------------------------------------------------
    def install_plan(self):
        steps = []
        if not self.user_exists():
            steps.append(Step("create system user %s (home %s, shell /usr/sbin/nologin)" % (USER, STATE),
                              self.create_user))
        for path, mode in DIRECTORIES:
            steps.extend(self.dir_steps(path, mode))
        if not os.path.lexists(self.p(ALIASES)):
            steps.append(Step("write %s with 'postmaster: root'" % ALIASES,
                              lambda: _write_file(self.p(ALIASES), ALIASES_TEXT, 0o644)))
        from . import launchers
        stale = launchers.rewrite(self.bindir, dry_run=True)
        if stale:
            steps.append(Step("rewrite the launchers in %s to start Python with -IS" % self.bindir,
                              lambda: launchers.rewrite(self.bindir)))
        manifest = self.load_manifest()
        for path, command in LINKS:
            step = self.link_step(path, os.path.join(self.bindir, command), manifest)
            if step:
                steps.append(step)
        if os.path.isdir(self.p(SYSTEMD_RUNNING)):
            text = unit_text(os.path.join(self.bindir, "sendmail"))
            if _read_text(self.p(UNIT)) != text:
                steps.append(Step("install the systemd unit %s" % UNIT,
                                  lambda: _write_file(self.p(UNIT), text, 0o644)))
        if steps:
            db = ALIASES + ".db"
            if os.path.isfile(self.p(db)) and db not in manifest["entries"]:
                # Another MTA's database (Postfix: Berkeley DB) is overwritten by ours: keep a copy.
                steps.append(Step("keep a copy of %s in %s" % (db, DISPLACED),
                                  lambda: self.keep_copy(db, manifest)))
            steps.append(Step("rebuild the alias database of %s" % ALIASES, self.rebuild_aliases))
        return steps

    def keep_copy(self, path, manifest):
        import shutil

        entry = dict(_describe(self.p(path)), path=path, copied=True,
                     stored=path.strip("/").replace("/", "%"))
        _makedirs(self.p(DISPLACED), 0o700)
        dest = os.path.join(self.p(DISPLACED), entry["stored"])
        shutil.copy2(self.p(path), dest)  # a real copy: no link shared with the live file
        os.chown(dest, entry["uid"], entry["gid"])
        manifest["entries"][path] = entry
        self.save_manifest(manifest)

    def user_exists(self):
        try:
            with open(self.p("/etc/passwd"), encoding="utf-8", errors="replace") as f:
                return any(line.split(":", 1)[0] == USER for line in f)
        except FileNotFoundError:
            return False

    def create_user(self):
        import subprocess

        cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", STATE,
               "--shell", "/usr/sbin/nologin", "--comment", "pysendmail MTA", USER]
        if self.root != "/":
            if not os.path.exists(self.p("/etc/passwd")):
                self.say("  skipped: no %s" % self.p("/etc/passwd"))
                return
            cmd[1:1] = ["--prefix", self.root]
        subprocess.run(cmd, check=True)

    def dir_steps(self, path, mode):
        real = self.p(path)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return [Step("create %s (mode %04o, root)" % (path, mode), lambda: _makedirs(real, mode))]
        import stat

        if not stat.S_ISDIR(st.st_mode):
            raise RuntimeError("%s exists and is not a directory" % real)
        if stat.S_IMODE(st.st_mode) != mode or st.st_uid != 0 or st.st_gid != 0:
            def fix():
                os.chown(real, 0, 0)
                os.chmod(real, mode)
            return [Step("set %s to mode %04o, owner root" % (path, mode), fix)]
        return []

    def link_step(self, path, target, manifest):
        real = self.p(path)
        current = _describe(real)
        if current["type"] == "symlink" and current["target"] == target:
            return None
        if path in manifest["entries"]:
            if current["type"] != "symlink" or not _is_ours(current["target"]):
                self.say("leaving %s alone: it is now %s, not pysendmail's link (the original is "
                         "still kept in %s)" % (path, _show(current), DISPLACED))
                return None
            # Our own earlier link (e.g. from another installation): replace, keep the record.
            return Step("link %s -> %s (replacing %s)" % (path, target, _show(current)),
                        lambda: _replace_with_link(real, target))
        if current["type"] == "directory":
            raise RuntimeError("%s is a directory; refusing to replace it" % real)

        def displace():
            entry = dict(current, path=path)
            if current["type"] == "file":
                entry["stored"] = path.strip("/").replace("/", "%")
                dest = os.path.join(self.p(DISPLACED), entry["stored"])
                _makedirs(self.p(DISPLACED), 0o700)
                _keep_copy(real, dest)
            manifest["entries"][path] = entry
            self.save_manifest(manifest)
            _replace_with_link(real, target)  # atomically: the path is never missing

        kept = "" if current["type"] == "absent" else ", keeping the old %s in %s" % (
            _show(current), DISPLACED)
        return Step("link %s -> %s%s" % (path, target, kept), displace)

    def rebuild_aliases(self):
        try:
            from pysendmail.cli import newaliases
        except ImportError:
            self.say("  skipped: this pysendmail has no newaliases yet")
            return
        from pysendmail import layout as layouts

        lay = layouts.system()
        if self.root != "/":
            lay = layouts.Layout(base=self.root, system=True, spool=self.p(SPOOL),
                                 mail_dir=self.p("/var/mail"), aliases=self.p(ALIASES),
                                 cf=lay.cf if lay.cf == layouts.DEFAULT_CF else self.p(lay.cf),
                                 state_dir=self.p(STATE), run_dir=self.p(RUN))
        status = newaliases.main([], lay, {})
        if status:
            self.say("  warning: the alias rebuild exited %d" % status)

    # ---- uninstall ------------------------------------------------------------------------
    def uninstall_plan(self):
        steps = []
        manifest = self.load_manifest()
        for path, entry in sorted(manifest["entries"].items()):
            real = self.p(path)
            current = _describe(real)
            if entry.get("copied"):
                steps.append(Step("put back the original %s" % path,
                                  lambda real=real, entry=entry: self.restore(real, entry, manifest)))
                continue
            if current["type"] != "symlink" or not _is_ours(current["target"]):
                self.say("leaving %s alone: it is now %s, not pysendmail's link" % (path, _show(current)))
                continue
            steps.append(Step("restore %s (%s)" % (path, _show(entry)),
                              lambda real=real, entry=entry: self.restore(real, entry, manifest)))
        if os.path.lexists(self.p(UNIT)) and "pysendmail" in (_read_text(self.p(UNIT)) or ""):
            steps.append(Step("remove the systemd unit %s" % UNIT, lambda: os.unlink(self.p(UNIT))))
        return steps

    def restore(self, real, entry, manifest):
        kind = entry["type"]
        if kind == "file":
            src = os.path.join(self.p(DISPLACED), entry["stored"])
            if not os.path.isfile(src):
                raise RuntimeError("cannot restore %s: %s is missing" % (entry["path"], src))
            _keep_copy(src, real)  # replaces pysendmail's link atomically
            os.unlink(src)
        elif kind == "symlink":
            _replace_with_link(real, entry["target"])
        else:
            os.unlink(real)
        del manifest["entries"][entry["path"]]
        self.save_manifest(manifest)

    # ---- driver ---------------------------------------------------------------------------
    def say(self, text):
        self.out.write(text + "\n")
        self.out.flush()

    def execute(self, verb, steps, dry_run):
        for step in steps:
            self.say(("would " if dry_run else "") + step.text)
            if not dry_run:
                step.run()
        if not steps:
            self.say("pysendmail %s: nothing to do (%s)" % (
                verb, "already installed" if verb == "install" else "not installed"))
        elif dry_run:
            self.say("pysendmail %s: dry run, %d step(s) planned, nothing changed" % (verb, len(steps)))
        else:
            self.say("pysendmail %s: done, %d change(s)" % (verb, len(steps)))
            if verb == "install" and os.path.lexists(self.p(UNIT)):
                self.say("start the daemon with: systemctl enable --now pysendmail")
            if verb == "uninstall":
                self.say("kept %s (queued mail), %s and the user %s" % (SPOOL, STATE, USER))


def unit_text(sendmail):
    """The systemd unit (shipped as package data) with @SENDMAIL@ replaced by the path
    of the installed command."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = _read_text(os.path.join(here, "data", "pysendmail.service"))
    if text is None:
        raise OSError("pysendmail/data/pysendmail.service is missing: a broken install")
    return text.replace("@SENDMAIL@", sendmail)


def find_bindir():
    """The directory of the installed commands: that of this program, else <prefix>/bin."""
    candidates = []
    if sys.argv and sys.argv[0]:
        candidates.append(os.path.dirname(os.path.abspath(sys.argv[0])))
    candidates.append(os.path.join(sys.prefix, "bin"))
    for d in candidates:
        if all(os.path.isfile(os.path.join(d, c)) and not os.path.islink(os.path.join(d, c))
               for c in ("sendmail", "mailq", "newaliases")):
            return d
    raise RuntimeError("cannot find the installed sendmail, mailq and newaliases in %s"
                       % " or ".join(candidates))


def _is_ours(target):
    d = os.path.dirname(target)
    return os.path.basename(target) in ("sendmail", "mailq", "newaliases") and os.path.isfile(
        os.path.join(d, "pysendmail"))


def _describe(path):
    import stat

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"type": "absent"}
    info = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(st.st_mode):
        info.update(type="symlink", target=os.readlink(path))
    elif stat.S_ISREG(st.st_mode):
        info.update(type="file", size=st.st_size, mtime_ns=st.st_mtime_ns)
    elif stat.S_ISDIR(st.st_mode):
        info.update(type="directory")
    else:
        info.update(type="other")
    return info


def _show(info):
    if info["type"] == "symlink":
        return "symlink to %s" % info["target"]
    if info["type"] == "file":
        return "file (%d bytes, mode %04o)" % (info["size"], info["mode"])
    return info["type"]


def _makedirs(path, mode):
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, 0o755)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    os.chown(path, 0, 0)
    os.chmod(path, mode)  # mkdir's mode is masked by the umask and drops the sticky bit


def _write_file(path, text, mode):
    if not os.path.isdir(os.path.dirname(path)):
        _makedirs(os.path.dirname(path), 0o755)
    tmp = path + ".pysendmail-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _replace_with_link(path, target):
    """Atomically make `path` a symlink to `target` (never following what is there)."""
    tmp = path + ".pysendmail-new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _keep_copy(src, dest):
    """Make `dest` a copy of the regular file `src` (a hard link when on the same
    filesystem), keeping mode, owner and times; `src` stays in place, so the path it
    serves is never missing. Atomic: `dest` appears complete or not at all."""
    tmp = dest + ".pysendmail-tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        st = os.lstat(src)
        shutil.copyfile(src, tmp, follow_symlinks=False)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dest)


def main(argv, command="install"):
    """Entry point of `pysendmail install` (and, with command="uninstall" or a first
    argument "uninstall", of `pysendmail uninstall`). Returns the exit status."""
    argv = list(argv)
    if argv and argv[0] in ("install", "uninstall"):
        command = argv.pop(0)
    dry_run, root = False, "/"
    while argv:
        arg = argv.pop(0)
        if arg in ("-n", "--dry-run"):
            dry_run = True
        elif arg == "--root" and argv:
            root = argv.pop(0)
        elif arg.startswith("--root="):
            root = arg.split("=", 1)[1]
        elif arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return EX_OK
        else:
            sys.stderr.write("pysendmail %s: unknown argument %r\n%s" % (command, arg, USAGE))
            return EX_USAGE
    import subprocess

    if os.geteuid() != 0:
        sys.stderr.write("pysendmail %s: must be run as root\n" % command)
        return EX_NOPERM
    if not os.path.isdir(root):
        sys.stderr.write("pysendmail %s: --root %s is not a directory\n" % (command, root))
        return EX_USAGE
    try:
        inst = Installer(root)
        steps = inst.install_plan() if command == "install" else inst.uninstall_plan()
        inst.execute(command, steps, dry_run)
    except (OSError, RuntimeError, ValueError, subprocess.CalledProcessError) as e:
        sys.stderr.write("pysendmail %s: %s\n" % (command, e))
        return EX_SOFTWARE
    return EX_OK


def uninstall_main(argv):
    """Entry point of `pysendmail uninstall`."""
    return main(argv, command="uninstall")

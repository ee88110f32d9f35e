"""`pysendmail launchers`: rewrite the installed commands to start Python with -IS.

pip points an installed script's `#!python` line at the interpreter and drops any
flags, so the commands it installs run `site` (and every .pth file of the
environment) before the first line of ours: about a millisecond that cron and PHP
pay on every message. This rewrites each command in place with
`#!<interpreter> -IS` (isolated, no site; Linux passes one argument after the
interpreter, hence the combined flags) and the absolute path of the directory that
holds the package. `pysendmail install` runs it; running it again is harmless.

Security stance: it rewrites only files that are already pysendmail's launchers,
through a temporary file renamed into place, keeping their mode.
"""
import os
import sys

NAMES = ("sendmail", "mailq", "newaliases", "pysendmail", "makemap")
MARKER = "from pysendmail.cli.main import main"
# Commands whose launcher imports another module of pysendmail.cli than `main`.
MODULES = {"makemap": "makemap"}


def marker(name):
    """The import line that identifies the launcher of command `name`."""
    return "from pysendmail.cli.%s import main" % MODULES.get(name, "main")

TEMPLATE = """#!{python} -IS
# The installed command, written by `pysendmail launchers`: Python starts isolated and
# without `site` (-IS); the package directory is named here instead.
import os
import sys

sys.path.insert(0, {site!r})
from pysendmail.cli.{module} import main

status = main(sys.argv)
try:
    sys.stdout.flush()
    sys.stderr.flush()
except (OSError, ValueError):
    pass
os._exit(status if isinstance(status, int) else 1)
"""


def package_dir():
    import pysendmail
    return os.path.dirname(os.path.dirname(os.path.abspath(pysendmail.__file__)))


def launcher_text(python=None, site=None, name="sendmail"):
    return TEMPLATE.format(python=python or sys.executable, site=site or package_dir(),
                           module=MODULES.get(name, "main"))


def rewrite(bindir, python=None, site=None, dry_run=False):
    """Rewrite the launchers in `bindir`; returns the paths changed."""
    changed = []
    for name in NAMES:
        text = launcher_text(python, site, name)
        path = os.path.join(bindir, name)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                current = f.read()
        except OSError:
            continue
        if marker(name) not in current or current == text:
            continue
        changed.append(path)
        if dry_run:
            continue
        mode = os.stat(path).st_mode & 0o7777
        tmp = path + ".pysendmail-new"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    return changed


def main(argv):
    dry = "--dry-run" in argv
    bindir = os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else None
    for arg in argv:
        if not arg.startswith("-"):
            bindir = arg
    if not bindir:
        bindir = os.path.join(sys.prefix, "bin")
    for path in rewrite(bindir, dry_run=dry):
        print("%s %s" % ("would rewrite" if dry else "rewrote", path))
    return 0

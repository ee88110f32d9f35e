"""pysendmail: a Sendmail-compatible mail transfer agent in Python.

The commands (`sendmail`, `mailq`, `newaliases`, `pysendmail`) are installed as
small scripts from `bin/` rather than as setuptools entry points (whose wrappers
import `re` and more): they import only what the submission path needs, because
cron and PHP pay the start-up cost on every message (see docs/ARCHITECTURE.md).
"""
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    """Also writes the compiled form of the shipped sendmail.cf (data/sendmail.cf.compiled),
    so that no installed command runs the cf parser for the embedded default: a fresh
    instance's first `sendmail` costs the same as the next one."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "pysendmail", "data", "sendmail.cf")
        if self.dry_run or not os.path.exists(target):
            return
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        try:
            from pysendmail.config import cf
            cf.compile_to(target)
        except ImportError as e:      # no lark where this builds: compiled on first use
            print("warning: sendmail.cf not precompiled: %s" % e, file=sys.stderr)
        finally:
            sys.path.pop(0)

setup(
    cmdclass={"build_py": BuildPy},
    name="pysendmail",
    version="0.1.0",
    description="A Sendmail-compatible mail transfer agent in Python",
    long_description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["pysendmail", "pysendmail.*"]),
    package_data={"pysendmail": ["data/*", "config/*.lark"]},
    data_files=[
        ("share/man/man1", ["man/mailq.1"]),
        ("share/man/man5", ["man/aliases.5", "man/sendmail.cf.5"]),
        ("share/man/man8", ["man/sendmail.8", "man/newaliases.8", "man/pysendmail.8",
                          "man/makemap.8"]),
    ],
    scripts=["bin/sendmail", "bin/mailq", "bin/newaliases", "bin/pysendmail", "bin/makemap"],
    install_requires=[
        "dnspython>=2.4",
        "authres>=1.2",
        "cryptography>=41",
        "lark>=1.1",
        "dkimpy>=1.1",          # DKIM and ARC (mailauth/)
        "pyspf>=2.0.14",        # SPF (mailauth/spf.py)
    ],
    extras_require={
        # pymilter compiles against libmilter-dev: only for writing milters and for tests.
        "milter": ["pymilter>=1.0.5"],
        "test": ["pytest>=7"],
    },
)

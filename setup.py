"""pysendmail: a Sendmail-compatible mail transfer agent in Python.

The commands (`sendmail`, `mailq`, `newaliases`, `pysendmail`) are installed as
small scripts from `bin/` rather than as setuptools entry points (whose wrappers
import `re` and more): they import only what the submission path needs, because
cron and PHP pay the start-up cost on every message (see docs/ARCHITECTURE.md).
"""
from setuptools import find_packages, setup

setup(
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
    ],
    extras_require={
        # pymilter compiles against libmilter-dev: only for writing milters and for tests.
        "milter": ["pymilter>=1.0.5"],
        "test": ["pytest>=7"],
    },
)

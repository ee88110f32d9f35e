"""The `sendmail` command (also `mailq`, `newaliases`, `pysendmail`): parse Sendmail's
command line and run the asked-for mode.

Imports are lazy: the default mode (-bm, submission) loads only what it needs,
because cron and PHP pay this start-up on every message. When the instance's service
runs and belongs to the caller, a submission is handed to it over its socket
(cli.relay) before anything else is imported: not even `os`.
"""
import posix
import sys

SUBCOMMANDS = ("install", "uninstall", "launchers", "passwd", "dkim-keygen")


def _out(text, fd=1):
    posix.write(fd, (text + "\n").encode("utf-8", "surrogateescape"))


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0].rpartition("/")[2] if argv else "sendmail"
    args = argv[1:]
    if prog == "pysendmail":
        if args and args[0] == "launchers":
            from . import launchers
            return launchers.main(args[1:])
        if args and args[0] == "passwd":
            from . import saslpasswd
            return saslpasswd.main(args[1:])
        if args and args[0] == "dkim-keygen":
            from . import dkim_keygen
            return dkim_keygen.main(args[1:])
        if args and args[0] in SUBCOMMANDS:
            from . import install
            return install.main([args[0]] + args[1:])
        prog = "sendmail"
    from .. import layout as layoutmod
    layout = layoutmod.current()
    if prog == "sendmail" and "--json" not in args:
        # The running service takes plain submissions (it decides, from the argv, before
        # a byte of stdin is read): nothing more is imported on this path.
        from .relay import submit_to_service
        status = submit_to_service(argv, layout)
        if status is not None:
            return status
    from ..errors import EX_SOFTWARE, MTAError, UsageError
    json_out = False
    if "--json" in args and (prog == "mailq" or "-bp" in args):
        args = [a for a in args if a != "--json"]
        json_out = True
    from ..config import cmdline
    try:
        inv = cmdline.parse(args, prog)
    except UsageError as e:
        _out(e.message, 2 if " -- " in e.message else 1)
        return e.status
    inv.json = json_out
    try:
        return _run(inv, layout)
    except MTAError as e:
        _out(e.message)
        return e.status
    except KeyboardInterrupt:
        return 75
    except BrokenPipeError:
        return EX_SOFTWARE


def _login():
    import pwd
    try:
        return pwd.getpwuid(posix.getuid()).pw_name
    except KeyError:
        return "uid%d" % posix.getuid()


def _setup(inv, layout):
    from ..config import identity, options as optmod
    from ..errors import MTAError
    from ..log import Logger
    log = Logger(tag=inv.log_tag or "sendmail", log_file=layout.log_file)
    if inv.cf:
        layout.cf = inv.cf
    try:
        cf = optmod.read_quick(layout.cf)
        for name in inv.options:
            optmod.check_name(name)
    except MTAError as e:
        log.syserr(None, _login(), e.message)
        raise
    options = dict(cf.options)
    options.update(inv.options)
    if options.get("AliasFile"):
        layout.aliases = options["AliasFile"].split(",")[0].strip()
    ident = identity.detect(cf, options.get("HostsFile") or "/etc/hosts")
    return layout, options, ident, log


def _run(inv, layout):
    from ..errors import EX_OK, EX_UNAVAILABLE
    mode = inv.mode
    layout, options, ident, log = _setup(inv, layout)
    if inv.quarantine is not None:      # -Q: change quarantine state only, no delivery
        from . import quarantine
        return quarantine.main(inv, layout, log)
    if mode == "p":
        from . import mailq
        return mailq.main(inv, layout)
    if mode == "i":
        from . import newaliases
        return newaliases.main([], layout, options, log=log)
    if mode == "v":
        from .verify import main as verify
        return verify(inv, layout, options, ident, log)
    if mode == "s":
        from .smtp_session import main as smtp_main
        return smtp_main(inv, layout, options, ident, log)
    if mode in ("d", "D") or (inv.queue_run and inv.queue_interval):
        from ..daemon.service import main as daemon_main
        return daemon_main(inv, layout, options, ident, log)
    if inv.queue_run:
        from ..qmgr.queuerun import QueueRun
        run = QueueRun(layout, options, ident, log, verbose=inv.verbose)
        run.run(filters=inv.queue_filters,
                include_held=any(k == "Q" for k, _, _ in inv.queue_filters))
        return EX_OK
    if mode == "t":
        from .addrtest import main as addrtest_main
        return addrtest_main(inv, layout, options, ident, log)
    if mode == "P":
        _out("Data unavailable: shared memory not configured")
        return EX_UNAVAILABLE
    if mode in ("h", "H"):
        from ..delivery.hoststat import HostStatusCache, format_listing
        cache = HostStatusCache(layout.hoststat_dir)
        if mode == "H":
            cache.purge()
            return EX_OK
        posix.write(1, format_listing(cache, verbose=inv.verbose).encode("utf-8", "surrogateescape"))
        return EX_OK
    if mode == "C":
        from ..delivery.router import load_rules
        rules = load_rules(layout, options, ident.j)
        for _line, text in rules.complaints:
            _out(text)
        _out("%s: configuration ok" % layout.cf)
        return EX_OK
    from ..submission.submit import Submission
    return Submission(inv, layout, options, ident, log).run()

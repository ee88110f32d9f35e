"""Where a long-running role spends its time: a cProfile of it, for bench/.

When PYSENDMAIL_PROFILE_DIR is set, `profiled(role)` profiles the block it wraps and
writes `<dir>/<role>-<pid>.prof` at its end (the SMTP workers and the service's queue
runner use it). Unset, it costs one environment lookup.
"""
import contextlib
import os


@contextlib.contextmanager
def profiled(role):
    where = os.environ.get("PYSENDMAIL_PROFILE_DIR")
    if not where:
        yield
        return
    import cProfile
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(os.path.join(where, "%s-%d.prof" % (role, os.getpid())))

"""Date texts in the forms mail needs, from epoch seconds, in local time.

One place for them all: RFC 5322 dates (Sendmail's arpadate: "GMT" on a UTC host,
else a numeric zone), ctime(3) dates for mbox From_ lines, and the short forms of
syslog and mailq. Only `time` is imported (no datetime, no email.utils, no locale:
these run on the submission path and must not depend on LC_TIME).
"""
import time

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc5322(now):
    """'Thu, 26 Nov 2026 14:45:26 -0500'; 'GMT' for a zero offset, as Sendmail writes it."""
    t = time.localtime(now)
    off = t.tm_gmtoff // 60
    if off == 0:
        zone = "GMT"
    else:
        zone = "%s%02d%02d" % ("+" if off > 0 else "-", abs(off) // 60, abs(off) % 60)
    return "%s, %d %s %d %02d:%02d:%02d %s" % (
        DAYS[t.tm_wday], t.tm_mday, MONTHS[t.tm_mon - 1], t.tm_year,
        t.tm_hour, t.tm_min, t.tm_sec, zone)


def ctime(now):
    """'Thu Nov 26 14:45:26 2026', as in an mbox From_ line (ctime(3) without newline)."""
    t = time.localtime(now)
    return "%s %s %2d %02d:%02d:%02d %d" % (
        DAYS[t.tm_wday], MONTHS[t.tm_mon - 1], t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, t.tm_year)

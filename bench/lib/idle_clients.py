"""Many idle SMTP sessions held open at once: the load of the `mem` phase.

hold(host, port, n, on_held, ...) opens n connections (asyncio, one process),
paced at `rate` connection attempts per second, each reading the banner,
sending `EHLO bench.localhost` and reading the reply, then sitting idle.
When every session has reached a final state (or the stage deadline passed)
it waits `settle` seconds, calls on_held() (the caller samples the server's
memory then), waits `hold` more seconds, counts the sessions still open, and
closes them all. Returns the counts:

  ready            banner 220 + EHLO 250: an idle session, what is measured
  waiting          connected, no banner by the deadline (e.g. Postfix's sessions
                   over default_process_limit sit in the listen backlog)
  connect_timeout  the TCP connect did not complete by the deadline (SYNs dropped
                   because the listen queue was full)
  refused          ECONNREFUSED;  reset: closed/reset by the server before ready
  rejected         a banner or EHLO reply that is not 2xx (e.g. 421, 554)
  errors           other OSErrors by errno name (EADDRNOTAVAIL, EMFILE, ...)
  still_open       of the ready ones, how many the server had not closed after
                   the hold

Source addresses are spread over 127.0.0.2 ... (250 sessions per address) so
10,000 sessions never run out of ephemeral ports. The caller must have raised
RLIMIT_NOFILE (raise_nofile) above n. Bounded: pacing + `deadline` seconds
for the sessions to come up, then settle + hold; nothing leaves loopback.
"""
import asyncio
import errno
import resource
import statistics
import time

PER_SOURCE = 250


def raise_nofile(want):
    """Soft RLIMIT_NOFILE up to min(want, hard); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    if new != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


class _Session(asyncio.Protocol):
    __slots__ = ("state", "buf", "tr", "t0", "t_ready", "closed", "detail")

    def __init__(self, t0):
        self.state, self.buf, self.tr, self.t0 = "connecting", b"", None, t0
        self.t_ready = None
        self.closed = False
        self.detail = None

    def connection_made(self, transport):
        self.tr = transport
        self.state = "connected"

    def data_received(self, data):
        if self.state not in ("connected", "banner"):
            return
        self.buf += data
        while b"\n" in self.buf and self.state in ("connected", "banner"):
            line, _, self.buf = self.buf.partition(b"\n")
            if line[3:4] == b"-":
                continue
            if self.state == "connected":
                if line.startswith(b"220"):
                    self.state = "banner"
                    self.tr.write(b"EHLO bench.localhost\r\n")
                else:
                    self.state, self.detail = "rejected", line[:60].decode(errors="replace")
            elif line.startswith(b"250"):
                self.state, self.t_ready = "ready", time.monotonic()
            else:
                self.state, self.detail = "rejected", line[:60].decode(errors="replace")
        if len(self.buf) > 65536:
            self.state, self.detail = "rejected", "reply too long"

    def connection_lost(self, exc):
        self.closed = True
        if self.state in ("connecting", "connected", "banner"):
            self.state = "reset"


async def _connect(loop, sess, host, port, src, timeout, errors):
    try:
        await asyncio.wait_for(loop.create_connection(lambda: sess, host, port, local_addr=(src, 0)), timeout)
    except asyncio.TimeoutError:
        sess.state = "connect_timeout"
    except ConnectionRefusedError:
        sess.state = "refused"
    except ConnectionResetError:
        sess.state = "reset"
    except OSError as e:
        sess.state = "error"
        name = errno.errorcode.get(e.errno, str(e.errno))
        errors[name] = errors.get(name, 0) + 1


FINAL = ("ready", "rejected", "reset", "refused", "error", "connect_timeout")


async def _hold(host, port, n, on_held, rate, deadline, settle, hold, log):
    loop = asyncio.get_running_loop()
    sessions, tasks, errors = [], [], {}
    start = time.monotonic()
    for i in range(n):
        ahead = start + i / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
        sess = _Session(time.monotonic())
        sessions.append(sess)
        src = "127.0.0.%d" % (2 + (i // PER_SOURCE) % 250)
        tasks.append(loop.create_task(_connect(loop, sess, host, port, src, deadline, errors)))
    launched = time.monotonic()
    stop_at = launched + deadline
    while time.monotonic() < stop_at:
        if all(s.state in FINAL for s in sessions):
            break
        await asyncio.sleep(0.1)
    up = time.monotonic()
    await asyncio.sleep(settle)
    held = on_held() if on_held else None
    await asyncio.sleep(hold)
    counts = {}
    for s in sessions:
        st = {"connected": "waiting", "banner": "waiting", "connecting": "connect_timeout"}.get(s.state, s.state)
        counts[st] = counts.get(st, 0) + 1
    ready = [s for s in sessions if s.state == "ready"]
    still_open = sum(1 for s in ready if not s.closed)
    lat = sorted((s.t_ready - s.t0) * 1000 for s in ready)
    rejected = sorted({s.detail for s in sessions if s.state == "rejected" and s.detail})[:5]
    for s in sessions:
        if s.tr is not None and not s.closed:
            s.tr.abort()            # RST: no TIME_WAIT pile-up, no 10,000 QUIT replies to wait for
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.2)
    out = {"n": n, "rate": rate, "launch_s": round(launched - start, 2), "up_s": round(up - start, 2),
           "ready": counts.get("ready", 0), "waiting": counts.get("waiting", 0),
           "connect_timeout": counts.get("connect_timeout", 0), "refused": counts.get("refused", 0),
           "reset": counts.get("reset", 0), "rejected": counts.get("rejected", 0),
           "rejected_replies": rejected, "errors": errors, "still_open": still_open,
           "ready_ms_median": round(statistics.median(lat), 1) if lat else None,
           "ready_ms_p99": round(lat[int(len(lat) * 0.99) - 1 if len(lat) > 1 else 0], 1) if lat else None,
           "ready_ms_max": round(lat[-1], 1) if lat else None, "held": held}
    log(f"  {n} sessions: ready {out['ready']}, waiting {out['waiting']}, connect timeouts "
        f"{out['connect_timeout']}, refused {out['refused']}, reset {out['reset']}, rejected {out['rejected']}, "
        f"errors {errors or 0}; still open after the hold {still_open}; up in {out['up_s']} s")
    return out


def hold(host, port, n, on_held=None, rate=2000.0, deadline=15.0, settle=2.0, hold=3.0, log=print):
    """Open n idle sessions to host:port, call on_held() while they are held; the counts."""
    raise_nofile(n + 256)
    return asyncio.run(_hold(host, port, n, on_held, rate, deadline, settle, hold, log))

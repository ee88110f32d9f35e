"""pysendmail.milter.client against real pymilter milters (libmilter: Sendmail's own side).

The milters are in tests/milters/test_milter.py, started as subprocesses on a free loopback
port (inet:) and on a unix socket in tmp_path.  Fake peers (plain asyncio servers) cover
what libmilter never does: garbage and oversized packets.
"""
import asyncio
import time

import pytest

from milter_helpers import free_port, start_milter, stop
from pysendmail.milter import client as mcl
from pysendmail.proto import milter_codec as mc


@pytest.fixture(scope="module")
def milter(tmp_path_factory):
    m = start_milter(tmp_path_factory.mktemp("milter"))
    yield m
    stop(m)


@pytest.fixture
def lean(tmp_path):
    m = start_milter(tmp_path, "lean", unix=True)
    yield m
    stop(m)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


MACROS = {"j": "mx.example.test", "_": "client@localhost", "{daemon_name}": "MTA",
          "{if_name}": "localhost", "{if_addr}": "127.0.0.1", "i": "QID123",
          "{auth_type}": "PLAIN", "{mail_addr}": "a@example.test", "{rcpt_addr}": "b@x.test",
          "{msg_id}": "<m1@example.test>", "{client_addr}": "192.0.2.7",
          "{tls_version}": "TLSv1.3", "{x_data}": "d", "{x_eoh}": "e"}


async def session(spec, sender="accept", rcpts=("<b@example.test>",), headers=None,
                  body=b"hello\nworld\n", client=None, quit=True, unknown=None, rejected=(), **kw):
    c = client or mcl.MilterClient("t", spec, **kw)
    out = {"client": c}
    out["connect"] = await c.connect("client.example.test", mc.SMFIA_INET, 4567, "192.0.2.7",
                                     MACROS)
    out["helo"] = await c.helo("client.example.test", MACROS)
    if unknown:
        out["unknown"] = await c.unknown(unknown)
    out["mail"] = await c.mail(["<%s@example.test>" % sender, "SIZE=42", "BODY=8BITMIME"],
                               MACROS)
    out["rcpt"] = [await c.rcpt([r, "NOTIFY=NEVER"], MACROS) for r in rcpts]
    out["rejected"] = [await c.rcpt([r], MACROS, rejected=True) for r in rejected]
    out["data"] = await c.data(MACROS)
    hdrs = headers or [("Subject", " hi there"), ("X-Remove", " 1"), ("X-Remove", " 2")]
    out["eom"] = await c.message(hdrs, body, MACROS, MACROS)
    if quit:
        await c.quit()
    return out


ACTIONS = [
    ("accept", "accept", []), ("continue", "accept", []),
    ("reject", "reject", []), ("tempfail", "tempfail", []), ("discard", "discard", []),
    ("addheader", "accept", [mc.AddHeader("X-Added", "one"), mc.AddHeader("X-Added", "two")]),
    ("insheader", "accept", [mc.InsHeader(0, "X-Inserted", "at zero")]),
    ("chgheader", "accept", [mc.ChgHeader(1, "Subject", "changed subject")]),
    ("delheader", "accept", [mc.ChgHeader(2, "X-Remove", "")]),
    ("addrcpt", "accept", [mc.AddRcpt("<new@example.test>")]),
    ("addrcptpar", "accept", [mc.AddRcptPar("<new2@example.test>",
                                            ("NOTIFY=NEVER", "ORCPT=rfc822;x@y"))]),
    ("delrcpt", "accept", [mc.DelRcpt("<old@example.test>")]),
    ("chgfrom", "accept", [mc.ChgFrom("<bounce@example.test>", ("SIZE=100", "BODY=8BITMIME"))]),
]


@pytest.mark.parametrize("mode,action,mods", ACTIONS, ids=[a[0] for a in ACTIONS])
def test_each_action(milter, mode, action, mods):
    out = run(session(milter.spec, mode))
    assert [out[k].action for k in ("connect", "helo", "mail", "data")] == ["continue"] * 4
    assert out["eom"].action == action and out["eom"].modifications == mods
    assert out["eom"].quarantine is None


def test_custom_replies(milter):
    r = run(session(milter.spec, "reply"))["eom"]
    assert r.action == "reply" and r.reply.code == 554 and r.reply.lines() == ["5.7.0 go away 100%"]
    r = run(session(milter.spec, "replyml"))["eom"]
    assert r.action == "reply" and r.reply.code == 451
    assert r.reply.lines() == ["4.7.1 first line", "4.7.1 second line", "4.7.1 third line"]
    out = run(session(milter.spec, rcpts=("<reject@example.test>", "<tempfail@example.test>",
                                          "<ok@example.test>")))
    assert [r.action for r in out["rcpt"]] == ["reply", "tempfail", "continue"]
    assert out["rcpt"][0].reply.text == "553 5.1.3 no such user here"
    assert out["eom"].action == "accept"


def test_replacebody_quarantine_progress_skip(milter):
    r = run(session(milter.spec, "replacebody"))["eom"]
    assert r.action == "accept" and r.body == b"new body\r\n" * 10000
    assert len(r.modifications) >= 2            # libmilter sends it in 64K chunks
    r = run(session(milter.spec, "quarantine"))["eom"]
    assert r.action == "accept" and r.quarantine == "held for review"
    # 3 progress packets 0.6 s apart; a read timeout of 1 s would fail without them
    t0 = time.monotonic()
    r = run(session(milter.spec, "progress", timeouts={"R": 1.0}))["eom"]
    assert r.action == "accept" and time.monotonic() - t0 >= 1.8
    milter.clear()
    body = b"x" * 200000
    r = run(session(milter.spec, "skip", body=body))["eom"]
    assert r.action == "accept"
    chunks = [e["size"] for e in milter.events("body")]
    assert chunks == [65535], chunks            # SKIP after the first chunk: no more sent
    milter.clear()
    run(session(milter.spec, "accept", body=body))
    assert [e["size"] for e in milter.events("body")] == [65535, 65535, 65535, 3395]


def test_stages_and_macros(milter):
    milter.clear()

    async def go():
        c = mcl.MilterClient("t", milter.spec, macros={"data": ("{x_data}",),
                                                       "eoh": ("{x_eoh}",)})
        return await session(milter.spec, "accept", client=c, unknown="XFOO bar",
                             headers=[("Subject", " lead space")])
    out = run(go())
    assert out["unknown"].action == "continue"
    ev = {e["stage"]: e for e in milter.events()}
    assert ev["connect"]["hostname"] == "client.example.test"
    assert ev["connect"]["hostaddr"] == ["192.0.2.7", 4567]
    assert ev["connect"]["macros"] == {"j": "mx.example.test", "_": "client@localhost",
                                       "{daemon_name}": "MTA", "{if_name}": "localhost",
                                       "{if_addr}": "127.0.0.1"}
    assert ev["helo"]["name"] == "client.example.test"
    assert ev["helo"]["macros"]["{tls_version}"] == "TLSv1.3"
    assert ev["mail"]["sender"] == "<accept@example.test>"
    assert ev["mail"]["params"] == ["SIZE=42", "BODY=8BITMIME"]
    assert ev["mail"]["macros"]["i"] == "QID123" and ev["mail"]["macros"]["{auth_type}"] == "PLAIN"
    assert ev["rcpt"]["params"] == ["NOTIFY=NEVER"] and ev["rcpt"]["macros"]["{rcpt_addr}"] == "b@x.test"
    assert ev["data"]["macros"]["{x_data}"] == "d"
    assert ev["header"]["name"] == "Subject" and ev["header"]["value"] == "lead space"
    assert ev["eoh"]["macros"]["{x_eoh}"] == "e"
    assert ev["body"]["head"] == "hello\r\nworld\r\n"
    assert ev["eom"]["macros"]["{msg_id}"] == "<m1@example.test>"
    assert ev["unknown"]["cmd"] == "XFOO bar"


def test_helo_reject_keeps_the_connection(milter):
    async def go():
        c = mcl.MilterClient("t", milter.spec)
        await c.connect("h", mc.SMFIA_INET, 1, "192.0.2.1")
        r = await c.helo("rejectme")
        r2 = await c.helo("fine")
        await c.quit()
        return r, r2
    r, r2 = run(go())
    assert r.action == "reject" and r2.action == "continue"


def test_negotiation_noreply_nocallback_symlist(lean):
    async def go():
        c = mcl.MilterClient("lean", lean.spec)
        out = await session(lean.spec, "accept", client=c, rejected=("<bad@example.test>",))
        return c, out
    c, out = run(go())
    n = c.negotiated
    for code in (b"C", b"H", b"R", b"L", b"N"):
        assert n.no_reply(code), code
    assert n.skips(b"B") and n.skips(b"U") and not n.skips(b"M")
    assert n.protocol & mc.SMFIP_RCPT_REJ and n.actions & mc.SMFIF_SETSYMLIST
    assert n.macros == {}
    assert out["eom"].action == "accept"
    assert out["eom"].modifications == [mc.AddHeader("X-Lean", "yes")]
    mail = lean.events("mail")[0]
    assert mail["macros"].get("{mail_addr}") == "a@example.test" and mail["macros"]["i"] == "QID123"
    assert [e["rcpt"] for e in lean.events("rcpt")] == ["<b@example.test>", "<bad@example.test>"]
    assert lean.events("body", wait=0) == []


def test_two_messages_on_one_connection_with_abort(milter):
    milter.clear()

    async def go():
        c = mcl.MilterClient("t", milter.spec)
        await c.connect("h", mc.SMFIA_INET, 1, "192.0.2.1", MACROS)
        await c.helo("h")
        await c.mail(["<accept@x>"])
        await c.rcpt(["<a@x>"])
        assert c.state == mcl.INMSG
        await c.abort()                         # RSET
        results = []
        for sender in ("addheader", "quarantine"):
            await c.mail(["<%s@x>" % sender])
            await c.rcpt(["<a@x>"])
            await c.data()
            results.append(await c.message([("Subject", " s")], b"body\n"))
        await c.quit()
        return results
    r1, r2 = run(go())
    assert len(r1.modifications) == 2 and r2.quarantine == "held for review"
    assert milter.events("close")
    stages = [e["stage"] for e in milter.events() if e["stage"] in ("connect", "abort", "mail",
                                                                     "close")]
    assert stages == ["connect", "mail", "abort", "mail", "mail", "close"]


def test_unix_socket(tmp_path):
    m = start_milter(tmp_path, unix=True)
    try:
        r = run(session(m.spec, "addrcpt"))["eom"]
        assert r.modifications == [mc.AddRcpt("<new@example.test>")]
        assert run(session("local:" + m.spec[5:], "accept"))["eom"].action == "accept"
    finally:
        stop(m)


def test_milter_down_is_a_failure(tmp_path):
    port = free_port()
    out = run(session("inet:%d@127.0.0.1" % port))
    assert out["connect"].failed and "connect" in out["connect"].error
    assert out["eom"].failed and out["mail"].failed      # every later call says so
    r = run(session("unix:" + str(tmp_path / "none.sock")))["connect"]
    assert r.failed and r.action == mcl.FAILED


def test_slow_milter_read_timeout(tmp_path):
    m = start_milter(tmp_path, "slow")
    try:
        t0 = time.monotonic()
        r = run(session(m.spec, "accept", timeouts={"R": 0.5}))["eom"]
        assert r.failed and "timeout" in r.error and time.monotonic() - t0 < 2.5
        r = run(session(m.spec, "accept", timeouts={"R": 10, "E": 0.5}))["eom"]
        assert r.failed and "end-of-message timeout" in r.error
    finally:
        stop(m)


def test_milter_closing_mid_message(tmp_path):
    m = start_milter(tmp_path, "die")
    try:
        out = run(session(m.spec, "accept"))
        assert out["mail"].action == "continue"
        assert out["rcpt"][0].failed and "closed" in out["rcpt"][0].error
        assert out["eom"].failed
    finally:
        stop(m)


async def _fake(answer):
    """A fake milter: negotiates properly, then answers `answer` bytes to the next command."""
    async def handle(reader, writer):
        r = mc.command_reader()
        sent = False
        while True:
            data = await reader.read(65536)
            if not data:
                break
            for cmd in r.feed(data):
                if isinstance(cmd, mc.OptNeg):
                    writer.write(mc.OptNeg(6, 0, 0, {}).encode())
                elif not sent and not isinstance(cmd, mc.Macro):
                    writer.write(answer)
                    sent = True
            await writer.drain()
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("answer,why", [
    (b"\0\0\0\x02Z\0", "unknown response"), (b"\xff\xff\xff\xffa", "out of range"),
    (mc.packet(b"h", b"X\0v\0"), "bogus response"), (b"garbage!", "out of range"),
])
def test_garbage_answers_are_failures(answer, why):
    async def go():
        server = await _fake(answer)
        port = server.sockets[0].getsockname()[1]
        async with server:
            c = mcl.MilterClient("fake", "inet:%d@127.0.0.1" % port)
            r = await c.connect("h", mc.SMFIA_INET, 1, "192.0.2.1")
            r2 = await c.helo("h")
            return r, r2
    r, r2 = run(go())
    assert r.failed and why in r.error and r2.failed


def test_bad_specs_and_timeouts():
    assert mcl.parse_socket_spec("inet:8894@127.0.0.1") == ("inet", "127.0.0.1", 8894)
    assert mcl.parse_socket_spec("inet6:25@[::1]") == ("inet6", "::1", 25)
    assert mcl.parse_socket_spec("local:/run/m.sock") == ("unix", "/run/m.sock", None)
    assert mcl.parse_socket_spec("inet:x@h") is None and mcl.parse_socket_spec("foo") is None
    assert mcl.parse_timeouts("C:5m;S:10s;R:1h30m;E:2") == {"C": 300, "S": 10, "R": 5400, "E": 2}
    assert mcl.parse_timeouts("") == mcl.DEFAULT_TIMEOUTS
    assert mcl.parse_timeouts("X:5") is None and mcl.parse_timeouts("R:5q") is None
    r = run(mcl.MilterClient("bad", "tcp:1@h").connect("h"))
    assert r.failed and "bad socket spec" in r.error

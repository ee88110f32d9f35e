"""pysendmail.milter.chain against real pymilter milters (libmilter) over loopback inet: and
unix: sockets: chains of two and three filters where each sees what the earlier ones
changed, every end-of-message action applied to the Message, the verdict precedence,
ACCEPT/DISCARD/reply codes, and F=R / F=T / F=4 / none with filters that are down or die.

The filters are tests/milters/chain_milter.py (configured by a JSON argument) and, for a
filter that dies mid-session, tests/milters/test_milter.py's 'die' mode.  The chains are
built from cf text through milter.config.load_milters, as the daemon will.
"""
import asyncio

import pytest

from pysendmail.config import cf as cfmod
from pysendmail.milter import chain as mch
from pysendmail.milter import config as mconf
from pysendmail.proto import milter_codec as mc
from milter_helpers import free_port, start_chain_milter, start_milter

HEADERS = [("From", " a@example.test"), ("Subject", " hello"), ("X-Remove", " one"),
           ("X-Remove", " two")]
BODY = b"line one\nline two\n"


@pytest.fixture
def milters(tmp_path):
    """milters(name=conf, ...) -> {name: Milter}; the odd ones on unix sockets."""
    started = []

    def start(**confs):
        out = {}
        for i, (name, conf) in enumerate(confs.items()):
            out[name] = start_chain_milter(tmp_path, name, conf, unix=bool(i % 2))
            started.append(out[name])
        return out
    yield start
    for m in started:
        stop(m)


def stop(m):
    """libmilter takes seconds to stop on SIGTERM: these test milters keep no state."""
    if m.proc.poll() is None:
        m.proc.kill()
    m.proc.wait(5)


def make_chain(filters, **kw):
    """filters: [(name, socket spec, F= letters)] -> MilterChain via a cf's X lines."""
    text = "V10/Berkeley\n" + "".join(
        "X%s, S=%s, F=%s, T=C:2s;S:5s;R:5s;E:10s\n" % f for f in filters)
    text += "O InputMailFilters=%s\n" % ", ".join(f[0] for f in filters)
    cfg = mconf.load_milters(cfmod.parse_text(text, "test.cf"))
    assert cfg.errors == []
    kw.setdefault("hostname", "mx.example.test")
    return mch.MilterChain.from_config(cfg, **kw)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def session(chain, rcpts=("<b@example.test>",), sender="<a@example.test>"):
    """connect, helo, mail, rcpts, data; returns the verdicts."""
    out = [await chain.connect("client.example", mc.SMFIA_INET, 4242, "127.0.0.1"),
           await chain.helo("client.example"), await chain.mail([sender])]
    for r in rcpts:
        out.append(await chain.rcpt([r]))
    out.append(await chain.data())
    return out


def run_session(chain, **kw):
    """session() and quit: the verdicts."""
    async def go():
        try:
            return await session(chain, **kw)
        finally:
            await chain.quit()
    return run(go())


def run_message(chain, body=BODY, **kw):
    """session(), one end_of_message() with HEADERS and `body`, quit: (verdicts, EomResult)."""
    async def go():
        try:
            verdicts = await session(chain, **kw)
            return verdicts, await chain.end_of_message(HEADERS, body)
        finally:
            await chain.quit()
    return run(go())


def down_spec():
    return "inet:%d@127.0.0.1" % free_port()      # nothing listens there


# ---------------------------------------------------------------- chains and actions

def test_chain_of_three_each_sees_the_earlier_changes(milters):
    ms = milters(
        first={"eom": [["chgheader", "Subject", 1, "changed by first"],
                       ["addheader", "X-First", "yes"]]},
        second={"eom": [["echo", "X-Second-Saw"], ["chgheader", "X-Remove", 2, ""],
                        ["replacebody", "second body\r\n"]]},
        third={"eom": [["insheader", 0, "X-Third", "at top"],
                       ["replacebody", "third body\r\nlast line\r\n"]]})
    chain = make_chain([(n, ms[n].spec, "") for n in ("first", "second", "third")])
    verdicts, res = run_message(chain)
    assert [v.action for v in verdicts] == [mch.CONTINUE] * 5
    assert res.verdict.action == mch.ACCEPT and res.verdict.proceeds, chain.log_lines
    msg = res.message
    # the second saw the first's header change and addition
    eom2 = ms["second"].events("eom")[0]
    assert ["Subject", "changed by first"] in eom2["headers"]
    assert ["X-First", "yes"] in eom2["headers"]
    assert eom2["body"] == "line one\r\nline two\r\n"
    # the third saw the second's deletion and body
    eom3 = ms["third"].events("eom")[0]
    assert [h for h in eom3["headers"] if h[0] == "X-Remove"] == [["X-Remove", "one"]]
    assert eom3["body"] == "second body\r\n"
    assert msg.headers == [["X-Third", " at top"], ["From", " a@example.test"],
                           ["Subject", " changed by first"], ["X-Remove", " one"],
                           ["X-First", " yes"], ["X-Second-Saw", " changed by first"]]
    assert msg.body == b"third body\nlast line\n"                 # the last replacement, LF
    assert msg.changed == {"headers", "body"}
    assert msg.quarantine is None


def test_envelope_actions_and_quarantine(milters):
    ms = milters(
        one={"eom": [["delrcpt", "<old@example.test>"],
                     ["addrcpt_par", "<new@example.test>", "NOTIFY=NEVER ORCPT=rfc822;x@y"]]},
        two={"eom": [["chgfrom", "<bounce@example.test>", "SIZE=100 BODY=8BITMIME"],
                     ["addrcpt", "<plain@example.test>"], ["quarantine", "held for review"]]})
    chain = make_chain([("one", ms["one"].spec, "R"), ("two", ms["two"].spec, "T")])

    async def go():
        await session(chain, rcpts=("<Old@Example.TEST>", "<keep@example.test>"))
        assert [r.address for r in chain.recipients] == ["Old@Example.TEST", "keep@example.test"]
        res = await chain.end_of_message(HEADERS, BODY)
        await chain.quit()
        return res
    res = run(go())
    msg = res.message
    assert res.verdict.action == mch.ACCEPT
    assert msg.recipients == [mch.Recipient("keep@example.test"),
                              mch.Recipient("new@example.test",
                                            ("NOTIFY=NEVER", "ORCPT=rfc822;x@y")),
                              mch.Recipient("plain@example.test")]
    assert (msg.sender, msg.sender_args) == ("bounce@example.test", ("SIZE=100", "BODY=8BITMIME"))
    assert res.quarantine == msg.quarantine == "held for review"
    assert msg.changed == {"recipients", "sender"}
    assert msg.headers == [list(h) for h in HEADERS] and msg.body == BODY


def test_two_messages_in_one_session(milters):
    ms = milters(tagger={"eom": [["tagbody", "tagged\r\n"]]})
    chain = make_chain([("tagger", ms["tagger"].spec, "")])

    async def go():
        await session(chain)
        first = await chain.end_of_message(HEADERS, b"first\n")
        await chain.mail(["<a@example.test>"])
        await chain.rcpt(["<c@example.test>"])
        await chain.abort()                                   # RSET
        await chain.mail(["<>", "BODY=7BIT"])
        await chain.rcpt(["<d@example.test>"])
        await chain.data()
        second = await chain.end_of_message(HEADERS, b"second\r\n")
        await chain.quit()
        return first, second
    first, second = run(go())
    assert first.message.body == b"first\ntagged\n"
    assert second.message.body == b"second\ntagged\n"
    assert (second.message.sender, second.message.sender_args) == ("", ("BODY=7BIT",))
    assert second.message.recipients == [mch.Recipient("d@example.test")]
    assert len(ms["tagger"].events("abort")) >= 1
    assert len(ms["tagger"].events("connect")) == 1          # one connection for the session


def test_body_from_a_file(milters, tmp_path):
    ms = milters(r={"eom": [["echo", "X-Echo"]]})
    path = tmp_path / "df"
    path.write_bytes(b"from a file\n")
    chain = make_chain([("r", ms["r"].spec, "")])
    _, res = run_message(chain, body=str(path))
    assert ms["r"].events("eom")[0]["body"] == "from a file\r\n"
    assert res.message.body == b"from a file\n"
    assert res.message.header_values("X-Echo") == [" hello"]


# ---------------------------------------------------------------- verdicts

def test_first_decider_wins_and_later_ones_are_not_asked(milters):
    ms = milters(
        a={"rcpt": {"bad": "reply:553:5.1.3:no such user here"}},
        b={"rcpt": {"bad": "reject", "busy": "tempfail", "gone": "discard"}})
    chain = make_chain([("a", ms["a"].spec, ""), ("b", ms["b"].spec, "")])

    async def go():
        await chain.connect("c", mc.SMFIA_INET, 1, "127.0.0.1")
        await chain.mail(["<s@example.test>"])
        bad = await chain.rcpt(["<bad@example.test>"])
        busy = await chain.rcpt(["<busy@example.test>"])
        ok = await chain.rcpt(["<ok@example.test>"])
        recorded = list(chain.recipients)
        gone = await chain.rcpt(["<gone@example.test>"])
        after = await chain.rcpt(["<ok2@example.test>"])
        eom = await chain.end_of_message(HEADERS, BODY)
        await chain.quit()
        return bad, busy, ok, recorded, gone, after, eom
    bad, busy, ok, recorded, gone, after, eom = run(go())
    assert (bad.action, bad.reply, bad.milter) == (mch.REJECT, "553 5.1.3 no such user here", "a")
    assert bad.lines() == [("553", "5.1.3 no such user here")]
    assert (busy.action, busy.reply, busy.milter) == (mch.TEMPFAIL, mch.MSG_TEMPFAIL, "b")
    assert ok.action == mch.CONTINUE
    assert recorded == [mch.Recipient("ok@example.test")]
    assert (gone.action, gone.milter) == (mch.DISCARD, "b")
    assert after.action == mch.DISCARD and eom.verdict.action == mch.DISCARD   # sticks
    rcpts_b = [e["rcpt"] for e in ms["b"].events("rcpt")]
    assert "<bad@example.test>" not in rcpts_b and "<busy@example.test>" in rcpts_b
    assert "<ok2@example.test>" not in rcpts_b
    assert ms["a"].events("eom", wait=0.3) == [] and ms["b"].events("eom", wait=0.3) == []


def test_accept_takes_one_filter_out_for_the_message(milters):
    ms = milters(a={"mail": "accept"}, b={"eom": [["addheader", "X-B", "1"]]})
    chain = make_chain([("a", ms["a"].spec, ""), ("b", ms["b"].spec, "")])
    v, res = run_message(chain)
    assert v[2].action == mch.CONTINUE                     # b still filters this message
    assert ms["a"].events("rcpt", wait=0.3) == [] and ms["a"].events("eom", wait=0.3) == []
    assert len(ms["b"].events("eom")) == 1
    assert res.message.header_values("X-B") == [" 1"]


def test_accept_by_all_and_eom_reject_stops_the_chain(milters):
    ms = milters(a={"mail": "accept"}, b={"mail": "accept"})
    chain = make_chain([("a", ms["a"].spec, ""), ("b", ms["b"].spec, "")])
    v = run_session(chain)
    assert v[2].action == mch.ACCEPT and v[2].proceeds     # nobody left for this message

    ms = milters(c={"eom": [["addheader", "X-C", "1"]]}, d={"eom_result": "reject"},
                 e={"eom": [["addheader", "X-E", "1"]]})
    chain = make_chain([(n, ms[n].spec, "") for n in "cde"])
    _, res = run_message(chain)
    assert (res.verdict.action, res.verdict.reply, res.verdict.milter) == (
        mch.REJECT, "554 5.7.1 Command rejected", "d")
    assert ms["e"].events("eom", wait=0.3) == []


@pytest.mark.parametrize("answer, action, reply", [
    ("reject", mch.REJECT, "550 5.0.0 Command rejected"),
    ("tempfail", mch.TEMPFAIL, "451 4.3.2 Please try again later"),
    ("reply:450:4.7.1:later", mch.TEMPFAIL, "451 4.3.2 Please try again later"),
    ("reply:421:4.7.0:bye", mch.SHUTDOWN, "421 4.7.0 mx.example.test closing connection"),
    ("reply:554:5.7.1:go away", mch.REJECT, "550 5.0.0 Command rejected"),
])
def test_connect_verdicts_stick_for_the_session(milters, answer, action, reply):
    ms = milters(a={"connect": answer}, b={})
    chain = make_chain([("a", ms["a"].spec, ""), ("b", ms["b"].spec, "")])
    v = run_session(chain)
    assert (v[0].action, v[0].reply, v[0].milter) == (action, reply, "a")
    assert all(x is v[0] for x in v[1:])                    # helo, mail, rcpt, data
    assert ms["b"].events("connect", wait=0.3) == []
    assert ms["a"].events("helo", wait=0.3) == []


def test_helo_reply_code_and_mail_reply(milters):
    ms = milters(a={"helo": "reply:550:5.7.1:no such host"})
    chain = make_chain([("a", ms["a"].spec, "")])
    v = run_session(chain)
    assert (v[1].action, v[1].reply) == (mch.REJECT, "550 5.7.1 no such host")
    ms = milters(b={"mail": "reject"}, c={"mail": "reply:421:4.3.2:going down"})
    chain = make_chain([("b", ms["b"].spec, "")])
    v = run_session(chain)
    assert (v[2].action, v[2].reply) == (mch.REJECT, "550 5.7.1 Command rejected")
    chain = make_chain([("c", ms["c"].spec, "")])
    v = run_session(chain)
    assert (v[2].action, v[2].reply) == (mch.SHUTDOWN, "421 4.3.2 going down")


# ---------------------------------------------------------------- failures (F=)

@pytest.mark.parametrize("flags, action, reply", [
    ("R", mch.REJECT, "550 5.0.0 Command rejected"),
    ("T", mch.TEMPFAIL, "451 4.3.2 Please try again later"),
    ("4", mch.SHUTDOWN, "421 4.7.0 mx.example.test closing connection"),
])
def test_a_down_filter_with_f_flag(flags, action, reply):
    chain = make_chain([("down", down_spec(), flags)])
    v = run_session(chain)
    assert (v[0].action, v[0].reply, v[0].milter, v[0].failed) == (action, reply, "down", True)
    assert chain.log_lines[0].startswith("milter down: connect to inet:")
    assert chain.log_lines[0].endswith("to error state (%s)" % action)
    assert chain.log_lines[1] == "Milter: connect: %s by down, reply=%s" % (action, reply)
    assert len(chain.log_lines) == 2


def test_a_down_filter_without_flags_is_left_out(milters):
    ms = milters(up={"eom": [["addheader", "X-Up", "1"]]})
    chain = make_chain([("down", down_spec(), ""), ("up", ms["up"].spec, "")])
    v, res = run_message(chain)
    assert [x.action for x in v] == [mch.CONTINUE] * 5
    assert res.verdict.action == mch.ACCEPT and res.message.header_values("X-Up") == [" 1"]
    assert len(chain.log_lines) == 1                       # logged once
    assert "carrying on without it" in chain.log_lines[0]


@pytest.mark.parametrize("flags, action", [("T", mch.TEMPFAIL), ("", mch.CONTINUE)])
def test_a_filter_that_dies_mid_session(tmp_path, milters, flags, action):
    die = start_milter(tmp_path, "die")                    # exits inside envrcpt
    ms = milters(after={"eom": [["addheader", "X-After", "1"]]})
    try:
        chain = make_chain([("die", die.spec, flags), ("after", ms["after"].spec, "")])
        v, res = run_message(chain)
    finally:
        stop(die)
    assert v[2].action == mch.CONTINUE
    assert v[3].action == action and v[3].failed == (action != mch.CONTINUE)
    if action == mch.TEMPFAIL:
        assert v[3].reply == mch.MSG_TEMPFAIL and v[4].action == mch.TEMPFAIL   # every command
        assert res.verdict.action == mch.TEMPFAIL and res.message.changed == set()
        assert ms["after"].events("eom", wait=0.3) == []
    else:
        assert res.verdict.action == mch.ACCEPT
        assert res.message.header_values("X-After") == [" 1"]
    assert any(line.startswith("milter die: ") for line in chain.log_lines), chain.log_lines


# ---------------------------------------------------------------- the Message alone

def test_message_header_semantics():
    msg = mch.Message("<a@b>", (), ["<x@y>"], [("Received", " r1"), ("X-A", " 1"),
                                               ("x-a", " 2"), ("Subject", " s")], b"b\r\n")
    assert msg.body == b"b\n" and msg.recipients == [mch.Recipient("x@y")]
    msg.apply([mc.ChgHeader(2, "X-A", "two"), mc.ChgHeader(5, "X-A", "added"),
               mc.ChgHeader(1, "Missing", ""), mc.InsHeader(99, "X-End", "e"),
               mc.ChgHeader(0, "subject", "")])
    assert msg.headers == [["Received", " r1"], ["X-A", " 1"], ["x-a", " two"],
                           ["X-A", " added"], ["X-End", " e"]]
    msg.apply([mc.AddHeader("X-Lead", " kept")], leadspc=True)
    assert msg.headers[-1] == ["X-Lead", " kept"]

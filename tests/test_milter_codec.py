"""The sans-I/O milter codec (pysendmail.proto.milter_codec): bytes checked against
libmilter's mfdef.h values, every response decoded, partial feeds, bad input, negotiation."""
import pytest

from pysendmail.proto import milter_codec as mc


def test_header_values():
    assert (mc.SMFIF_ADDHDRS, mc.SMFIF_CHGBODY, mc.SMFIF_SETSYMLIST) == (1, 2, 0x100)
    assert mc.SMFI_CURR_ACTS == 0x1FF and mc.SMFI_CURR_PROT == 0x1FFFFF
    assert (mc.SMFIP_NR_HDR, mc.SMFIP_SKIP, mc.SMFIP_RCPT_REJ) == (0x80, 0x400, 0x800)
    assert (mc.SMFIP_NR_BODY, mc.SMFIP_HDR_LEADSPC) == (0x80000, 0x100000)
    assert (mc.SMFIP_MDS_256K, mc.SMFIP_MDS_1M) == (0x10000000, 0x20000000)
    assert mc.SMFIM_EOM == 5 and mc.SMFIM_EOH == 6


def test_exact_bytes():
    assert mc.offer().encode() == b"\0\0\0\x0dO\0\0\0\x06\0\0\x01\xff\0\x1f\xff\xff"
    assert mc.offer(data_size=mc.MDS_1M).encode()[-4:] == b"\x20\x1f\xff\xff"
    assert mc.Connect("h", mc.SMFIA_INET, 25, "1.2.3.4").encode() == \
        b"\0\0\0\x0eCh\x004\x00\x191.2.3.4\0"
    assert mc.Connect("h").encode() == b"\0\0\0\x04Ch\0U"
    assert mc.Macro(b"C", [("j", "x")]).encode() == b"\0\0\0\x06DCj\0x\0"
    assert mc.Abort().encode() == b"\0\0\0\x01A"
    assert mc.Quit().encode() == b"\0\0\0\x01Q" and mc.QuitNewConnection().encode()[4:] == b"K"
    assert mc.Header("Subject", "hi").encode() == b"\0\0\0\x0cLSubject\0hi\0"


COMMANDS = [mc.offer(), mc.Connect("host", mc.SMFIA_INET6, 587, "::1"),
            mc.Connect("local", mc.SMFIA_UNIX, 0, "/run/sock"), mc.Connect("[1.2.3.4]"),
            mc.Helo("client.example"), mc.Mail(("<a@b>", "SIZE=1", "BODY=8BITMIME")),
            mc.Rcpt(("<c@d>", "NOTIFY=NEVER")), mc.Macro(b"M", [("i", "Q1"), ("{x}", "")]),
            mc.Data(), mc.Header("Received", "from x\r\n\tby y"), mc.EndOfHeaders(),
            mc.Body(b"line\r\n" * 3), mc.EndOfMessage(), mc.Abort(), mc.Quit(),
            mc.QuitNewConnection(), mc.Unknown("XYZZY plugh")]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: type(c).__name__)
def test_command_round_trip(cmd):
    got = mc.command_reader().feed(cmd.encode())
    assert got == [cmd]


def test_nul_inside_a_string_is_refused():
    with pytest.raises(ValueError):
        mc.Helo("a\0b").encode()


RESPONSES = [
    (b"a", b"", mc.Accept()), (b"c", b"", mc.Continue()), (b"d", b"", mc.Discard()),
    (b"r", b"", mc.Reject()), (b"t", b"", mc.Tempfail()), (b"s", b"", mc.Skip()),
    (b"p", b"", mc.Progress()), (b"f", b"", mc.ConnFail()), (b"4", b"", mc.Shutdown()),
    (b"y", b"550 5.7.1 no\0", mc.ReplyCode("550 5.7.1 no")),
    (b"q", b"why\0", mc.Quarantine("why")),
    (b"h", b"X-A\0v\0", mc.AddHeader("X-A", "v")),
    (b"i", b"\0\0\0\x02X-I\0v\0", mc.InsHeader(2, "X-I", "v")),
    (b"m", b"\0\0\0\x01Subject\0new\0", mc.ChgHeader(1, "Subject", "new")),
    (b"m", b"\0\0\0\x02X-D\0\0", mc.ChgHeader(2, "X-D", "")),
    (b"+", b"<n@x>\0", mc.AddRcpt("<n@x>")),
    (b"2", b"<n@x>\0NOTIFY=NEVER ORCPT=rfc822;a@b\0",
     mc.AddRcptPar("<n@x>", ("NOTIFY=NEVER", "ORCPT=rfc822;a@b"))),
    (b"-", b"<o@x>\0", mc.DelRcpt("<o@x>")),
    (b"e", b"<s@x>\0SIZE=1\0", mc.ChgFrom("<s@x>", ("SIZE=1",))),
    (b"e", b"<s@x>\0", mc.ChgFrom("<s@x>")),
    (b"b", b"new\r\n", mc.ReplBody(b"new\r\n")),
    (b"O", b"\0\0\0\x06\0\0\0\x01\0\0\0\x00", mc.OptNeg(6, 1, 0, {})),
]


@pytest.mark.parametrize("code,data,want", RESPONSES, ids=lambda x: repr(x)[:20])
def test_decode_every_response(code, data, want):
    assert mc.ResponseReader().feed(mc.packet(code, data)) == [want]
    assert want.MODIFICATION == (code in b"hm+-2eib" and code != b"")


def test_chgheader_delete_and_reply_lines():
    assert mc.ChgHeader(2, "X", "").delete and not mc.ChgHeader(1, "X", "v").delete
    r = mc.ReplyCode("451-4.7.1 one\r\n451-4.7.1 100%% two\r\n451 4.7.1 three")
    assert r.valid and r.code == 451
    assert r.lines() == ["4.7.1 one", "4.7.1 100% two", "4.7.1 three"]
    for bad in ("250 ok", "55", "5x0 no", "550 100% bad", ""):
        assert not mc.ReplyCode(bad).valid and mc.ReplyCode(bad).code == 0


def test_every_split_point():
    stream = b"".join(mc.packet(c, d) for c, d, _ in RESPONSES)
    want = [w for _, _, w in RESPONSES]
    for cut in range(len(stream) + 1):
        r = mc.ResponseReader()
        got = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert got == want, cut
        assert not r.pending
    r = mc.ResponseReader()                                  # one byte at a time
    assert [x for b in stream for x in r.feed(bytes([b]))] == want


@pytest.mark.parametrize("raw,why", [
    (b"\0\0\0\0", "out of range"), (b"\x7f\xff\xff\xff", "out of range"),
    (b"\0\0\0\x01Z", "unknown response"), (b"\0\0\0\x04hX-A", "NUL"),
    (b"\0\0\0\x03i\0\0", "too short"), (b"\0\0\0\x03yab", "NUL"),
    (b"\0\0\0\x02+\0", "empty"), (b"\0\0\0\x01e", "malformed"),
    (b"\0\0\0\x05O\0\0\0\x06", "too short"),
    (b"\0\0\0\x11O\0\0\0\x06\0\0\0\0\0\0\0\0\0\0\0\x09x\0", "symbol list"),
])
def test_garbage_is_a_protocol_error(raw, why):
    r = mc.ResponseReader()
    got = r.feed(raw + mc.packet(b"a"))
    assert len(got) == 1 and isinstance(got[0], mc.ProtocolError) and not got[0]
    assert why in got[0].why
    assert r.feed(mc.packet(b"a")) == []                       # broken for good


def test_oversized_length_fails_before_the_data():
    r = mc.ResponseReader(max_packet=100)
    got = r.feed(b"\0\0\0\x65")
    assert len(got) == 1 and "out of range" in got[0].why
    assert mc.ResponseReader(max_packet=100).feed(mc.packet(b"b", b"x" * 99)) == \
        [mc.ReplBody(b"x" * 99)]


def test_negotiation_intersection_and_symlist():
    ours = mc.offer()
    reply = mc.OptNeg(6, mc.SMFIF_ADDHDRS | mc.SMFIF_SETSYMLIST,
                      mc.SMFIP_NOBODY | mc.SMFIP_NR_HDR | mc.SMFIP_SKIP,
                      {mc.SMFIM_ENVFROM: ("{mail_addr}", "i"), mc.SMFIM_EOM: ("{msg_id}",)})
    got = mc.negotiate(ours, mc.ResponseReader().feed(reply.encode())[0])
    assert isinstance(got, mc.Negotiated)
    assert got.actions == mc.SMFIF_ADDHDRS | mc.SMFIF_SETSYMLIST
    assert got.macros == {2: ("{mail_addr}", "i"), 5: ("{msg_id}",)}
    assert got.skips(b"B") and not got.skips(b"L") and got.no_reply(b"L")
    assert not got.no_reply(b"B") and not got.skips(b"E") and got.data_size == mc.MDS_64K


def test_negotiation_refusals_and_old_versions():
    ours = mc.offer(actions=mc.SMFIF_ADDHDRS, protocol=mc.SMFIP_NOBODY)
    assert not mc.negotiate(ours, mc.OptNeg(6, mc.SMFIF_CHGBODY, 0))
    assert not mc.negotiate(ours, mc.OptNeg(6, 0, mc.SMFIP_NR_HDR))
    assert not mc.negotiate(ours, mc.OptNeg(7, 0, 0))
    assert not mc.negotiate(ours, mc.OptNeg(1, 0, 0))
    assert "instead of" in mc.negotiate(ours, mc.Accept()).why
    old = mc.negotiate(ours, mc.OptNeg(2, 0, 0))
    assert old.skips(b"U") and old.skips(b"T")
    # symbol lists are dropped when we did not offer SETSYMLIST
    assert mc.negotiate(ours, mc.OptNeg(6, 0, 0, {0: ("j",)})).macros == {}


def test_negotiation_data_size():
    big = mc.offer(data_size=mc.MDS_1M)
    assert mc.negotiate(big, mc.OptNeg(6, 0, mc.SMFIP_MDS_1M)).data_size == mc.MDS_1M
    assert mc.negotiate(big, mc.OptNeg(6, 0, mc.SMFIP_MDS_256K)).data_size == mc.MDS_256K
    assert mc.negotiate(big, mc.OptNeg(6, 0, 0)).data_size == mc.MDS_64K
    small = mc.offer()
    assert mc.negotiate(small, mc.OptNeg(6, 0, mc.SMFIP_MDS_1M)).data_size == mc.MDS_64K
    assert mc.negotiate(small, mc.OptNeg(6, 0, mc.SMFIP_MDS_1M)).protocol == 0

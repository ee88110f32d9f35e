"""Header address rewriting at delivery (Sendmail's putheader()/commaize()): golden outputs
for each field kind, splitting, groups, folding, bytes that are not UTF-8, and properties."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pysendmail.addr import parse
from pysendmail.config.crackaddr import crackaddr
from pysendmail.delivery.header_rewrite import (
    FIELD_KINDS, Group, address_elements, field_kind, omax_for, rewrite_field,
    rewrite_headers, split_address_list)


def qualify(element, sender):
    """A remotename() in small: crackaddr's template around the address, unqualified
    addresses get the sender's or the recipient's domain."""
    template = crackaddr(element)
    bare = parse(element).bare
    if "@" not in bare:
        bare += "@sender.example" if sender else "@rcpt.example"
    return template.replace("$g", bare)


def identity(element, sender):
    return element


def one(field, rewrite=qualify, **kw):
    return rewrite_headers([field], rewrite, **kw)[0]


# --- the field table --------------------------------------------------------------------

SENDER_FIELDS = ["From", "Sender", "Reply-To", "Resent-From", "Resent-Sender",
                 "Resent-Reply-To", "Errors-To", "Disposition-Notification-To"]
RECIPIENT_FIELDS = ["To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc", "Apparently-To"]


@pytest.mark.parametrize("name", SENDER_FIELDS)
def test_sender_fields_rewritten_as_sender(name):
    field = ("%s: Joe <joe>, ann" % name).encode()
    assert one(field) == ("%s: Joe <joe@sender.example>, ann@sender.example" % name).encode()


@pytest.mark.parametrize("name", RECIPIENT_FIELDS)
def test_recipient_fields_rewritten_as_recipient(name):
    field = ("%s: Joe <joe>, ann" % name).encode()
    assert one(field) == ("%s: Joe <joe@rcpt.example>, ann@rcpt.example" % name).encode()


def test_table_is_sendmails():
    assert {k for k, v in FIELD_KINDS.items() if v == "from"} == {n.lower() for n in SENDER_FIELDS}
    assert {k for k, v in FIELD_KINDS.items() if v == "rcpt"} == {
        n.lower() for n in RECIPIENT_FIELDS}


@pytest.mark.parametrize("name", ["Subject", "Return-Receipt-To", "Delivery-Receipt-To",
                                  "Return-Path", "Full-Name", "Message-Id", "Received",
                                  "X-To", "Comments"])
def test_other_fields_are_the_same_objects(name):
    headers = [("%s: joe, ann" % name).encode(), b"no colon here", b": empty name",
               b"\xff\xfe: x"]
    seen = []
    out = rewrite_headers(headers, lambda e, s: seen.append(e) or "X")
    assert len(out) == len(headers)
    assert all(a is b for a, b in zip(out, headers))
    assert seen == []


def test_field_name_case_and_spacing_kept():
    assert one(b"tO: joe") == b"tO: joe@rcpt.example"
    assert one(b"CC : joe") == b"CC: joe@rcpt.example"
    assert field_kind("REPLY-TO") == "from"
    assert field_kind("X-Foo") is None


def test_extra_flags_from_cf():
    headers = [b"X-Envelope-To: joe", b"X-Sender: ann", b"To: bob"]
    out = rewrite_headers(headers, qualify, {"x-envelope-to": "rcpt", "x-sender": "from",
                                             "to": None})
    assert out[0] == b"X-Envelope-To: joe@rcpt.example"
    assert out[1] == b"X-Sender: ann@sender.example"
    assert out[2] is headers[2]


def test_unchanged_address_field_returns_same_object():
    field = b"To: joe@x, ann@y"
    assert one(field, identity) is field


# --- splitting ---------------------------------------------------------------------------

def test_quoted_comma_is_not_a_separator():
    assert one(b'To: "Doe, John" <john>, ann') == \
        b'To: "Doe, John" <john@rcpt.example>, ann@rcpt.example'


def test_comment_with_comma_is_not_a_separator():
    assert one(b"Cc: joe (Bloggs, Joe), ann (A, (nested, too))") == \
        b"Cc: joe@rcpt.example (Bloggs, Joe), ann@rcpt.example (A, (nested, too))"


def test_comma_in_angle_brackets_route_is_not_a_separator():
    assert address_elements("Joe <@a,@b:joe@c>, ann") == ["Joe <@a,@b:joe@c>", "ann"]


def test_escaped_comma_and_quote():
    assert address_elements(r'a\,b, "x\",y" <z@w>') == [r"a\,b", r'"x\",y" <z@w>']


def test_elements_passed_stripped_and_unfolded():
    seen = []
    one(b"To:  joe@x ,\n\t Joe\n\t Bloggs <jb@x> ,, ,ann@y",
        lambda e, s: seen.append((e, s)) or e)
    assert seen == [("joe@x", False), ("Joe\t Bloggs <jb@x>", False), ("ann@y", False)]


def test_empty_elements_dropped_and_spacing_normalised():
    assert one(b"To: ,joe@x,,  ,ann@y,", identity) == b"To: joe@x, ann@y"


def test_rewrite_to_empty_drops_the_element():
    assert one(b"To: joe@x, drop@x, ann@y", lambda e, s: "" if e.startswith("drop") else e) \
        == b"To: joe@x, ann@y"


def test_newline_in_rewrite_result_becomes_space():
    assert one(b"To: joe@x", lambda e, s: "evil@x\nBcc: victim@y") == \
        b"To: evil@x Bcc: victim@y"


@pytest.mark.parametrize("field", [b'To: "unclosed <a@x>, b@y', b"To: a@x (unclosed, b@y",
                                   b"To: <a@x, b@y", b"To: a@x>, b@y", b"To: a@x), b@y",
                                   b"To: a@x, b@y\\"])
def test_unparseable_value_left_unchanged(field):
    calls = []
    assert one(field, lambda e, s: calls.append(e) or "X") is field
    assert calls == []


def test_leading_white_space_kept_as_spaces():
    assert one(b"To:joe") == b"To:joe@rcpt.example"
    assert one(b"To:\tjoe") == b"To: joe@rcpt.example"
    assert one(b"To:   joe") == b"To:   joe@rcpt.example"


def test_empty_to_field():
    assert one(b"To:") == b"To:"
    assert one(b"To: ") == b"To: "
    assert one(b"To: , ,") == b"To: "


# --- groups ------------------------------------------------------------------------------

def test_undisclosed_recipients_unchanged():
    field = b"To: undisclosed-recipients:;"
    seen = []
    assert one(field, lambda e, s: seen.append(e) or e) is field
    assert seen == []


def test_group_members_rewritten_phrase_kept():
    seen = []

    def rewrite(element, sender):
        seen.append(element)
        return qualify(element, sender)
    assert one(b"To: Friends: joe, Ann <ann>;, bob", rewrite) == \
        b"To: Friends: joe@rcpt.example, Ann <ann@rcpt.example>;, bob@rcpt.example"
    assert seen == ["joe", "Ann <ann>", "bob"]


def test_group_emptied_by_rewrite_and_group_tail():
    assert one(b"To: g: a@x, b@x; (the gang), c@y", lambda e, s: "" if "@x" in e else e) == \
        b"To: g:; (the gang), c@y"


def test_quoted_group_phrase_and_group_split():
    assert split_address_list('"My, Friends": a@x, b@y;') == \
        [Group('"My, Friends"', ["a@x", "b@y"])]


def test_colon_without_group_is_an_ordinary_character():
    # a ':' never closed by ';' is no group (Sendmail's prescan sees none either)
    assert address_elements("host::user, x: y@z") == ["host::user", "x: y@z"]
    assert address_elements("joe@x: y, z") == ["joe@x: y", "z"]
    assert split_address_list("a: b, c") == ["a: b", "c"]
    assert one(b"To: a: b, c", identity) == b"To: a: b, c"


def test_semicolon_outside_group_is_ordinary():
    assert address_elements("a@x; b@y, c@z") == ["a@x; b@y", "c@z"]


def test_oldstyle_recipients_split_at_white_space():
    assert one(b"To: joe ann @ x bob", identity, oldstyle=True) == b"To: joe, ann @ x, bob"
    # sender fields are never old style (putheader)
    field = b"From: joe ann"
    assert one(field, identity, oldstyle=True) is field
    assert address_elements("joe ann") == ["joe ann"]
    assert split_address_list("joe ann", oldstyle=True) == ["joe", "ann"]


# --- folding -----------------------------------------------------------------------------

def long_list(n):
    return b"To: " + b", ".join(b"user%d@example.com" % i for i in range(n))


def test_long_list_golden():
    assert one(long_list(12), identity) == (
        b"To: user0@example.com, user1@example.com, user2@example.com, user3@example.com,\n"
        b"        user4@example.com, user5@example.com, user6@example.com,\n"
        b"        user7@example.com, user8@example.com, user9@example.com,\n"
        b"        user10@example.com, user11@example.com")


def test_long_list_lines_bounded():
    out = one(long_list(200), identity)
    lines = out.split(b"\n")
    assert len(lines) > 40
    # commaize: a line's text ends by column 78, its fold comma may take column 79
    assert all(len(line.rstrip(b",")) <= 78 for line in lines)
    assert all(line.startswith(b"        ") for line in lines[1:])
    assert address_elements(out.decode()[3:]) == ["user%d@example.com" % i for i in range(200)]


def test_fold_boundary_exactly_78():
    # "To: " is 4 columns; a 74-byte first element ends at 78: the next one folds.
    first = "a" * 64 + "@example.c"            # 74 bytes
    out = one(("To: %s, b@x" % first).encode(), identity)
    assert out == ("To: %s,\n        b@x" % first).encode()
    first = "a" * 62 + "@example.c"            # 72: ", b@x" would end at 81 > 78
    out = one(("To: %s, b@x" % first).encode(), identity)
    assert out == ("To: %s,\n        b@x" % first).encode()
    first = "a" * 59 + "@example.c"            # 69: ", b@x" ends at 78, stays
    out = one(("To: %s, b@x" % first).encode(), identity)
    assert out == ("To: %s, b@x" % first).encode()


def test_overlong_element_never_folds_first_and_stands_alone():
    big = "x" * 100 + "@example.com"
    out = one(("To: %s, %s, a@b" % (big, big)).encode(), identity).decode()
    assert out == "To: %s,\n        %s,\n        a@b" % (big, big)


def test_mailer_line_limit():
    assert omax_for(None) == 78 and omax_for(990) == 78 and omax_for(0) == 78
    assert omax_for(40) == 38
    out = one(long_list(4), identity, line_limit=40)
    assert out == (b"To: user0@example.com,\n        user1@example.com,\n"
                   b"        user2@example.com,\n        user3@example.com")


def test_group_members_fold_across_lines():
    members = ", ".join("member%d@example.org" % i for i in range(6))
    out = one(("Cc: The Team: %s;" % members).encode(), identity).decode()
    assert out.splitlines()[0].startswith("Cc: The Team: member0@example.org, ")
    assert out.endswith("member5@example.org;")
    assert split_address_list(out[3:]) == [
        Group("The Team", ["member%d@example.org" % i for i in range(6)])]


# --- bytes that are not UTF-8 -------------------------------------------------------------

def test_non_utf8_phrase_survives():
    field = b"From: J\xf6rg \xe9t\xe9 <joerg>, \xc3\xa9mile <em>"
    assert one(field) == \
        b"From: J\xf6rg \xe9t\xe9 <joerg@sender.example>, \xc3\xa9mile <em@sender.example>"


def test_non_utf8_in_identity_is_same_bytes():
    field = b"To: \xff\xfe\x80 <a@x>, \x81@y"
    assert one(field, identity) is field


def test_eight_bit_seen_as_surrogates_by_rewrite():
    seen = []
    one(b"To: \xe9 <a@x>", lambda e, s: seen.append(e) or e)
    assert seen == ["\udce9 <a@x>"]


def test_direct_rewrite_field():
    assert rewrite_field(b"Reply-To: a", qualify, True) == b"Reply-To: a@sender.example"
    assert rewrite_field(b"no colon", qualify, True) == b"no colon"


# --- properties --------------------------------------------------------------------------

ADDRESS_CHARS = st.sampled_from(list('abc@.,:;<>()"\\ \t\n') + ["x y", "\xe9", "\udcff"])
address_text = st.lists(ADDRESS_CHARS, max_size=40).map("".join)


def flatten(items):
    return None if items is None else [
        (i.phrase, tuple(i.members), i.tail) if isinstance(i, Group) else i for i in items]


@settings(max_examples=600, deadline=None)
@given(address_text, st.booleans(), st.integers(min_value=0, max_value=120))
def test_identity_rewrite_keeps_elements(value, oldstyle, line_limit):
    field = ("To:" + value).encode("utf-8", "surrogateescape")
    out = one(field, identity, oldstyle=oldstyle, line_limit=line_limit)
    before = split_address_list(value, oldstyle)
    if before is None:
        assert out is field
        return
    text = out.decode("utf-8", "surrogateescape")
    assert text.startswith("To:")
    after = split_address_list(text[3:], oldstyle)
    assert flatten(after) == flatten(before)
    # every continuation line is folded white space: the field stays one field
    assert all(line[:1] in (" ", "\t") for line in text.split("\n")[1:])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([b"To:", b"From:", b"Cc :", b"Subject:"]))
def test_arbitrary_bytes_never_raise(raw, name):
    field = name + raw
    out = rewrite_headers([field], identity)
    assert len(out) == 1 and isinstance(out[0], bytes)
    assert rewrite_headers([field], lambda e, s: e.upper())[0].lower().startswith(
        name.rstrip(b" :").lower())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.from_regex(r"[a-z]{1,12}@[a-z]{1,10}\.example", fullmatch=True),
                min_size=1, max_size=30))
def test_simple_lists_fold_within_78(addresses):
    out = one(("To: " + ", ".join(addresses)).encode(), identity).decode()
    for line in out.split("\n"):
        assert len(line.rstrip(",")) <= 78
    assert address_elements(out[3:]) == addresses

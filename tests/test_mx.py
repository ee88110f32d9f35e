"""delivery/mx: where a remote delivery connects.

The ordering function is tested alone (seeded random.Random); resolve_destinations()
against a real DNS server on loopback (tests/dns_helpers.py), reached through the
private instance's etc/resolv.conf exactly as the delivery driver reaches it: the
resolver is config.canon's Dns over layout.resolv_confs.  No query leaves loopback
(LoopbackDns.apply asserts the resolver knows that server only).
"""
import random
import time

import pytest

from dns_helpers import dns_zone  # noqa: F401  (the fixture)
from pysendmail import layout
from pysendmail.delivery.mx import (MAX_ADDRESSES, MAX_MX, Destination, DestinationError,
                                    iter_destinations,
                                    literal_address, order_mx, resolve_destinations,
                                    resolver_context, split_host_field)
from pysendmail.errors import EX_CONFIG, EX_NOHOST, EX_TEMPFAIL, EX_UNAVAILABLE

OWN = {"mail.example.org", "mail"}
FAST = {"Timeout.resolver.retrans": "1s", "Timeout.resolver.retry": "1"}


# -- the ordering function ----------------------------------------------------------

def test_order_by_preference_and_normalised_names():
    records = [(20, "B.example.NET."), (10, "a.example.net."), (30, "c.example.net")]
    assert order_mx(records, rng=random.Random(1)) == [
        (10, "a.example.net"), (20, "b.example.net"), (30, "c.example.net")]


def test_equal_preferences_are_shuffled_reproducibly():
    records = [(10, "mx%d.example.net." % i) for i in range(8)] + [(5, "first.example.net")]
    orders = {tuple(order_mx(records, rng=random.Random(seed))) for seed in range(20)}
    assert len(orders) > 1                          # random among equals ...
    for order in orders:
        assert order[0] == (5, "first.example.net")   # ... never across preferences
        assert sorted(order[1:]) == sorted((10, "mx%d.example.net" % i) for i in range(8))
    assert order_mx(records, rng=random.Random(7)) == order_mx(records, rng=random.Random(7))


def test_duplicates_keep_their_best_preference():
    assert order_mx([(20, "a.example."), (10, "A.example"), (30, "b.example.")],
                    rng=random.Random(0)) == [(10, "a.example"), (30, "b.example")]


def test_mx_count_is_limited():
    records = [(i, "mx%d.example." % i) for i in range(MAX_MX + 50)]
    out = order_mx(records, rng=random.Random(0))
    assert len(out) == MAX_MX and out[0] == (0, "mx0.example")


def test_own_name_drops_equal_and_worse_preferences():
    records = [(10, "backup1.example.net"), (20, "mail.example.org."), (20, "peer.example.net"),
               (30, "worse.example.net"), (5, "best.example.net")]
    assert order_mx(records, OWN, random.Random(0)) == [
        (5, "best.example.net"), (10, "backup1.example.net")]


def test_best_mx_is_ourselves_mail_loops_back():
    records = [(10, "MAIL.example.org."), (20, "other.example.net")]
    with pytest.raises(DestinationError) as e:
        order_mx(records, OWN, random.Random(0), domain="example.org",
                 my_name="mail.example.org")
    assert e.value.status == EX_CONFIG and e.value.dsn == "5.3.5"
    assert not e.value.temporary
    assert e.value.message == "MX list for example.org points back to mail.example.org"


def test_null_mx_alone_and_among_others():
    with pytest.raises(DestinationError) as e:
        order_mx([(0, ".")], domain="example.com")
    assert (e.value.status, e.value.dsn) == (EX_UNAVAILABLE, "5.1.10")
    assert "Domain does not accept mail" in e.value.message
    assert order_mx([(0, "."), (10, "mx.example.com.")]) == [(10, "mx.example.com")]


def test_host_field_split_and_literals():
    assert split_host_field("a.example:[b.example]: [IPv6:2001:db8::1] :[192.0.2.1]") == [
        "a.example", "[b.example]", "[IPv6:2001:db8::1]", "[192.0.2.1]"]
    assert literal_address("[192.0.2.1]") == "192.0.2.1"
    assert literal_address("[IPv6:2001:DB8:0::1]") == "2001:db8::1"
    assert literal_address("[ipv6:::1]") == "::1"
    assert literal_address("[mail.example.com]") is None
    assert literal_address("[300.1.2.3]") is None
    assert literal_address("192.0.2.1") is None


# -- against the loopback server ----------------------------------------------------

@pytest.fixture
def ctx(dns_zone, tmp_path):  # noqa: F811
    """The resolver of a private instance whose etc/resolv.conf names the test server."""
    inst = layout.for_root(str(tmp_path))
    dns_zone.write_resolv_conf(inst.resolv_confs[0])
    context = resolver_context(FAST, inst.resolv_confs)
    dns_zone.apply(context.resolver())
    return context


def resolve(host, ctx, **kw):
    kw.setdefault("rng", random.Random(0))
    return resolve_destinations(host, ctx, **kw)


def test_mx_with_two_preferences(dns_zone, ctx):  # noqa: F811
    dns_zone.add("example.test", "MX", "20 mx2.example.test.", "10 mx1.example.test.")
    dns_zone.add("mx1.example.test", "A", "192.0.2.1")
    dns_zone.add("mx2.example.test", "A", "192.0.2.2", "192.0.2.3")
    out = resolve("example.test", ctx, port=2525)
    assert out[0] == Destination("mx1.example.test", ["192.0.2.1"], 2525, 10)
    assert (out[1].host, sorted(out[1].addresses), out[1].port, out[1].preference) == (
        "mx2.example.test", ["192.0.2.2", "192.0.2.3"], 2525, 20)
    assert len(out) == 2
    assert ("example.test.", "MX", "udp") in dns_zone.queries


def test_equal_preferences_both_orders_happen(dns_zone, ctx):  # noqa: F811
    dns_zone.add("example.test", "MX", "10 a.example.test.", "10 b.example.test.")
    dns_zone.add("a.example.test", "A", "192.0.2.1")
    dns_zone.add("b.example.test", "A", "192.0.2.2")
    seen = {tuple(d.host for d in resolve("example.test", ctx, rng=random.Random(s)))
            for s in range(12)}
    assert seen == {("a.example.test", "b.example.test"), ("b.example.test", "a.example.test")}


def test_implicit_mx_uses_the_domain_itself(dns_zone, ctx):  # noqa: F811
    dns_zone.add("plain.example.test", "A", "192.0.2.7")
    dns_zone.add("plain.example.test", "TXT", '"v=spf1 -all"')
    assert resolve("plain.example.test.", ctx) == [
        Destination("plain.example.test", ["192.0.2.7"], 25, None)]
    assert [q[:2] for q in dns_zone.queries] == [
        ("plain.example.test.", "MX"), ("plain.example.test.", "AAAA"),
        ("plain.example.test.", "A")]


def test_null_mx_is_a_permanent_failure(dns_zone, ctx):  # noqa: F811
    dns_zone.add("nomail.example.test", "MX", "0 .")
    dns_zone.add("nomail.example.test", "A", "192.0.2.9")
    with pytest.raises(DestinationError) as e:
        resolve("nomail.example.test", ctx)
    assert (e.value.status, e.value.dsn, e.value.temporary) == (EX_UNAVAILABLE, "5.1.10", False)
    assert "Domain does not accept mail" in e.value.message
    assert not dns_zone.asked("nomail.example.test", "A")     # nothing else tried


def test_nxdomain_is_host_unknown(dns_zone, ctx):  # noqa: F811
    with pytest.raises(DestinationError) as e:
        resolve("nowhere.example.test", ctx)
    assert (e.value.status, e.value.dsn) == (EX_NOHOST, "5.1.2")
    assert e.value.message == \
        "Host unknown (Name server: nowhere.example.test: host not found)"
    assert e.value.host == "nowhere.example.test" and not e.value.temporary


def test_servfail_is_temporary(dns_zone, ctx):  # noqa: F811
    dns_zone.servfail.add("broken.example.test")
    with pytest.raises(DestinationError) as e:
        resolve("broken.example.test", ctx)
    assert (e.value.status, e.value.dsn, e.value.temporary) == (EX_TEMPFAIL, "4.4.3", True)
    assert e.value.message == \
        "Deferred: Name server: broken.example.test: host name lookup failure"


def test_timeout_is_temporary_and_bounded(dns_zone, ctx):  # noqa: F811
    dns_zone.silent.add("slow.example.test")
    start = time.monotonic()
    with pytest.raises(DestinationError) as e:
        resolve("slow.example.test", ctx)
    assert time.monotonic() - start < 5                     # Timeout.resolver.* = 1s x 1
    assert (e.value.status, e.value.dsn) == (EX_TEMPFAIL, "4.4.3")
    assert dns_zone.asked("slow.example.test", "MX")


def test_mx_target_without_address_is_skipped(dns_zone, ctx):  # noqa: F811
    dns_zone.add("example.test", "MX", "10 gone.example.test.", "20 mx.example.test.",
                 "30 txtonly.example.test.")
    dns_zone.add("mx.example.test", "A", "192.0.2.5")
    dns_zone.add("txtonly.example.test", "TXT", '"x"')
    assert resolve("example.test", ctx) == [
        Destination("mx.example.test", ["192.0.2.5"], 25, 20)]


def test_no_mx_target_has_an_address(dns_zone, ctx):  # noqa: F811
    dns_zone.add("example.test", "MX", "10 gone.example.test.", "20 txtonly.example.test.")
    dns_zone.add("txtonly.example.test", "TXT", '"x"')
    with pytest.raises(DestinationError) as e:
        resolve("example.test", ctx)
    assert e.value.message == \
        "Host unknown (Name server: txtonly.example.test: no data known)"
    # one temporary failure among them makes the whole temporary
    dns_zone.servfail.add("gone.example.test")
    with pytest.raises(DestinationError) as e:
        resolve("example.test", ctx)
    assert e.value.temporary and e.value.host == "gone.example.test"


def test_mx_through_a_cname(dns_zone, ctx):  # noqa: F811
    dns_zone.add("alias.example.test", "CNAME", "real.example.test.")
    dns_zone.add("real.example.test", "MX", "10 mx.example.test.")
    dns_zone.add("mx.example.test", "CNAME", "host.example.test.")
    dns_zone.add("host.example.test", "A", "192.0.2.8")
    assert resolve("alias.example.test", ctx) == [
        Destination("mx.example.test", ["192.0.2.8"], 25, 10)]


def test_aaaa_before_a_and_ipv4_only(dns_zone, ctx):  # noqa: F811
    dns_zone.add("example.test", "MX", "10 dual.example.test.")
    dns_zone.add("dual.example.test", "A", "192.0.2.1")
    dns_zone.add("dual.example.test", "AAAA", "2001:db8::1", "2001:db8::2")
    addresses = resolve("example.test", ctx)[0].addresses
    assert sorted(addresses[:2]) == ["2001:db8::1", "2001:db8::2"]
    assert addresses[2:] == ["192.0.2.1"]
    dns_zone.clear()
    assert resolve("example.test", ctx, ipv6=False)[0].addresses == ["192.0.2.1"]
    assert not dns_zone.asked("dual.example.test", "AAAA")


def test_address_count_is_limited(dns_zone, ctx):  # noqa: F811
    dns_zone.add("many.example.test", "A", *("192.0.2.%d" % i for i in range(1, 26)))
    (dest,) = resolve("[many.example.test]", ctx)
    assert len(dest.addresses) == MAX_ADDRESSES
    assert dns_zone.asked("many.example.test", "A") == ["udp"]


def test_big_mx_answer_comes_over_tcp(dns_zone, ctx):  # noqa: F811
    dns_zone.add("big.example.test", "MX",
                 *("%d mx%03d.a-rather-long-exchange-name.example.test." % (i, i)
                   for i in range(40)))
    dns_zone.add("mx000.a-rather-long-exchange-name.example.test", "A", "192.0.2.1")
    out = resolve("big.example.test", ctx)
    assert [d.host for d in out] == ["mx000.a-rather-long-exchange-name.example.test"]
    assert dns_zone.asked("big.example.test", "MX") == ["udp", "tcp"]


def test_bracketed_name_makes_no_mx_query(dns_zone, ctx):  # noqa: F811
    dns_zone.add("relay.example.test", "MX", "10 elsewhere.example.test.")
    dns_zone.add("relay.example.test", "A", "192.0.2.4")
    assert resolve("[relay.example.test]", ctx) == [
        Destination("relay.example.test", ["192.0.2.4"], 25, None)]
    assert {q[1] for q in dns_zone.queries} == {"AAAA", "A"}
    with pytest.raises(DestinationError) as e:
        resolve("[unknown.example.test]", ctx)
    assert e.value.dsn == "5.1.2"


def test_literals_make_no_query(dns_zone, ctx):  # noqa: F811
    assert resolve("[192.0.2.1]", ctx, port=587) == [
        Destination("[192.0.2.1]", ["192.0.2.1"], 587, None)]
    assert resolve("[IPv6:2001:db8::1]", ctx) == [
        Destination("[IPv6:2001:db8::1]", ["2001:db8::1"], 25, None)]
    assert dns_zone.queries == []


def test_colon_list_in_order_with_failures_skipped(dns_zone, ctx):  # noqa: F811
    dns_zone.add("first.example.test", "MX", "10 mx.first.example.test.")
    dns_zone.add("mx.first.example.test", "A", "192.0.2.10")
    dns_zone.add("second.example.test", "A", "192.0.2.20")
    out = resolve("nowhere.example.test:first.example.test:[second.example.test]:"
                  "[IPv6:2001:db8::5]", ctx)
    assert [(d.host, d.addresses, d.preference) for d in out] == [
        ("mx.first.example.test", ["192.0.2.10"], 10),
        ("second.example.test", ["192.0.2.20"], None),
        ("[IPv6:2001:db8::5]", ["2001:db8::5"], None)]
    assert not dns_zone.asked("second.example.test", "MX")


def test_own_name_pruning_through_dns(dns_zone, ctx):  # noqa: F811
    dns_zone.add("example.test", "MX", "10 primary.example.test.", "20 mail.example.org.")
    dns_zone.add("primary.example.test", "A", "192.0.2.1")
    assert [d.host for d in resolve("example.test", ctx, own_names=OWN)] == [
        "primary.example.test"]
    dns_zone.add("loop.example.test", "MX", "10 mail.example.org.", "20 backup.example.test.")
    with pytest.raises(DestinationError) as e:
        resolve("loop.example.test", ctx, own_names=OWN, my_name="mail.example.org")
    assert (e.value.status, e.value.dsn) == (EX_CONFIG, "5.3.5")
    assert e.value.message == "MX list for loop.example.test points back to mail.example.org"


def test_bad_names_are_permanent_without_a_query(dns_zone, ctx):  # noqa: F811
    for bad in ("a..example.test", "x" * 70 + ".example.test"):
        with pytest.raises(DestinationError) as e:
            resolve(bad, ctx)
        assert e.value.dsn == "5.1.2"
    assert dns_zone.queries == []


def test_lazy_iteration_and_failures_reported(dns_zone, ctx):  # noqa: F811
    dns_zone.add("example.test", "MX", "10 a.example.test.", "20 gone.example.test.",
                 "30 c.example.test.")
    dns_zone.add("a.example.test", "A", "192.0.2.1")
    dns_zone.add("c.example.test", "A", "192.0.2.3")
    failures = []
    it = iter_destinations("example.test", ctx, rng=random.Random(0), failures=failures)
    assert next(it).host == "a.example.test"
    assert not dns_zone.asked("c.example.test")         # not looked up before it is needed
    assert next(it).host == "c.example.test"
    assert [(f.host, f.dsn) for f in failures] == [("gone.example.test", "5.1.2")]
    with pytest.raises(StopIteration):
        next(it)

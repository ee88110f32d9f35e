"""pysendmail.milter.config: X lines, InputMailFilters, Milter.* options, read from real cfs
through the cf parser (pysendmail.config.cf.parse_text), with Sendmail's defaults and
messages."""
import pytest

from pysendmail.config import cf as cfmod
from pysendmail.errors import ConfigError
from pysendmail.milter import config as mconf
from pysendmail.milter.client import DEFAULT_MACROS

CF = "/etc/mail/sendmail.cf"


def load(text, options=None):
    return mconf.load_milters(cfmod.parse_text("V10/Berkeley\n" + text, CF), options)


def test_every_equate_and_the_order_of_input_mail_filters():
    cfg = load("Xone, S=inet:8894@127.0.0.1, F=R, T=C:1m;S:2s;R:3s;E:4m\n"
               "Xtwo, S=local:/run/two.sock, F=T\n"
               "Xthree, S=inet6:9000@::1\n"
               "Xfour, S=unix:/run/four.sock, F=4\n"
               "O InputMailFilters=three, one;four\n")
    assert cfg.errors == []
    assert [s.name for s in cfg.filters] == ["three", "one", "four"]
    assert sorted(cfg.defined) == ["four", "one", "three", "two"]      # two: defined, unused
    one, two, three = cfg.defined["one"], cfg.defined["two"], cfg.defined["three"]
    assert one.socket == "inet:8894@127.0.0.1" and one.address == ("inet", "127.0.0.1", 8894)
    assert one.flags == {"R"} and one.on_failure == "reject"
    assert one.timeouts == {"C": 60.0, "S": 2.0, "R": 3.0, "E": 240.0}
    assert two.socket == "unix:/run/two.sock" and two.on_failure == "tempfail"
    assert three.address == ("inet6", "::1", 9000) and three.flags == frozenset()
    assert three.on_failure is None
    assert three.timeouts == {"C": 300.0, "S": 10.0, "R": 10.0, "E": 300.0}   # Sendmail's
    assert cfg.defined["four"].on_failure == "shutdown"
    assert (one.file, one.line) == (CF, 2)
    assert bool(cfg) is True


def test_flag_precedence_and_first_letter_equates():
    # milter.c: T is checked before 4 and R; equates and timeouts go by their first letter
    cfg = load("Xa, Socket=inet:1@localhost, Flags=RT, Timeouts=Connect:10s; Read:1m\n"
               "O InputMailFilters=a\n")
    a = cfg.filters[0]
    assert a.on_failure == "tempfail"
    assert a.timeouts["C"] == 10.0 and a.timeouts["R"] == 60.0 and a.timeouts["E"] == 300.0


def test_socket_forms():
    cfg = load("Xa, S=/run/plain.sock\nXb, S=:/run/empty.sock\nXc, S=inet:smtp@mx.example\n"
               "Xd, S=INET:25@[127.0.0.1]\n")
    assert cfg.errors == []
    assert cfg.defined["a"].socket == "unix:/run/plain.sock"
    assert cfg.defined["b"].socket == "unix:/run/empty.sock"
    assert cfg.defined["c"].socket == "inet:25@mx.example"       # service name looked up
    assert cfg.defined["d"].address == ("inet", "127.0.0.1", 25)
    assert cfg.filters == [] and not cfg              # no InputMailFilters: nothing used


def test_macros_log_level_and_defaults():
    cfg = load("O LogLevel=14\n")
    assert cfg.macros == {s: tuple(DEFAULT_MACROS[s]) for s in mconf.STAGES}
    assert cfg.log_level == 14                       # Milter.LogLevel defaults to LogLevel
    assert load("").log_level == 9
    cfg = load("O Milter.macros.connect=j, _,{daemon_name} {if_addr}\n"
               "O Milter.macros.eom=\nO Milter.LogLevel=3\nO LogLevel=14\n"
               "O Milter.macros.envrcpt={rcpt_addr}\n")
    assert cfg.macros["connect"] == ("j", "_", "{daemon_name}", "{if_addr}")
    assert cfg.macros["eom"] == ()                   # set empty: none
    assert cfg.macros["envrcpt"] == ("{rcpt_addr}",)
    assert cfg.macros["helo"] == DEFAULT_MACROS["helo"]
    assert cfg.log_level == 3
    assert cfg.errors == []


def test_options_override_the_cf():
    cfg = load("Xa, S=inet:1@localhost\nXb, S=inet:2@localhost\nO InputMailFilters=a\n",
               {"InputMailFilters": "b,a", "Milter.LogLevel": "7", "Milter.maxdatasize": "70000"})
    assert [s.name for s in cfg.filters] == ["b", "a"]
    assert cfg.log_level == 7 and cfg.max_data_size == 262143


@pytest.mark.parametrize("lines, message", [
    ("Xa, S=tcp:25@host\n", "/etc/mail/sendmail.cf: line 2: Xa: unknown socket type tcp"),
    ("Xa, S=inet:25\n", "line 2: Xa: bad address 25 (expected port@host)"),
    ("Xa, S=inet:99999@localhost\n", "line 2: Xa: invalid port number 99999"),
    ("Xa, S=inet:nosuchservice-x@localhost\n", "line 2: Xa: unknown port name nosuchservice-x"),
    ("Xa, S=unix:relative.sock\n", "line 2: Xa: local socket name relative.sock must be an"),
    ("Xa, F=R\n", "line 2: Xa: empty or missing socket information"),
    ("Xa, S=unix:/x, T=C:5x\n", "line 2: Xa: bad timeout C:5x"),
    ("Xa, S=unix:/x, T=Q:5m\n", "line 2: Xa: unknown filter timeout Q"),
    ("Xa, S=unix:/x, T=C5m\n", "line 2: Xa, T=: `:' expected"),
    ("Xa, S=unix:/x, Z=1\n", "line 2: Xa: unknown filter equate Z="),
    ("Xa, S=unix:/x\nO InputMailFilters=a,ghost\n", "line 3: InputFilter ghost not defined"),
    ("Xa, S=unix:/x\nO Milter.macros.bogus=j\n", "line 3: milter_set_option: invalid Milter "
     "option macros.bogus"),
])
def test_errors_name_the_line(lines, message):
    cfg = load(lines)
    assert len(cfg.errors) == 1, cfg.errors
    assert message in cfg.errors[0]
    with pytest.raises(ConfigError) as exc:
        cfg.check()
    assert message in str(exc.value) and exc.value.status == 78


def test_a_bad_x_line_is_left_out_but_the_others_are_used():
    cfg = load("Xa, S=bogus:1\nXb, S=unix:/run/b\nO InputMailFilters=a, b\n")
    assert [s.name for s in cfg.filters] == ["b"]
    assert "a" not in cfg.defined
    assert any("unknown socket type bogus" in e for e in cfg.errors)
    assert any("line 4: InputFilter a not usable" in e for e in cfg.errors)


def test_too_many_filters():
    xs = "".join("Xf%d, S=unix:/run/f%d\n" % (i, i) for i in range(25))
    cfg = load(xs + "O InputMailFilters=%s\n" % ",".join("f%d" % i for i in range(25)))
    assert cfg.filters == []
    assert cfg.errors == ["%s: line 27: Too many filters defined, 24 max" % CF]


def test_rules_object_is_accepted():
    # load_milters takes what delivery.router.load_rules returns (its .cf is the model)
    cf = cfmod.parse_text("V10/Berkeley\nXa, S=unix:/run/a\nO InputMailFilters=a\n", CF)

    class Holder:
        pass
    holder = Holder()
    holder.cf = cf
    assert [s.name for s in mconf.load_milters(holder).filters] == ["a"]

"""`mailq --json`: the same queue as the Sendmail-format listing, for scripts."""
import json
import re


def _listing_entries(text):
    """(qid, size, sender, [recipients]) from the Sendmail-format listing."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\w{14}) +(\d+) \w{3} \w{3} [ \d]\d \d\d:\d\d (.*)$", line)
        if m:
            out.append([m.group(1), int(m.group(2)), m.group(3), []])
        elif line.startswith("\t\t\t\t\t ") and out:
            out[-1][3].append(line.strip())
    return out


def test_json_lists_what_the_listing_lists(sm_root):
    sm_root.run(["-odq", "root"], input=b"Subject: one\n\nbody one\n", check=True)
    sm_root.run(["-odq", "-f", "alice@example.com", "bob@example.org", "Carol <carol@example.net>"],
                input=b"Subject: two\n\nbody two, longer\n", check=True)
    sm_root.run(["-odq", "-t", "-f", ""], input=b"To: root\nSubject: three\n\nx\n", check=True)
    text = sm_root.run([], prog="mailq", check=True).stdout.decode()
    data = json.loads(sm_root.run(["--json"], prog="mailq", check=True).stdout)
    same = json.loads(sm_root.run(["-bp", "--json"], check=True).stdout)
    assert data == same
    listed = _listing_entries(text)
    assert data["total"] == len(listed) == 3
    from_json = [[m["id"], m["size"], m["sender"] or "<>", [r["address"] for r in m["recipients"]]]
                 for m in data["messages"]]
    assert "<>" in [entry[2] for entry in listed]          # the null sender, as Sendmail shows it
    assert from_json == listed
    two = [m for m in data["messages"] if m["sender"] == "alice@example.com"][0]
    assert [r["address"] for r in two["recipients"]] == ["bob@example.org", "Carol <carol@example.net>"]
    assert {r["mailer"] for r in two["recipients"]} == {"esmtp"}
    assert two["state"] == "queued" and two["attempts"] == 0


def test_json_honours_the_queue_filters(sm_root):
    sm_root.run(["-odq", "root"], input=b"Subject: one\n\nx\n", check=True)
    sm_root.run(["-odq", "bob@example.org"], input=b"Subject: two\n\nx\n", check=True)
    data = json.loads(sm_root.run(["--json", "-qRexample.org"], prog="mailq", check=True).stdout)
    assert [r["address"] for m in data["messages"] for r in m["recipients"]] == ["bob@example.org"]
    empty = json.loads(sm_root.run(["--json", "-qRnobody.invalid"], prog="mailq", check=True).stdout)
    assert empty["total"] == 0 and empty["messages"] == []


def test_queue_run_with_v_shows_the_transcript(sm_root):
    """`sendmail -q -v` tells what happens to each recipient, as Sendmail's -v does."""
    sm_root.run(["-odq", "root", "nosuch@example.org"], input=b"Subject: v\n\nx\n", check=True)
    out = sm_root.run(["-q", "-v"], check=True).stdout.decode()
    # The tests' resolver (conftest: 127.0.0.1, nothing listening) cannot answer:
    # the remote recipient is deferred, as with a DNS outage.
    assert out.splitlines() == [
        "root... Sent",
        "nosuch@example.org... Deferred: Name server: example.org: host name lookup failure"]
    quiet = sm_root.run(["-q"], check=True).stdout
    assert quiet == b""
    left = json.loads(sm_root.run(["--json"], prog="mailq", check=True).stdout)
    assert [r["address"] for m in left["messages"] for r in m["recipients"]] == ["nosuch@example.org"]
    assert [r["error"] for m in left["messages"] for r in m["recipients"]] == [
        "Deferred: Name server: example.org: host name lookup failure"]
    text = sm_root.mailq()
    assert "(Deferred: Name server: example.org: host name lookup failure)" in text

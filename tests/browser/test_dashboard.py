"""The dashboard in a real headless Chromium (issue 17), one browser for the whole run.

Started by scripts/browser-tests.sh against a running local cluster; configured by:
HATO_UI (http://127.0.0.1:PORT), HATO_SMTP_PORT, HATO_OPERATOR, HATO_OPERATOR_PASSWORD,
HATO_SCREENSHOTS (a directory for a screenshot of each main page).

The tests run in order (each builds on the cluster state the previous left); the first failure
stops the run with exit status 1.
"""
import os
import smtplib
import sys
import time
import traceback

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

UI = os.environ["HATO_UI"]
SMTP_PORT = int(os.environ["HATO_SMTP_PORT"])
OPERATOR = os.environ["HATO_OPERATOR"]
PASSWORD = os.environ["HATO_OPERATOR_PASSWORD"]
SHOTS = os.environ["HATO_SCREENSHOTS"]
TENANT_PASSWORD = os.environ["HATO_TENANT_PASSWORD"]


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--lang=en-US"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait_for(what, check, timeout=40.0, every=0.25):
    """Polls check() until it returns a true value; raises naming `what` after timeout seconds."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # the page may be redrawing
            last = e
        time.sleep(every)
    raise AssertionError("timed out waiting for %s (last error: %s)" % (what, last))


def text(d, css):
    return d.find_element(By.CSS_SELECTOR, css).text.strip()


def shot(d, name):
    path = os.path.join(SHOTS, name + ".png")
    d.save_screenshot(path)
    print("  screenshot", path)


def loaded(d):
    return d.find_element(By.ID, "app").get_attribute("aria-busy") == "false"


def go(d, path):
    d.get(UI + path)
    wait_for("page " + path, lambda: loaded(d))


def send_mail(recipients, tag):
    with smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=30) as s:
        for i, rcpt in enumerate(recipients):
            msg = ("From: Browser test <sender@example.org>\r\nTo: <%s>\r\nSubject: %s %d\r\n"
                   "Message-ID: <%s-%d@example.org>\r\n\r\nHello %d.\r\n" % (rcpt, tag, i, tag, i, i)).encode()
            s.sendmail("sender@example.org", [rcpt], msg)


def post_status(d, path, fields):
    """POSTs a form from the page's own origin with fetch (the session cookie goes along)."""
    return d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: "POST", credentials: "same-origin", redirect: "manual",
              headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: new URLSearchParams(arguments[1])})
          .then(r => done(r.status), e => done("error " + e));
        """, path, fields)


# The tests, in order.

def test_login_wrong_then_operator(d):
    d.get(UI + "/ui/nodes")
    wait_for("redirect to the login page", lambda: d.current_url.endswith("/ui/login"))
    shot(d, "01-login")
    d.find_element(By.ID, "user").send_keys(OPERATOR)
    d.find_element(By.ID, "password").send_keys("not-the-password")
    d.find_element(By.ID, "login").click()
    # The click posts the form: wait for the answer page rather than race its load.
    error = wait_for("the login error after a wrong password", lambda: text(d, "#login-error"))
    assert "Wrong name" in error, "a wrong password is refused"
    d.find_element(By.ID, "user").clear()
    d.find_element(By.ID, "user").send_keys(OPERATOR)
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.ID, "login").click()
    wait_for("the overview", lambda: d.current_url.endswith("/ui/") and loaded(d))
    assert text(d, "h1") == "Overview"
    assert OPERATOR in text(d, ".who")
    cookie = d.get_cookie("hato_session")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui", cookie


def test_overview_counts_after_50_messages(d):
    send_mail(["user%d@sink.test" % i for i in range(50)], "overview")
    go(d, "/ui/")

    def counts():
        c = {k: text(d, "#count-" + k) for k in ("accepted", "delivered", "deferred", "bounced")}
        q = text(d, "#queue-delivered")
        return (c, q) if c["accepted"] == "50" and c["delivered"] == "50" and q == "50" else None

    # The overview refreshes itself every 5 s (no reload here).
    c, q = wait_for("50 accepted and delivered on the overview", counts, timeout=60)
    assert c["bounced"] == "0", c
    assert text(d, "#nodes-up") == "2 / 2"
    assert "leader" in text(d, "#role") or "single" in text(d, "#role") or text(d, "#role")
    polylines = d.find_elements(By.CSS_SELECTOR, "#activity-chart polyline")
    assert len(polylines) == 4, "four series drawn as SVG"
    d.find_element(By.ID, "range-day").click()
    wait_for("the day range", lambda: "last day" in text(d, "#h-activity") and text(d, "#count-accepted") == "50")
    d.find_element(By.ID, "range-hour").click()
    wait_for("the hour range", lambda: "last hour" in text(d, "#h-activity"))
    shot(d, "02-overview")


def test_search_by_recipient_and_open_message(d):
    go(d, "/ui/queue")
    d.find_element(By.ID, "search-q").send_keys("user7@sink.test")
    Select(d.find_element(By.ID, "search-by")).select_by_value("recipient")
    d.find_element(By.ID, "search-go").click()
    wait_for("search results", lambda: loaded(d) and d.find_elements(By.CSS_SELECTOR, "#results a.message-link"))
    links = d.find_elements(By.CSS_SELECTOR, "#results a.message-link")
    assert len(links) == 1, "exactly one message to user7@sink.test"
    shot(d, "03-queue-search")
    message_id = links[0].text
    links[0].click()
    wait_for("the message page", lambda: "/ui/messages/" in d.current_url and loaded(d))
    assert message_id in text(d, "h1")
    row = d.find_element(By.CSS_SELECTOR, '#recipients tr[data-recipient="user7@sink.test"]')
    assert "delivered" in row.text, row.text
    attempts = wait_for("the delivery log attempt", lambda: [r for r in d.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")
                                                             if "delivered" in r.text])
    assert "127.0.0.2" in attempts[0].text and "250" in attempts[0].text, attempts[0].text
    shot(d, "04-message")


def test_lift_a_suspension(d):
    send_mail(["someone@busy.test"], "busy")
    go(d, "/ui/ips")
    # The IPs page polls every 5 s: the suspension appears without a reload.
    row = wait_for("a suspension from the busy MX", lambda: d.find_elements(By.CSS_SELECTOR, "#suspensions tr[data-suspension]"), timeout=60)
    assert "Try again later" in row[0].text, row[0].text
    shot(d, "05-ips-suspended")
    key = row[0].get_attribute("data-suspension")
    row[0].find_element(By.CSS_SELECTOR, "button[data-action='suspensions/lift']").click()
    wait_for("the notice", lambda: "Lifted" in text(d, "#notice"))
    wait_for("the lifted suspension gone", lambda: loaded(d) and not d.find_elements(By.CSS_SELECTOR, '#suspensions tr[data-suspension="%s"]' % key))
    assert d.find_elements(By.CSS_SELECTOR, "#ips progress") or d.find_elements(By.CSS_SELECTOR, "#ips tr[data-ip]")
    shot(d, "06-ips")


def test_drain_a_node(d):
    go(d, "/ui/nodes")
    shot(d, "07-nodes")
    row = d.find_element(By.CSS_SELECTOR, 'tr[data-node="node-b"]')
    assert row.get_attribute("data-state") == "active"
    row.find_element(By.CSS_SELECTOR, "button[data-action='nodes/node-b/drain']").click()
    wait_for("the drain notice", lambda: "Draining node-b" in text(d, "#notice"))
    wait_for("node-b draining or drained", lambda: loaded(d) and d.find_element(By.CSS_SELECTOR, 'tr[data-node="node-b"]')
             .get_attribute("data-state") in ("draining", "drained"))
    assert d.find_element(By.CSS_SELECTOR, 'tr[data-node="node-a"]').get_attribute("data-state") == "active"
    shot(d, "08-nodes-draining")
    # The rebalance plan is shown first; nothing changes before the confirmation.
    d.find_element(By.ID, "rebalance-link").click()
    wait_for("the rebalance plan", lambda: d.current_url.endswith("/ui/rebalance") and loaded(d))
    assert d.find_element(By.ID, "plan")
    shot(d, "09-rebalance-plan")
    go(d, "/ui/nodes")
    d.find_element(By.CSS_SELECTOR, 'tr[data-node="node-b"] button[data-action="nodes/node-b/resume"]').click()
    wait_for("node-b active again", lambda: loaded(d) and d.find_element(By.CSS_SELECTOR, 'tr[data-node="node-b"]')
             .get_attribute("data-state") == "active")


def test_suppressions_add_and_remove(d):
    go(d, "/ui/suppressions")
    d.find_element(By.ID, "add-address").send_keys("blocked@sink.test")
    d.find_element(By.ID, "add-go").click()
    wait_for("the new entry", lambda: loaded(d) and d.find_elements(By.CSS_SELECTOR, 'tr[data-address="blocked@sink.test"]'))
    shot(d, "10-suppressions")
    d.find_element(By.CSS_SELECTOR, 'tr[data-address="blocked@sink.test"] button').click()
    wait_for("the entry removed", lambda: "Removed" in text(d, "#notice") and loaded(d)
             and not d.find_elements(By.CSS_SELECTOR, 'tr[data-address="blocked@sink.test"]'))


def test_tenants_page(d):
    go(d, "/ui/tenants")
    wait_for("the tenants", lambda: loaded(d) and d.find_elements(By.CSS_SELECTOR, 'tr[data-tenant="acme"]')
             and d.find_elements(By.CSS_SELECTOR, 'tr[data-tenant="other"]'))
    assert "acme.test" in d.find_element(By.CSS_SELECTOR, 'tr[data-tenant="acme"]').text
    d.find_element(By.ID, "tenant-name").send_keys("newco")
    d.find_element(By.NAME, "per_hour").send_keys("100")
    d.find_element(By.ID, "tenant-go").click()
    wait_for("the first API key, shown once", lambda: d.find_elements(By.ID, "new-key")
             and d.find_element(By.ID, "new-key").text.startswith("hato_"))
    shot(d, "17-tenant-created")
    go(d, "/ui/tenants")
    row = lambda: d.find_element(By.CSS_SELECTOR, 'tr[data-tenant="newco"]')
    wait_for("newco listed with its limit", lambda: loaded(d) and "0 / 100" in row().text)
    row().find_element(By.CSS_SELECTOR, 'button[data-action="tenants/suspend"]').click()
    wait_for("newco suspended", lambda: "Suspended newco" in text(d, "#notice") and loaded(d) and "suspended" in row().text)
    shot(d, "18-tenants")
    row().find_element(By.CSS_SELECTOR, 'button[data-action="tenants/resume"]').click()
    wait_for("newco resumed", lambda: "Resumed newco" in text(d, "#notice") and loaded(d) and "active" in row().text)
    row().find_element(By.CSS_SELECTOR, 'button[data-action="tenants/delete"]').click()
    wait_for("newco deleted", lambda: "Deleted newco" in text(d, "#notice") and loaded(d)
             and not d.find_elements(By.CSS_SELECTOR, 'tr[data-tenant="newco"]'))
    # The queue page searches a tenant's waiting mail.
    go(d, "/ui/queue?by=tenant&q=acme")
    wait_for("the tenant search", lambda: loaded(d) and d.find_elements(By.ID, "results"))


def test_form_without_csrf_is_refused(d):
    go(d, "/ui/nodes")
    assert post_status(d, "/ui/actions/nodes/node-a/drain", {}) == 403
    assert post_status(d, "/ui/actions/nodes/node-a/drain", {"csrf": "0" * 64}) == 403
    # A real form submission without the hidden field, as a forged page would send it.
    d.execute_script("""
        const f = document.createElement("form"); f.method = "post"; f.action = "/ui/actions/nodes/node-a/drain";
        document.body.append(f); f.submit();""")
    wait_for("the refusal", lambda: "CSRF" in d.find_element(By.TAG_NAME, "body").text)
    go(d, "/ui/nodes")
    assert d.find_element(By.CSS_SELECTOR, 'tr[data-node="node-a"]').get_attribute("data-state") == "active", "nothing drained"


def test_phone_width(d):
    d.set_window_size(390, 844)
    go(d, "/ui/")
    wait_for("the counts", lambda: int(text(d, "#count-accepted")) >= 50)
    width = d.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400, "no horizontal scrolling of the page at phone width (%s)" % width
    shot(d, "11-overview-phone")
    d.set_window_size(1280, 1000)


def test_logout(d):
    go(d, "/ui/")
    d.find_element(By.ID, "logout").click()
    wait_for("the login page", lambda: d.current_url.endswith("/ui/login"))
    d.get(UI + "/ui/nodes")
    wait_for("redirect to login after logout", lambda: d.current_url.endswith("/ui/login"))
    status = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch("/ui/api/nodes", {credentials: "same-origin"}).then(r => done(r.status));""")
    assert status == 401, status


def send_as_tenant(user, domain, count):
    """Submits `count` messages with AUTH as a tenant's SMTP user; returns their queue ids."""
    ids = []
    with smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=30) as s:
        s.ehlo("browser.test")
        s.login(user, TENANT_PASSWORD)
        for i in range(count):
            msg = ("From: App <app@%s>\r\nTo: <t%d@sink.test>\r\nSubject: tenant %d\r\n\r\nHello.\r\n" % (domain, i, i)).encode()
            s.mail("app@" + domain)
            s.rcpt("t%d@sink.test" % i)
            code, reply = s.data(msg)
            assert code == 250, (code, reply)
            ids.append(reply.decode().rsplit(" ", 1)[-1])
    return ids


def send_complaint(queue_id, recipient):
    """Sends an abuse report about message `queue_id` (its Received field and recipient) to the feedback address."""
    report = (
        "From: fbl@isp.test\r\nTo: fbl@relay.browser.test\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=feedback-report; boundary=b1\r\n\r\n"
        "--b1\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n"
        "--b1\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: BrowserTest/1\r\nVersion: 1\r\nOriginal-Rcpt-To: %s\r\n\r\n"
        "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "Received: from client.test ([127.0.0.1])\r\n\tby relay.browser.test (Hato) with ESMTPA id %s\r\n\tfor <%s>; Thu, 3 Dec 2026 10:00:00 +0000\r\n"
        "Subject: tenant 0\r\n\r\n--b1--\r\n" % (recipient, queue_id, recipient)).encode()
    with smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=30) as s:
        refused = s.sendmail("", ["fbl@relay.browser.test"], report)
    assert not refused, refused


def test_tenant_sees_only_its_own(d):
    acme = wait_for("tenant mail accepted (the domains reach the coordinator)", lambda: send_as_tenant("acme-app", "acme.test", 3), timeout=30)
    other = send_as_tenant("other-app", "other.test", 1)
    d.get(UI + "/ui/login")
    d.find_element(By.ID, "user").send_keys("acme-app")
    d.find_element(By.ID, "password").send_keys(TENANT_PASSWORD)
    d.find_element(By.ID, "login").click()
    wait_for("the tenant overview", lambda: d.current_url.endswith("/ui/t/") and loaded(d))
    assert text(d, "#tenant-name") == "acme"
    wait_for("its 3 messages counted", lambda: text(d, "#t-count-accepted") == "3" and text(d, "#t-count-delivered") == "3", timeout=60)
    assert text(d, "#t-rate-complained") == "0.0 %", text(d, "#t-rate-complained")
    # A feedback loop's complaint about one of them (ARF, RFC 5965; issue 18), sent as a
    # provider does — no AUTH — to the feedback address: 1 complaint of 3 delivered.
    send_complaint(acme[0], "t0@sink.test")
    wait_for("the complaint rate", lambda: text(d, "#t-rate-complained") == "33.3 %", timeout=30)
    shot(d, "12-tenant-overview")
    go(d, "/ui/t/messages")
    links = {a.text for a in d.find_elements(By.CSS_SELECTOR, "#t-events a.message-link")}
    assert set(acme) <= links, (acme, links)
    assert other[0] not in links, "another tenant's message is not listed"
    shot(d, "13-tenant-messages")
    go(d, "/ui/t/messages/" + acme[0])
    assert "delivered" in text(d, "#recipients")
    go(d, "/ui/t/messages/" + other[0])
    assert "no message" in text(d, "#app"), text(d, "#app")
    status = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch("/ui/api/t/messages/" + arguments[0], {credentials: "same-origin"}).then(r => done(r.status));""", other[0])
    assert status == 404, status
    # Operator pages are not for tenants.
    d.get(UI + "/ui/nodes")
    assert "Operators only" in text(d, "h1")
    go(d, "/ui/t/domains")
    assert d.find_elements(By.CSS_SELECTOR, 'section[data-domain="acme.test"]') and not d.find_elements(By.CSS_SELECTOR, 'section[data-domain="other.test"]')
    d.find_element(By.CSS_SELECTOR, 'button[data-check="acme.test"]').click()
    wait_for("the DNS check's answer", lambda: d.find_elements(By.CSS_SELECTOR, ".check-result table") or "Check failed" in text(d, "#app"), timeout=60)
    shot(d, "14-tenant-domains")
    go(d, "/ui/t/suppressions")
    assert d.find_elements(By.CSS_SELECTOR, 'tr[data-address="gone@example.net"]'), "its domain's suppression is listed"
    shot(d, "16-tenant-suppressions")
    d.find_element(By.CSS_SELECTOR, 'tr[data-address="gone@example.net"] button').click()
    wait_for("the suppression removed", lambda: "Removed" in text(d, "#notice") and loaded(d)
             and not d.find_elements(By.CSS_SELECTOR, 'tr[data-address="gone@example.net"]'))
    go(d, "/ui/t/keys")
    d.find_element(By.ID, "t-key-label").send_keys("browser")
    d.find_element(By.ID, "t-key-go").click()
    key = wait_for("the new key, shown once", lambda: text(d, "#new-key"))
    assert len(key) > 20
    go(d, "/ui/t/keys")
    row = [r for r in d.find_elements(By.CSS_SELECTOR, "#t-keys tr[data-key]") if "browser" in r.text][0]
    key_id = row.get_attribute("data-key")
    assert key not in d.find_element(By.TAG_NAME, "body").text, "the key is never shown again"
    shot(d, "15-tenant-keys")
    row.find_element(By.CSS_SELECTOR, "button").click()
    wait_for("the key revoked", lambda: loaded(d) and "revoked" in d.find_element(By.CSS_SELECTOR, 'tr[data-key="%s"]' % key_id).text)
    d.find_element(By.ID, "logout").click()
    wait_for("the login page", lambda: d.current_url.endswith("/ui/login"))


TESTS = [test_login_wrong_then_operator, test_overview_counts_after_50_messages, test_search_by_recipient_and_open_message,
         test_lift_a_suspension, test_drain_a_node, test_suppressions_add_and_remove, test_tenants_page, test_form_without_csrf_is_refused,
         test_phone_width, test_logout, test_tenant_sees_only_its_own]


def main():
    os.makedirs(SHOTS, exist_ok=True)
    d = browser()
    d.set_script_timeout(20)
    failed = 0
    try:
        for t in TESTS:
            started = time.time()
            try:
                t(d)
                print("ok   %s (%.1f s)" % (t.__name__, time.time() - started), flush=True)
            except Exception:
                failed += 1
                print("FAIL %s" % t.__name__, flush=True)
                traceback.print_exc()
                try:
                    shot(d, "failed-" + t.__name__)
                except Exception:
                    pass
                break
        errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE" and "/ui/actions/" not in e.get("message", "")]
        for e in errors:
            print("browser console:", e.get("message"))
    finally:
        d.quit()
    print("%d of %d browser tests passed" % (len(TESTS) - failed if not failed else TESTS.index(t), len(TESTS)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The operator console in a real browser: Debian's Chromium driven over WebDriver (Selenium).

What it checks, on a governed fleet served by `fleetkey serve` (SQLite, the soft key module):
- each role signs in with its token and sees exactly the pages and actions its role allows; a page
  it may not see answers 403 with the API's words;
- an admin provisions, refreshes, revokes and decommissions a device through the pages; the store
  (`fleetkey device show`) and the audit chain (`fleetkey audit verify`, `audit show`) agree;
- a token issued and revoked on the Tokens page stops working on the API at once;
- a cross-site form post (a page on another site) and a post without the session's anti-forgery
  value are refused, and a tampered cookie signs nobody in; nothing changes;
- a tampered audit row shows as a broken chain on the Audit page, naming the event.

Screenshots of every page go to $FLEETKEY_ARTIFACTS (default target/browser-artifacts).
Run: python3 tests/browser/console.py   (after `cargo build -p fleetkey-cli`)
"""

import http.server
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
FLEETKEY = Path(os.environ.get("FLEETKEY_BIN", ROOT / "target" / "debug" / "fleetkey"))
ARTIFACTS = Path(os.environ.get("FLEETKEY_ARTIFACTS", ROOT / "target" / "browser-artifacts"))
PASSPHRASE = "browser test passphrase"

ALL_PAGES = ["Fleet", "Devices", "Generations", "Grants", "Audit", "Tokens"]
# What each role may see (crate::auth::allowed) and do to a pre-active device.
ROLES = {
    "admin": (ALL_PAGES, ["Provision", "Revoke", "Decommission"]),
    "operator": (ALL_PAGES[:-1], ["Provision", "Revoke", "Decommission"]),
    "auditor": (ALL_PAGES[:-1], []),
    "technician": (["Grants"], None),
    "station": ([], None),
}


def left_page(element):
    """A wait condition: `element` is no longer in the document (the next page replaced it).
    Chromium reports such a node as stale, or, while the new document is still loading, with an
    inspector error saying the node "does not belong to the document"."""
    def gone(_driver):
        try:
            element.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return True
            raise
    return gone


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


class Fleet:
    def __init__(self, home):
        self.home = home
        self.env = dict(os.environ, FLEETKEY_PASSPHRASE=PASSPHRASE, FLEETKEY_ACTOR="tester",
                        FLEETKEY_HOME=str(home))

    def run(self, *args, ok=True):
        out = subprocess.run([str(FLEETKEY), *args], env=self.env, capture_output=True, text=True)
        if ok and out.returncode != 0:
            fail(f"fleetkey {' '.join(args)}: {out.stderr}")
        return out

    def json(self, *args):
        return json.loads(self.run(*args, "--json").stdout)

    def token(self, principal, role, subject=None):
        args = ["token", "issue", "--principal", principal, "--role", role, "--expires", "1d"]
        if subject:
            args += ["--subject", subject]
        return self.run(*args).stdout.splitlines()[0].strip()


class Browser:
    def __init__(self, base):
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--window-size=1366,900", "--disable-gpu"]:
            options.add_argument(arg)
        # The driver from Debian's chromium-driver: nothing is downloaded.
        service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
        self.d = webdriver.Chrome(service=service, options=options)
        self.base = base

    def get(self, path):
        self.d.get(self.base + path)

    def text(self):
        return self.d.find_element(By.TAG_NAME, "body").text

    def nav(self):
        return [a.text for a in self.d.find_elements(By.CSS_SELECTOR, "header nav ul a")]

    def shot(self, name):
        path = ARTIFACTS / f"{name}.png"
        self.d.save_screenshot(str(path))
        return path

    def sign_in(self, token):
        self.d.delete_all_cookies()
        self.get("/ui/login")
        self.d.find_element(By.ID, "token").send_keys(token)
        button = self.d.find_element(By.CSS_SELECTOR, "form button[type=submit]")
        button.click()
        WebDriverWait(self.d, 10).until(left_page(button))

    def click(self, text, navigates=True):
        """Clicks the link or button with `text` and waits for the next page."""
        for el in self.d.find_elements(By.CSS_SELECTOR, "a.button, button"):
            if el.text.strip() == text:
                el.click()
                if navigates:
                    WebDriverWait(self.d, 10).until(left_page(el))
                return
        fail(f"no button {text!r} on {self.d.current_url}: {self.text()[:400]}")

    def buttons(self, css):
        return [el.text.strip() for el in self.d.find_elements(By.CSS_SELECTOR, css)]

    def fill(self, element_id, value):
        el = self.d.find_element(By.ID, element_id)
        el.clear()
        el.send_keys(value)

    def post(self, path, fields):
        """A same-origin POST from the page's own JavaScript context (as an injected script
        would): the session cookie goes along; returns the status. It runs on /healthz: the
        console's own pages allow no script to connect anywhere (CSP default-src 'none')."""
        self.get("/healthz")
        return self.d.execute_async_script(
            """const [url, fields, done] = arguments;
               fetch(url, {method: 'POST', body: new URLSearchParams(fields), redirect: 'manual'})
                 .then(r => done(r.status)).catch(e => done('error ' + e));""",
            self.base + path, fields)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_attacker(directory):
    """Another site (localhost, not 127.0.0.1) with a forged form."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = lambda *a, **k: Quiet(*a, directory=directory, **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def api_status(base, token, path, body=b"{}"):
    req = urllib.request.Request(base + path, data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def main():
    check(FLEETKEY.exists(), f"{FLEETKEY} missing: run `cargo build -p fleetkey-cli` first")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fleetkey-browser-"))
    fleet = Fleet(work / "fleet")
    fleet.run("init", "--fleet", "demo", "--scheme", "governed", "--kdf-log-n", "10",
              "--no-backup")
    for serial in ["ECU-0001", "ECU-0002", "ECU-0003"]:
        fleet.run("device", "add", serial, "--label", "line-1")
    tokens = {role: fleet.token(f"{role}-alice", role,
                                "jane@workshop" if role == "technician" else None)
              for role in ROLES}

    port = free_port()
    server = subprocess.Popen([str(FLEETKEY), "serve", "--listen", f"127.0.0.1:{port}",
                               "--no-lifecycle"], env=fleet.env, stderr=subprocess.PIPE, text=True)
    browser = None
    try:
        first = server.stderr.readline()
        check("console=http://127.0.0.1:" in first, f"serve's first line names the console: {first}")
        base = f"http://127.0.0.1:{port}"
        browser = Browser(base)
        shots = []

        # Each role: the navigation and the actions it may take, and nothing more.
        for role, (pages, actions) in ROLES.items():
            browser.sign_in(tokens[role])
            check(browser.nav() == pages, f"{role} sees pages {browser.nav()}, expected {pages}: {browser.d.current_url} {browser.text()[:300]}")
            check(f"{role}-alice ({role})" in browser.text(), f"{role}: the page names who is in")
            shots.append(browser.shot(f"role-{role}-landing"))
            browser.get("/ui/device?serial=ECU-0003")
            if actions is None:
                check("403" in browser.d.title or "may not" in browser.text(),
                      f"{role} may not see a device: {browser.text()[:300]}")
            else:
                got = browser.buttons(".actions a.button")
                check(got == actions, f"{role} may {got} on a pre-active device, expected {actions}")
            for name in set(ALL_PAGES) - set(pages):
                path = {"Fleet": "/ui"}.get(name, f"/ui/{name.lower()}")
                browser.get(path)
                check("may not" in browser.text(), f"{role} on {path}: {browser.text()[:300]}")
            if role == "auditor":
                browser.get("/ui/generations")
                check(browser.buttons("td.actions a.button") == [] and
                      "New generation" not in browser.text(), "an auditor gets no generation actions")
                browser.get("/ui/device/confirm?serial=ECU-0003&action=revoke")
                check("may not" in browser.text(), "an auditor's hand-typed action URL is refused")

        # The admin: every page, then provision -> refresh -> revoke -> decommission.
        browser.sign_in(tokens["admin"])
        for path, name in [("/ui", "fleet"), ("/ui/devices", "devices"),
                           ("/ui/generations", "generations"), ("/ui/grants", "grants"),
                           ("/ui/audit", "audit"), ("/ui/tokens", "tokens")]:
            browser.get(path)
            check("Sign out" in browser.text(), f"{path} renders for the admin")
            shots.append(browser.shot(f"page-{name}"))
        browser.get("/ui/devices?serial=ECU-000&state=pre-active")
        check(browser.text().count("ECU-000") >= 3, "the device search lists the devices")

        browser.get("/ui/device?serial=ECU-0001")
        browser.click("Provision")
        shots.append(browser.shot("confirm-provision"))
        browser.click("Provision ECU-0001")
        check("Key material, shown once" in browser.text(), "provisioning shows the keys once")
        shots.append(browser.shot("provisioned"))
        browser.get("/ui/device?serial=ECU-0001")
        check(browser.buttons(".actions a.button") == ["Refresh", "Suspend", "Revoke", "Decommission"],
              f"an active device's actions: {browser.buttons('.actions a.button')}")
        browser.click("Refresh")
        browser.fill("reason", "console refresh")
        browser.click("Refresh ECU-0001")
        check("revision 0 to generation 1 revision 1" in browser.text(), browser.text()[:400])
        browser.get("/ui/device?serial=ECU-0001")
        browser.click("Revoke")
        browser.fill("reason", "stolen from the line")
        browser.click("Revoke ECU-0001", navigates=False)
        check("Revoke ECU-0001?" in browser.text(), "the browser keeps the form: the serial is required")
        csrf = browser.d.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
        status = browser.post("/ui/device/act", {"serial": "ECU-0001", "action": "revoke",
                                                 "typed": "ECU-0002", "reason": "x", "csrf": csrf})
        check(status == 422, f"the service refuses a confirmation naming another serial: {status}")
        check(fleet.json("device", "show", "ECU-0001")["state"] == "active", "nothing changed")
        browser.get("/ui/device/confirm?serial=ECU-0001&action=revoke")
        browser.fill("reason", "stolen from the line")
        browser.fill("typed", "ECU-0001")
        shots.append(browser.shot("confirm-revoke"))
        browser.click("Revoke ECU-0001")
        check("Device ECU-0001 is now compromised." in browser.text(), browser.text()[:400])
        browser.click("Decommission")
        browser.fill("typed", "ECU-0001")
        browser.click("Decommission ECU-0001")
        check("is now destroyed-compromised" in browser.text(), browser.text()[:400])
        shots.append(browser.shot("device-history"))
        for action in ["device.provision", "device.refresh", "device.revoke", "device.decommission"]:
            check(action in browser.text(), f"the device's history has {action}")

        shown = fleet.json("device", "show", "ECU-0001")
        check(shown["state"] == "destroyed-compromised" and shown["revision"] == 1,
              f"the store has what the pages did: {shown}")
        verify = fleet.run("audit", "verify")
        check(verify.returncode == 0, "the audit chain verifies")
        events = fleet.json("audit", "show", "--device", "ECU-0001")
        by_admin = [e["action"] for e in events if e["actor"] == "admin-alice"]
        check(by_admin == ["device.provision", "device.refresh", "device.revoke",
                           "device.decommission"], f"the audit names the admin: {by_admin}")

        # A token issued and revoked on the Tokens page.
        browser.get("/ui/tokens")
        browser.fill("principal", "temp-station")
        browser.d.find_element(By.CSS_SELECTOR, "#role option[value=station]").click()
        browser.click("Issue token")
        issued = browser.d.find_element(By.ID, "issued-token").text.strip()
        check(issued.startswith("fk_"), "the issued token is shown once")
        shots.append(browser.shot("token-issued"))
        check(api_status(base, issued, "/v1/devices/ECU-0002/provision") == 200,
              "the issued token works on the API")
        browser.get("/ui/tokens")
        token_id = [r for r in fleet.json("token", "list") if r["principal"] == "temp-station"][0]["id"]
        browser.get(f"/ui/tokens/confirm?id={token_id}")
        browser.click(f"Revoke token {token_id}")
        check(f"Token {token_id} revoked." in browser.text(), browser.text()[:300])
        check(api_status(base, issued, "/v1/devices/ECU-0002/provision") == 401,
              "a token revoked on the console stops at once on this instance")

        # Forgery: a form on another site (localhost is another site than 127.0.0.1).
        attack = work / "attacker"
        attack.mkdir()
        (attack / "forge.html").write_text(f"""<!doctype html><form method="post"
            action="{base}/ui/device/act"><input name="serial" value="ECU-0003">
            <input name="action" value="revoke"><input name="typed" value="ECU-0003">
            <input name="reason" value="forged"><input name="csrf" value="guess">
            <button id="go">Win a prize</button></form>""")
        attacker = serve_attacker(str(attack))
        browser.d.get(f"http://localhost:{attacker.server_address[1]}/forge.html")
        go = browser.d.find_element(By.ID, "go")
        go.click()
        WebDriverWait(browser.d, 10).until(left_page(go))
        check("nothing was changed" in browser.text(), f"the forged post is refused: {browser.text()}")
        shots.append(browser.shot("forged-post-refused"))
        attacker.shutdown()
        # From the console's own origin but without the session's anti-forgery value.
        browser.get("/ui")
        status = browser.post("/ui/device/act", {"serial": "ECU-0003", "action": "revoke",
                                                 "typed": "ECU-0003", "reason": "x", "csrf": "0" * 64})
        check(status == 403, f"a post without the anti-forgery value: {status}")
        # A tampered session cookie signs nobody in, and its post changes nothing.
        browser.get("/ui")
        cookie = browser.d.get_cookie("fleetkey_session")
        check(cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict",
              f"the session cookie is HttpOnly and SameSite=Strict: {cookie}")
        check(browser.d.execute_script("return document.cookie") == "",
              "page scripts cannot read the session cookie")
        value = cookie["value"]
        tampered = value[:-1] + ("0" if value[-1] != "0" else "1")
        browser.d.delete_all_cookies()
        browser.d.add_cookie({"name": "fleetkey_session", "value": tampered, "path": "/ui"})
        browser.get("/ui/devices")
        check(browser.d.current_url.endswith("/ui/login"), "a tampered cookie goes to sign-in")
        status = browser.post("/ui/device/act", {"serial": "ECU-0003", "action": "revoke",
                                                 "typed": "ECU-0003", "reason": "x", "csrf": "0" * 64})
        check(status == 401, f"a post with a tampered cookie: {status}")
        check(fleet.json("device", "show", "ECU-0003")["state"] == "pre-active",
              "no refused post changed the device")

        # A tampered audit row shows as a broken chain.
        db = sqlite3.connect(fleet.home / "fleet.db")
        db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 7")
        db.commit()
        db.close()
        browser.sign_in(tokens["auditor"])
        browser.get("/ui/audit")
        verify_button = browser.d.find_element(By.ID, "verify")
        verify_button.click()
        WebDriverWait(browser.d, 10).until(left_page(verify_button))
        text = browser.text()
        check("Chain broken" in text and "event 7 was changed" in text, f"broken chain shown: {text[:500]}")
        shots.append(browser.shot("audit-broken"))

        print(f"console browser test: ok ({len(shots)} screenshots in {ARTIFACTS})")
        for s in shots:
            print(f"  {s.relative_to(ROOT) if s.is_relative_to(ROOT) else s}")
    finally:
        if browser:
            browser.d.quit()
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

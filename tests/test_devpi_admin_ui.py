"""devpi-admin's web UI (its "Devpi tokens" tables) against a real server.

devpi-admin (installed next to devpi-server, served under ``/+admin/``) lists
a user's tokens from ``GET /<user>/+tokens`` and re-parses every entry of
``restrictions`` as a devpi-tokens 1.x ``name=value`` string (``expires=<int>``,
``not_before=<int>``, ``indexes=a/b,c/d``, ``projects=a,b``,
``allowed=p,q``).  These tests drive that UI in headless Chromium (Debian's
``chromium`` and ``chromium-driver``; nothing is downloaded, Selenium Manager
is never used) and read the rendered cells:

- the per-user Tokens modal (Users page, root only) shows each token's
  indexes, permissions, projects, expiry and start exactly, and an
  unrestricted token as unrestricted;
- the per-index Tokens modal lists the tokens good for that index only;
- a token issued from the UI's form carries what was ticked, works, and shows
  up in the listing; revoking it from the UI makes the server refuse it.

devpi-admin is installed for this module only, into a directory of its own
that only this module's devpi-server gets on its ``PYTHONPATH``: installed in
the test environment, it would load into every test's devpi-server, and its
own read checks answer before devpi's (and the plugin's), which the other
tests must not depend on.  ``DEVPI_ADMIN_TARGET`` names a directory that
already holds it (no install then).

One devpi-server process (``--offline-mode``, free loopback port) serves the
module and is stopped by PID; Chromium is quit in a finalizer.  Screenshots of
the modals land in each test's ``tmp_path`` (their paths are printed).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from datetime import timezone
from pathlib import Path
from typing import Any
from typing import Callable

import pytest

from devpi_process import start_server
from devpi_tokens.quickstart_server import write_wheel

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        f"devpi-admin UI tests need Debian's chromium and chromium-driver "
        f"({CHROMIUM} and {CHROMEDRIVER}); install them with "
        f"`apt-get install -y chromium chromium-driver` (.ci/run does so as root)",
        allow_module_level=True)

pytest.importorskip("selenium", reason="selenium (in the test extra) is not installed")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT_PASSWORD = "root-password-ui"
USER = "alice"
PASSWORD = "alice-password-ui"
WAIT = 15  # seconds for any single UI state to appear

# devpi-admin's fallback texts for a cell without that restriction
ANY_INDEX = "\u26a0 any"
ALL_PERMISSIONS = "\u26a0 all (except user_*)"
NO_VALUE = "\u2014"
TABLE_HEADINGS = ["ID", "Indexes", "Allowed", "Projects", "Expires", "Not before", ""]


def ui_time(epoch: int | None) -> str:
    """What app.js's formatMacaroonTimestamp shows: 'YYYY-MM-DD HH:MM UTC' or '—'."""
    if epoch is None:
        return NO_VALUE
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M") + " UTC"


# --------------------------------------------------------------------------
# HTTP helpers (what curl would send)

def http(server, method: str, path: str, *, body: Any = None, data: bytes | None = None,
         basic: tuple[str, str] | None = None, token: str | None = None,
         headers: dict | None = None) -> tuple[int, bytes]:
    hdrs = {"Accept": "application/json", **(headers or {})}
    if basic is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback server)
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ok_json(result: tuple[int, bytes], *statuses: int) -> dict:
    status, raw = result
    assert status in (statuses or (200,)), (status, raw[:2000])
    return json.loads(raw)


def mint(server, auth: tuple[str, str], **wanted: Any) -> tuple[str, str]:
    """POST /alice/+token-create; returns (token, id)."""
    result = ok_json(http(server, "POST", f"/{USER}/+token-create", body=wanted, basic=auth),
                     200, 201)["result"]
    return result["token"], result["id"]


def listing(server) -> dict[str, dict]:
    """GET /alice/+tokens with alice's password: {id: entry}."""
    answer = ok_json(http(server, "GET", f"/{USER}/+tokens", basic=(USER, PASSWORD)))
    return answer["result"]["tokens"]


def bearer_upload(server, token: str, wheel: Path, name: str, index: str) -> tuple[int, bytes]:
    """``:action=file_upload`` as multipart (what twine sends), Bearer token."""
    boundary = uuid.uuid4().hex
    fields = {":action": "file_upload", "name": name, "version": "1.0",
              "filetype": "bdist_wheel", "pyversion": "py3", "protocol_version": "1",
              "metadata_version": "2.1"}
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
                 f'filename="{wheel.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + wheel.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return http(server, "POST", f"/{USER}/{index}/", token=token, data=b"".join(parts),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


# --------------------------------------------------------------------------
# fixtures: one server with alice, two indexes and three minted tokens

DEVPI_ADMIN = "devpi-admin==1.5.2"


@pytest.fixture(scope="module")
def devpi_admin_dir(tmp_path_factory) -> Path:
    """A directory holding devpi-admin (and only it: devpi-server is ours)."""
    preset = os.environ.get("DEVPI_ADMIN_TARGET")
    if preset:
        return Path(preset)
    target = tmp_path_factory.mktemp("devpi-admin")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--target", str(target), DEVPI_ADMIN],
        capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        reason = f"could not install {DEVPI_ADMIN}: {proc.stderr.strip()[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return target


@pytest.fixture(scope="module")
def server(tmp_path_factory, devpi_admin_dir):
    base = tmp_path_factory.mktemp("admin-ui")
    proc = start_server(base / "server", root_password=ROOT_PASSWORD,
                        env={"PYTHONPATH": str(devpi_admin_dir)})
    assert "Found plugin devpi-admin-1.5.2" in proc.log(), proc.log()[-2000:]
    try:
        ok_json(http(proc, "PUT", f"/{USER}",
                     body={"password": PASSWORD, "email": f"{USER}@example.com"}), 201)
        # alice/dev is private, so reading it needs pkg_read
        ok_json(http(proc, "PUT", f"/{USER}/dev", basic=(USER, PASSWORD),
                     body={"type": "stage", "bases": [], "acl_read": [USER]}), 200, 201)
        ok_json(http(proc, "PUT", f"/{USER}/other", basic=(USER, PASSWORD),
                     body={"type": "stage", "bases": []}), 200, 201)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def minted(server) -> dict[str, dict]:
    """The three tokens the listing tests look at, minted over HTTP.

    ``dev``: alice/dev, pkg_read+upload, foo+bar, expiry and a future start;
    ``other``: alice/other only (default expiry); ``unrestricted``: minted by
    root with ``"expires": "never"`` and nothing else.
    """
    now = int(time.time())
    wanted = {
        "dev": ((USER, PASSWORD), {
            "indexes": [f"{USER}/dev"], "allowed": ["pkg_read", "upload"],
            "projects": ["foo", "bar"], "expires": now + 10 * 86400 + 123,
            "not_before": now + 2 * 3600 + 45}),
        "other": ((USER, PASSWORD), {"indexes": [f"{USER}/other"]}),
        "unrestricted": (("root", ROOT_PASSWORD), {"expires": "never"}),
    }
    tokens = {}
    for name, (auth, body) in wanted.items():
        token, token_id = mint(server, auth, **body)
        tokens[name] = {"token": token, "id": token_id, "asked": body}
    entries = listing(server)
    for info in tokens.values():
        info["entry"] = entries[info["id"]]
    # the server-side contract the UI relies on (devpi-tokens 1.x name=value)
    dev = tokens["dev"]
    assert sorted(dev["entry"]["restrictions"]) == sorted([
        f"expires={dev['asked']['expires']}", f"not_before={dev['asked']['not_before']}",
        "projects=foo,bar", f"indexes={USER}/dev", "allowed=pkg_read,upload"])
    assert tokens["unrestricted"]["entry"]["restrictions"] == []
    assert tokens["unrestricted"]["entry"]["expires"] is None
    return tokens


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    logdir = tmp_path_factory.mktemp("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--no-default-browser-check",
                "--no-proxy-server", "--window-size=1400,1300",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    # an explicit driver path: Selenium Manager (which downloads) is never run
    service = Service(str(CHROMEDRIVER), log_output=str(logdir / "chromedriver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    try:
        browser.set_page_load_timeout(30)
        browser.set_script_timeout(10)
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------
# UI helpers

def wait_for(driver, what: str, condition: Callable[[Any], Any], timeout: float = WAIT) -> Any:
    """WebDriverWait with a failure message that says what the page showed."""
    try:
        return WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        try:
            error = driver.find_element(By.ID, "modal-error")
            shown = error.get_attribute("textContent") if error.is_displayed() else ""
            title = driver.find_element(By.ID, "modal-title").get_attribute("textContent")
        except Exception:  # noqa: BLE001 (diagnostics only)
            shown = title = "?"
        raise AssertionError(f"timed out waiting for {what} (url {driver.current_url!r}, "
                             f"modal {title!r}, modal error {shown!r})") from None


def js(driver, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def login(driver, server, user: str, password: str) -> None:
    """Log in through devpi-admin's Login modal."""
    driver.get(server.url + "/+admin/")
    js(driver, "sessionStorage.clear(); localStorage.clear();")
    driver.get(server.url + "/+admin/")
    wait_for(driver, "the Login button",
             EC.element_to_be_clickable((By.ID, "login-btn"))).click()
    wait_for(driver, "the login form", EC.visibility_of_element_located((By.ID, "login-user")))
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-pass").send_keys(password)
    # after a successful login devpi-admin posts a form to /+admin (so the
    # browser may save the password) and the page reloads: wait for that
    js(driver, "window.__uiTestBeforeLogin = true;")
    driver.find_element(By.CSS_SELECTOR, "#modal-footer .btn-primary").click()
    wait_for(driver, f"the page reload after logging in as {user}", lambda d: js(
        d, "return !window.__uiTestBeforeLogin && document.readyState === 'complete'"
           " && !!sessionStorage.getItem('devpi-token');"))
    wait_for(driver, f"{user} shown as logged in", lambda d: js(
        d, "var b = document.getElementById('logout-btn');"
           "var n = b && b.querySelector('.user-btn-name');"
           "return !b.hidden && n && n.textContent;") == user)


def open_kebab_item(driver, card: WebElement, label: str) -> None:
    card.find_element(By.CSS_SELECTOR, ".kebab-btn").click()
    items = [item for item in card.find_elements(By.CSS_SELECTOR, ".kebab-dropdown .kebab-item")
             if item.text == label]
    assert len(items) == 1, [item.text for item in card.find_elements(
        By.CSS_SELECTOR, ".kebab-dropdown .kebab-item")]
    items[0].click()


def wait_for_tokens_modal(driver, title: str, loading_id: str) -> None:
    wait_for(driver, f"the modal {title!r}", lambda d: js(
        d, "return !document.getElementById('modal-overlay').hidden"
           " && document.getElementById('modal-title').textContent;") == title)
    wait_for(driver, f"{title!r} to finish loading", lambda d: js(
        d, "var l = document.getElementById(arguments[0]); return !!l && l.hidden;",
        loading_id))


def open_user_tokens_modal(driver, server, username: str) -> WebElement:
    """Users page → the user's card menu → Tokens; returns the Devpi tokens container."""
    driver.get(server.url + "/+admin/#users")
    card = wait_for(driver, f"the user card of {username}", lambda d: next(
        (c for c in d.find_elements(By.CSS_SELECTOR, ".user-card")
         if c.find_element(By.CSS_SELECTOR, ".index-card-name").text == username), None))
    open_kebab_item(driver, card, "Tokens")
    wait_for_tokens_modal(driver, f"Tokens for {username}", "tokens-loading")
    assert driver.find_element(By.ID, "tokens-devpi-section").is_displayed(), \
        "devpi-admin did not detect the devpi-tokens plugin (no Devpi tokens section)"
    return driver.find_element(By.ID, "macaroon-tokens-list-container")


def open_index_tokens_modal(driver, server, index: str) -> WebElement:
    """Indexes page → the index card's menu → Tokens; returns the Devpi tokens container."""
    driver.get(server.url + "/+admin/#indexes")
    link = wait_for(driver, f"the index card of {index}", EC.presence_of_element_located(
        (By.CSS_SELECTOR, f'a.index-card-name[href="#packages/{index}"]')))
    card = link.find_element(By.XPATH, "./ancestor::div[contains(concat(' ', @class, ' '),"
                                       " ' index-card ')][1]")
    open_kebab_item(driver, card, "Tokens")
    return wait_for_index_tokens(driver, index)


def wait_for_index_tokens(driver, index: str) -> WebElement:
    wait_for_tokens_modal(driver, f"Tokens for {index}", "index-tokens-loading")
    assert driver.find_element(By.ID, "index-tokens-devpi-section").is_displayed(), \
        "devpi-admin shows no Devpi tokens section for the index"
    return driver.find_element(By.ID, "macaroon-index-tokens-list-container")


def text(element: WebElement) -> str:
    return element.get_attribute("textContent")


def cell_value(td: WebElement) -> list[str] | str:
    """A restriction cell: its chips (one per value), else its fallback text."""
    chips = td.find_elements(By.CSS_SELECTOR, ".macaroon-chip")
    if chips:
        return [text(chip) for chip in chips]
    return text(td)


def read_token_rows(container: WebElement) -> dict[str, dict]:
    """The rendered Devpi tokens table, keyed by the full token id (the ID cell's title)."""
    table = container.find_element(By.CSS_SELECTOR, "table.tokens-table-macaroon")
    headings = [text(th) for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert headings == TABLE_HEADINGS
    rows = {}
    for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr"):
        tds = tr.find_elements(By.TAG_NAME, "td")
        assert len(tds) == len(TABLE_HEADINGS), tr.get_attribute("outerHTML")
        token_id = tds[0].get_attribute("title")
        assert token_id not in rows
        rows[token_id] = {
            "id": text(tds[0]), "indexes": cell_value(tds[1]), "allowed": cell_value(tds[2]),
            "projects": cell_value(tds[3]), "expires": text(tds[4]),
            "not_before": text(tds[5]), "action": text(tds[6]),
        }
    return rows


def row(token_id: str, indexes: list[str] | str, allowed: list[str] | str,
        projects: list[str] | str, expires: int | None, not_before: int | None) -> dict:
    """The row devpi-admin should render for a token."""
    return {"id": token_id[:12], "indexes": indexes, "allowed": allowed, "projects": projects,
            "expires": ui_time(expires), "not_before": ui_time(not_before), "action": "Revoke"}


def expected_rows(minted: dict[str, dict]) -> dict[str, dict]:
    dev, other, unrestricted = minted["dev"], minted["other"], minted["unrestricted"]
    # asked for no times: the server's default expiry, valid from its creation
    assert isinstance(other["entry"]["expires"], int)
    assert other["entry"]["not_before"] == other["entry"]["created"]
    return {
        dev["id"]: row(dev["id"], [f"{USER}/dev"], ["pkg_read", "upload"], ["foo", "bar"],
                       dev["asked"]["expires"], dev["asked"]["not_before"]),
        other["id"]: row(other["id"], [f"{USER}/other"], ALL_PERMISSIONS, NO_VALUE,
                         other["entry"]["expires"], other["entry"]["not_before"]),
        unrestricted["id"]: row(unrestricted["id"], ANY_INDEX, ALL_PERMISSIONS, NO_VALUE,
                                None, None),
    }


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    print(f"\nscreenshot: {path}")
    return path


def click_footer_button(driver, label: str) -> None:
    buttons = [b for b in driver.find_elements(By.CSS_SELECTOR, "#modal-footer button")
               if b.text == label]
    assert len(buttons) == 1, [b.text for b in driver.find_elements(
        By.CSS_SELECTOR, "#modal-footer button")]
    buttons[0].click()


# Makes the page see the listing a server would give if it put the minted
# caveat strings (JSON) into ``restrictions`` instead of name=value strings.
CAVEATS_AS_RESTRICTIONS = """
window.__uiTestFetch = window.__uiTestFetch || window.fetch;
window.fetch = function (url, opts) {
    return window.__uiTestFetch(url, opts).then(function (res) {
        if (!/\\/\\+tokens$/.test(String(url)) || !res.ok) return res;
        return res.json().then(function (data) {
            var tokens = (data.result && data.result.tokens) || {};
            Object.keys(tokens).forEach(function (id) {
                tokens[id].restrictions = tokens[id].caveats;
            });
            return new Response(JSON.stringify(data),
                                {status: res.status, headers: res.headers});
        });
    });
};
"""


# --------------------------------------------------------------------------
# tests

def test_user_tokens_modal_shows_each_tokens_restrictions(server, minted, driver, tmp_path):
    login(driver, server, "root", ROOT_PASSWORD)
    container = open_user_tokens_modal(driver, server, USER)
    screenshot(driver, tmp_path, "user-tokens-modal")

    expected = expected_rows(minted)
    assert read_token_rows(container) == expected

    # Control: had the server put its JSON caveat strings into
    # ``restrictions``, devpi-admin would parse nothing ("⚠ any" everywhere,
    # no dates) and the comparison above would fail.
    js(driver, CAVEATS_AS_RESTRICTIONS)
    click_footer_button(driver, "Close")
    card = next(c for c in driver.find_elements(By.CSS_SELECTOR, ".user-card")
                if c.find_element(By.CSS_SELECTOR, ".index-card-name").text == USER)
    open_kebab_item(driver, card, "Tokens")
    wait_for_tokens_modal(driver, f"Tokens for {USER}", "tokens-loading")
    degraded = read_token_rows(driver.find_element(By.ID, "macaroon-tokens-list-container"))
    screenshot(driver, tmp_path, "user-tokens-modal-if-caveats-were-sent")
    assert degraded != expected
    assert degraded[minted["dev"]["id"]] == row(
        minted["dev"]["id"], ANY_INDEX, ALL_PERMISSIONS, NO_VALUE, None, None)
    driver.refresh()  # drop the patched fetch


def test_index_tokens_modal_lists_only_tokens_for_that_index(server, minted, driver, tmp_path):
    login(driver, server, USER, PASSWORD)
    container = open_index_tokens_modal(driver, server, f"{USER}/dev")
    screenshot(driver, tmp_path, "index-tokens-modal-alice-dev")

    rows = read_token_rows(container)
    expected = expected_rows(minted)
    # the alice/dev token and the unrestricted one; not the alice/other one
    assert set(rows) == {minted["dev"]["id"], minted["unrestricted"]["id"]}
    assert minted["other"]["id"] not in rows
    for token_id, shown in rows.items():
        assert shown == expected[token_id]

    # and the other way round on alice/other
    click_footer_button(driver, "Close")
    rows = read_token_rows(open_index_tokens_modal(driver, server, f"{USER}/other"))
    assert set(rows) == {minted["other"]["id"], minted["unrestricted"]["id"]}


def test_issue_token_from_ui_then_revoke_it(server, minted, driver, tmp_path):
    index = f"{USER}/dev"
    before = set(listing(server))
    login(driver, server, USER, PASSWORD)
    open_index_tokens_modal(driver, server, index)

    # + Issue new → the form, locked to this index
    click_footer_button(driver, "+ Issue new")
    wait_for(driver, "the issue form", lambda d: js(
        d, "return document.getElementById('modal-title').textContent;")
        == f"Issue token for {index}" and d.find_elements(By.ID, "macaroon-issue-submit"))
    type_select = Select(driver.find_element(By.ID, "token-type-select"))
    type_select.select_by_value("devpi")
    # two permissions, not the form's default pair (pkg_read + upload)
    wanted_perms = {"pkg_read": False, "upload": True, "toxresult_upload": True}
    for perm, checked in wanted_perms.items():
        box = driver.find_element(By.ID, f"macaroon-perm-{perm}")
        if box.is_selected() != checked:
            box.click()
        assert box.is_selected() == checked
    Select(driver.find_element(By.ID, "macaroon-expires-select")).select_by_visible_text("7 days")
    screenshot(driver, tmp_path, "issue-form")
    clicked_at = int(time.time())
    driver.find_element(By.ID, "macaroon-issue-submit").click()
    result = wait_for(driver, "the issued token", lambda d: next(
        (r for r in d.find_elements(By.ID, "macaroon-issued-result")
         if r.is_displayed() and r.find_elements(By.CSS_SELECTOR, ".macaroon-issued-block")),
        None))
    answered_at = int(time.time())
    blocks = {text(b.find_element(By.CSS_SELECTOR, ".macaroon-issued-label")):
              text(b.find_element(By.CSS_SELECTOR, "pre"))
              for b in result.find_elements(By.CSS_SELECTOR, ".macaroon-issued-block")}
    screenshot(driver, tmp_path, "issued-token")
    token = blocks["Token (raw)"]
    assert token.startswith("devpi-"), blocks
    assert blocks["user : token (for curl -u, devpi login, custom tools)"] == f"{USER}:{token}"
    assert "pip.conf" not in blocks  # no pkg_read ticked, so no pip.conf offered
    assert f"password = {token}" in blocks[".pypirc"]

    # the server's listing has it, with what was ticked
    entries = listing(server)
    new_ids = set(entries) - before
    assert len(new_ids) == 1, new_ids
    token_id = new_ids.pop()
    entry = entries[token_id]
    # "7 days" from the browser's clock; valid from its creation on (the UI
    # sends no not_before, the server puts the creation time there)
    expires, not_before = entry["expires"], entry["not_before"]
    assert clicked_at + 7 * 86400 - 2 <= expires <= answered_at + 7 * 86400 + 2, entry
    assert not_before == entry["created"], entry
    assert clicked_at - 2 <= not_before <= answered_at + 2, entry
    assert sorted(entry["restrictions"]) == sorted([
        f"expires={expires}", f"not_before={not_before}", f"indexes={index}",
        "allowed=upload,toxresult_upload"]), entry
    assert entry["indexes"] == [index]
    assert entry["allowed"] == ["upload", "toxresult_upload"]
    assert entry["projects"] is None

    # it works for what it allows, and only that
    workdir = tmp_path / "dist"
    name = f"ui-{uuid.uuid4().hex[:8]}"
    wheel = write_wheel(workdir / name, name, "1.0")
    status, body = bearer_upload(server, token, wheel, name, "dev")
    assert status == 200, body
    files = ok_json(http(server, "GET", f"/{USER}/dev/{name}", basic=(USER, PASSWORD)))
    assert list(files["result"]) == ["1.0"]
    status, body = bearer_upload(server, token, wheel, name, "other")
    assert status == 403, body  # indexes=alice/dev
    # no pkg_read on the private index: refused (devpi-admin's tween answers
    # 404 "index not found" to an authenticated caller without read access)
    status, body = http(server, "GET", f"/{USER}/dev/+simple/", token=token)
    assert status in (403, 404), body
    api = ok_json(http(server, "GET", "/+api", token=token))
    assert api["result"]["authstatus"][:2] == ["ok", USER]

    # Done → back in the index's Tokens modal, the new row shows the same
    click_footer_button(driver, "Done")
    container = wait_for_index_tokens(driver, index)
    rows = read_token_rows(container)
    assert rows[token_id] == row(token_id, [index], ["upload", "toxresult_upload"], NO_VALUE,
                                 expires, not_before)
    assert set(rows) == {token_id, minted["dev"]["id"], minted["unrestricted"]["id"]}
    screenshot(driver, tmp_path, "index-tokens-modal-with-issued-token")

    # revoke it from the UI (confirm dialog accepted)
    revoke = [tr for tr in container.find_elements(By.CSS_SELECTOR, "tbody tr")
              if tr.find_element(By.CSS_SELECTOR, "td").get_attribute("title") == token_id]
    assert len(revoke) == 1
    revoke[0].find_element(By.XPATH, ".//button[text()='Revoke']").click()
    alert = wait_for(driver, "the confirm dialog", EC.alert_is_present())
    assert alert.text == f'Revoke Devpi token "{token_id[:12]}"?'
    alert.accept()
    wait_for(driver, "the revoked row to disappear", lambda d: js(
        d, "var c = document.getElementById('macaroon-index-tokens-list-container');"
           "return !!c && !!c.querySelector('table') && !c.querySelector("
           "'td[title=\"' + arguments[0] + '\"]');", token_id))
    rows = read_token_rows(driver.find_element(By.ID, "macaroon-index-tokens-list-container"))
    assert set(rows) == {minted["dev"]["id"], minted["unrestricted"]["id"]}
    screenshot(driver, tmp_path, "index-tokens-modal-after-revoke")

    assert token_id not in listing(server)
    other_name = f"ui-{uuid.uuid4().hex[:8]}"
    status, body = bearer_upload(server, token, write_wheel(workdir / other_name, other_name,
                                                            "1.0"), other_name, "dev")
    assert status == 401, body
    status, body = http(server, "GET", "/+api", token=token)
    assert status == 401, body
    # the other tokens are untouched
    assert {minted[k]["id"] for k in minted} <= set(listing(server))

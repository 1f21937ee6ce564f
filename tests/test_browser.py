"""The app in a real browser (Debian's Chromium through Playwright): type a prompt, Generate, watch labelled
segments stream in, Stop, and check that the page asked nothing of any host but this one."""

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import watch_runs
from xldemo.web.local import CHROMIUM, CHROMIUM_FLAGS

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TRICKY = "<b>not bold</b> ${value} {{value}} & "  # must show as typed: no markup, no template expansion

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                                              "(.ci/run installs it)")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def runs(monkeypatch):
    """The app's engine runs, at a pace where a person could press Stop mid-run: 200 tokens/s."""
    return watch_runs(monkeypatch, seconds_per_step=0.005)


def open_page(browser, url, width, height, hosts):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.on("request", lambda request: hosts.append(urlsplit(request.url)))
    page.goto(url)
    page.wait_for_selector("#generate button, button#generate", timeout=60_000)
    return page


def labels_count(page, selector: str) -> int:
    return page.locator(f"{selector} .xl-label").count()


def style(page, selector: str, name: str) -> str:
    return page.locator(selector).first.evaluate(f"e => getComputedStyle(e)[{name!r}]")


def wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def generated_length(page) -> int:
    return page.evaluate("() => [...document.querySelectorAll('#stream .xl-generated')]"
                         ".reduce((n, e) => n + e.textContent.length, 0)")


def test_generate_streams_labelled_segments_and_stop_stops(browser, app_url, runs):
    requests = []
    page = open_page(browser, app_url, 1366, 900, requests)
    prompt = page.locator("#prompt textarea")
    prompt.fill("")
    prompt.press_sequentially("ALONSO, King of Naples\n" + TRICKY, delay=5)
    page.get_by_text("Sampling", exact=True).click()
    max_tokens = page.locator("#max_new_tokens input[type=number]")
    max_tokens.fill("4096")
    max_tokens.press("Enter")
    page.locator("#generate").click()

    expect(page.locator("#stream .xl-generated").first).to_be_attached(timeout=30_000)
    first = labels_count(page, "#stream")
    page.wait_for_function(f"() => document.querySelectorAll('#stream .xl-label').length >= {first + 3}",
                           timeout=30_000)  # new segments keep arriving, each labelled
    stream_text = page.locator("#stream").inner_text()
    assert "segment 0" in stream_text and f"segment {first + 2}" in stream_text
    shown_prompt = page.evaluate("() => [...document.querySelectorAll('#stream .xl-prompt')]"
                                 ".map(e => e.textContent).join('')")
    assert shown_prompt == "ALONSO, King of Naples\n" + TRICKY  # escaped: shown as typed
    assert page.locator("#stream b").count() == 0
    assert style(page, "#stream .xl-prompt", "opacity") != style(page, "#stream .xl-generated", "opacity")
    assert style(page, "#stream .xl-label.xl-s0", "background-color") != \
        style(page, "#stream .xl-label.xl-s1", "background-color")  # neighbouring segments look different

    page.locator("#stop").click()
    expect(page.locator("#stats")).to_contain_text("Stopped", timeout=15_000)
    assert wait_until(lambda: runs["ended"] == ["closed"])  # the engine itself stopped, not just the display
    stopped_at = generated_length(page)
    time.sleep(1.0)
    assert generated_length(page) == stopped_at < 4096
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-laptop.png"), full_page=True)

    page.get_by_role("tab", name="Surprisal").click()
    page.locator("#score").click()
    expect(page.locator("#surprisal-summary")).to_contain_text("bits/byte saved by memory", timeout=30_000)
    expect(page.locator("#surprisal-off .xl-label").first).to_be_attached()
    max_tokens.fill("80")
    max_tokens.press("Enter")
    page.get_by_role("tab", name="Memory on/off").click()
    page.locator("#compare").click()
    expect(page.locator("#compare-stats")).to_contain_text("memory tokens with memory on", timeout=60_000)
    assert labels_count(page, "#memory-on") == labels_count(page, "#memory-off") > first
    page.close()
    assert {u.hostname for u in requests if u.scheme in ("http", "https", "ws", "wss")} <= LOOPBACK


def test_the_page_fits_a_phone(browser, app_url, tmp_path):
    requests = []
    page = open_page(browser, app_url, 390, 844, requests)
    top = {name: page.locator(selector).first.bounding_box()["y"]
           for name, selector in (("prompt", "#prompt"), ("generate", "#generate"), ("settings", ".xl-settings"))}
    assert top["prompt"] < top["generate"] < top["settings"], top  # Generate before the settings, not below them
    for name in ("Generate", "Memory on/off", "Surprisal", "Inside memory"):  # the tabs wrap, none in a menu
        expect(page.get_by_role("tab", name=name)).to_be_visible()
        assert page.get_by_role("tab", name=name).bounding_box()["x"] >= 0
    text = tmp_path / "scene.txt"
    text.write_text("MIRANDA.\nIf by your art, my dearest father, you have\n", encoding="utf-8")
    page.locator("input[type=file]").set_input_files(str(text))  # the Load a .txt file button
    expect(page.locator("#prompt textarea")).to_have_value(text.read_text(), timeout=15_000)
    page.get_by_role("button", name="The Tempest: cast list, then the storm").click()
    expect(page.locator("#prompt textarea")).to_have_value(re.compile("^THE TEMPEST"))
    page.locator("#generate").click()
    expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=60_000)
    assert labels_count(page, "#stream") > 3 * 256 // 16
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-phone.png"), full_page=True)
    page.close()
    assert {u.hostname for u in requests if u.scheme in ("http", "https", "ws", "wss")} <= LOOPBACK


@pytest.mark.parametrize("width, height", [(1280, 900), (390, 844)])
def test_hovering_a_generated_token_shows_its_alternatives_and_what_it_read(browser, app_url, width, height):
    requests = []
    page = open_page(browser, app_url, width, height, requests)
    page.locator("#prompt textarea").fill("ALONSO, King of Naples\nSEBASTIAN, his Brother\n" * 3)  # 138 bytes
    page.get_by_role("tab", name="Inside memory").click()
    page.locator("#inspect").click()
    expect(page.locator("#inspect-stats")).to_contain_text("reached", timeout=60_000)
    tokens = page.locator("#inspect-view .xl-t")
    assert tokens.count() == 400
    tip, lit = page.locator(".xl-tip"), page.locator("#inspect-view .xl-hit")
    # a byte that only starts a character shows nothing, a newline no box
    visible = page.locator("#inspect-view .xl-t", has_text=re.compile(r"\S"))
    from_memory = None
    for i in range(1, 40):  # the first token whose reading reaches into memory
        token = visible.nth(i)
        token.scroll_into_view_if_needed()
        token.click() if width < 720 else token.hover()
        expect(tip).to_be_visible()
        if page.locator("#inspect-view .xl-hit.xl-in-memory").count():
            from_memory = token
            break
    assert from_memory is not None, "no token among the first 40 read from memory"
    assert tip.locator(".xl-top tr").count() == 5 and "rank" in tip.locator("h4").inner_text()
    assert 1 <= lit.count() <= 8 and tip.locator(".xl-attended tr").count() == 8
    assert "memory" in tip.locator(".xl-attended").inner_text()
    position = int(from_memory.get_attribute("data-p"))
    segment_start = int(from_memory.get_attribute("data-s"))
    lit_positions = [int(p) for p in page.eval_on_selector_all("#inspect-view .xl-hit.xl-in-memory",
                                                                "spans => spans.map(s => s.dataset.p)")]
    assert all(p < segment_start < position for p in lit_positions)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-memory-view-{width}.png"))
    page.get_by_label("rank").check()  # a new colouring applies to what is shown, without a new run
    expect(page.locator("#inspect-view .xl-inspect")).to_have_attribute("data-colour", "rank")
    page.close()
    assert {u.hostname for u in requests if u.scheme in ("http", "https", "ws", "wss")} <= LOOPBACK

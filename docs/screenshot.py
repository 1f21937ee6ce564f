"""Retakes the README's screenshots: the app on a checkpoint (default: the shipped one), an example prompt generated to
its end in Debian's Chromium. python -m docs.screenshot [checkpoint] [--seed N] [--width W] [--view generate|memory]

--view generate (docs/screenshot.png): the Generate tab. --view memory (docs/memory-view.png and
docs/memory-sweep.png): the Inside memory tab with a token hovered that read from memory, then the memory sweep."""

import argparse
import re
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from xldemo.web.layout import build_demo, launch_options
from xldemo.web.local import CHROMIUM, CHROMIUM_FLAGS, ROOT, free_port
from xldemo.web.sources import configured_checkpoint

EXAMPLE = "The Tempest: cast list, then the storm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", nargs="?", default=configured_checkpoint())
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--view", choices=("generate", "memory"), default="generate")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNG files")
    parser.add_argument("--width", type=int, default=1366, help="viewport width in CSS pixels")
    parser.add_argument("--height", type=int, default=980, help="viewport height; a narrow page is taken whole")
    args = parser.parse_args()
    demo = build_demo(args.checkpoint)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("button", name=EXAMPLE).click()
            expect(page.locator("#prompt textarea")).to_have_value(re.compile("^THE TEMPEST"))
            page.get_by_text("Sampling", exact=True).click()
            seed = page.locator("#seed input")
            seed.fill(str(args.seed))
            seed.press("Enter")
            page.get_by_text("Sampling", exact=True).click()
            shots = (generate if args.view == "generate" else memory)(page, args)
            browser.close()
    finally:
        demo.close()
    print(*shots, sep="\n")


def generate(page, args) -> list[Path]:
    page.locator("#generate").click()
    expect(page.locator("#stats")).to_contain_text("reached", timeout=300_000)
    out = args.out / "screenshot.png"
    page.screenshot(path=str(out), full_page=args.width < 720)
    return [out]


def memory(page, args) -> list[Path]:
    page.get_by_role("tab", name="Inside memory").click()
    page.locator("#inspect").click()
    expect(page.locator("#inspect-stats")).to_contain_text("reached", timeout=300_000)
    page.get_by_label("attention on memory").check()
    tokens = page.locator("#inspect-view .xl-t:not(:empty)")
    # the first token after the prompt's segment that read from memory: a generated segment, a full memory behind it
    start = int(tokens.first.get_attribute("data-s"))
    for i in range(tokens.count()):
        token = tokens.nth(i)
        if int(token.get_attribute("data-s")) > start:
            token.scroll_into_view_if_needed()
            token.hover()
            if page.locator("#inspect-view .xl-hit.xl-in-memory").count():
                break
    view, sweep = args.out / "memory-view.png", args.out / "memory-sweep.png"
    page.screenshot(path=str(view), full_page=args.width < 720)
    page.mouse.move(0, 0)
    page.locator("#sweep").click()
    expect(page.locator("#sweep-summary")).to_contain_text("bits/token", timeout=300_000)
    page.locator("#sweep-plot").scroll_into_view_if_needed()
    page.locator("#sweep-plot").screenshot(path=str(sweep))
    return [view, sweep]


if __name__ == "__main__":
    main()

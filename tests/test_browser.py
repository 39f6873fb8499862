"""The page in a real headless Chromium (Playwright driving Debian's chromium) against the real stack."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path("/tmp")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (scripts/test.sh installs the Debian package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(locale="zh-TW", viewport={"width": 900, "height": 1100})
    pg = ctx.new_page()
    yield pg
    ctx.close()


def test_upload_a_face_and_see_the_verdict(page, web_stack, data_dir):
    face = sorted((data_dir / "test" / "fake").glob("*.jpg"))[3]
    page.goto(web_stack.bot.url + "/")
    assert "上傳一張有人臉的照片" in page.inner_text("header")
    page.set_input_files("#file", str(face))
    label = page.locator("#verdict-label")
    label.wait_for(state="visible", timeout=60_000)
    verdict = label.get_attribute("data-label")
    assert verdict in ("fake", "real", "unsure")
    words = {"fake": "很可能是 AI 生成的臉", "real": "看起來是真實照片", "unsure": "無法確定"}[verdict]
    assert label.inner_text() == words
    assert "AI 生成的機率" in page.inner_text("#verdict-prob")
    assert page.locator("#faces li").count() >= 1
    assert page.locator("#busy").is_hidden()
    page.locator("#marked").wait_for(state="visible", timeout=10_000)
    assert page.evaluate("document.getElementById('marked').naturalWidth") == 256
    page.screenshot(path=str(SHOTS / "zhenjia-page-zh.png"), full_page=True)

    page.click("#lang-en")  # the toggle re-renders the same verdict in English
    english = {"fake": "Probably a GAN-generated face", "real": "Looks like a real photo", "unsure": "Unsure"}
    assert label.inner_text() == english[verdict]
    assert "Probability it is generated" in page.inner_text("#verdict-prob")
    assert page.inner_text("#faces li >> nth=0").startswith("Face 1:")
    page.screenshot(path=str(SHOTS / "zhenjia-page-en.png"), full_page=True)


def test_a_non_image_shows_a_clear_error(page, web_stack, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a picture\n" * 20)
    page.goto(web_stack.bot.url + "/")
    page.click("#lang-en")
    page.set_input_files("#file", str(bad))
    err = page.locator("#error")
    err.wait_for(state="visible", timeout=20_000)
    assert "not an image or video format we can read" in err.inner_text()
    assert page.locator("#result").is_hidden()
    page.screenshot(path=str(SHOTS / "zhenjia-page-error.png"), full_page=True)

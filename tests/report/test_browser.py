"""report.html in a real headless browser (Debian's Chromium, driven by Playwright).

The page must load with no console error, list the groups, and show a group's k completions when
one is clicked; the filters must narrow the list as they say. CI installs Chromium (``.ci/run``);
elsewhere the tests skip when it or Playwright is missing.
"""

import os
import shutil

import pytest

from picorl.cli import main
from tests.report.run_folder import write_run

CHROMIUM = os.environ.get("PICORL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if os.environ.get("CI"):
    assert CHROMIUM, "CI must install chromium (see .ci/run)"
    from playwright.sync_api import sync_playwright
else:
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not CHROMIUM:
        pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def open_report(browser):
    pages = []

    def open_(path):
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: errors.append(f"network request {r.url}") if not r.url.startswith(("file:", "data:")) else None)  # fmt: skip
        page.goto(path.resolve().as_uri())
        pages.append(page)
        return page, errors

    yield open_
    for page in pages:
        page.close()


def group_rows(page, browser_id):
    return page.locator(f"#{browser_id} tr.group-row")


def test_report_of_a_tiny_training_run(tmp_path, monkeypatch, open_report):
    monkeypatch.chdir(tmp_path)
    args = ["--model", "tiny-qwen3", "--k", "4", "--num-tasks", "2", "--max-tokens", "8", "--eval-num-tasks",
            "2", "--eval-tiers", "1", "--sft-steps", "0", "--micro-batch-size", "8", "--num-updates", "2"]  # fmt: skip
    assert main(["train", *args, "--name", "br"]) == 0
    report = tmp_path / "runs" / "br" / "report.html"  # written by the training run itself
    page, errors = open_report(report)
    assert page.locator("#eval-table td").count() > 0
    assert page.locator("img.curves").evaluate("img => img.naturalWidth") > 0
    page.click("nav button[data-tab=rollouts]")
    assert group_rows(page, "rollout-browser").count() == 4  # 2 updates x 2 groups
    assert page.locator("#rollout-browser .member").count() == 0
    group_rows(page, "rollout-browser").nth(2).click()
    cards = page.locator("#rollout-browser .member")
    assert cards.count() == 4  # k completions
    assert "Update 2, group 0" in page.locator("#rollout-browser .detail h2").inner_text()
    for text in ("reward", "correct", "advantage", "length", "finish", "expected answer"):
        assert text in page.locator("#rollout-browser .detail").inner_text()
    page.click("nav button[data-tab=evals]")
    assert group_rows(page, "eval-browser").count() == 2
    group_rows(page, "eval-browser").first.click()
    assert page.locator("#eval-browser .member").count() == 2  # the task at step 0 and at step 2
    assert errors == []


def test_filters_diff_and_escaping(tmp_path, open_report):
    write_run(tmp_path / "run")
    assert main(["report", str(tmp_path / "run")]) == 0
    page, errors = open_report(tmp_path / "run" / "report.html")
    page.click("nav button[data-tab=rollouts]")
    rows = group_rows(page, "rollout-browser")
    assert rows.count() == 6
    page.select_option("#rollout-browser select[name=variance]", "zero")
    assert rows.count() == 2
    page.select_option("#rollout-browser select[name=outcome]", "all-correct")
    assert rows.count() == 1
    rows.first.click()
    assert page.locator("#rollout-browser .member.correct").count() == 4
    page.select_option("#rollout-browser select[name=variance]", "nonzero")
    page.select_option("#rollout-browser select[name=outcome]", "some-incorrect")
    page.select_option("#rollout-browser select[name=step]", "1")
    assert rows.count() == 1  # update 1, group 1: the mixed one
    rows.first.click()
    assert page.locator("#rollout-browser .member.correct").count() == 2
    assert page.locator("#rollout-browser .member.incorrect").count() == 2
    detail = page.locator("#rollout-browser .detail").inner_text()
    assert "window.pwned" in detail  # the injected completion is shown as text...
    assert page.evaluate("window.pwned") is None  # ...and never run
    assert page.locator("#rollout-browser .diff").count() == 4
    page.select_option("#rollout-browser select[name=tier]", "1")
    page.select_option("#rollout-browser select[name=step]", "all")
    page.select_option("#rollout-browser select[name=outcome]", "any")
    page.select_option("#rollout-browser select[name=variance]", "any")
    tiers = {rows.nth(i).locator("td").nth(2).inner_text() for i in range(rows.count())}
    assert tiers == {"1"}
    page.click("nav button[data-tab=evals]")
    page.select_option("#eval-browser select[name=outcome]", "some-correct")
    assert group_rows(page, "eval-browser").count() == 2
    page.click("nav button[data-tab=config]")
    assert 'model = "tiny-qwen3"' in page.locator("#config-text").inner_text()
    assert errors == []

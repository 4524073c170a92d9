"""Drives the server's browser page (GET /ui) in headless Chromium through chromedriver
(selenium), as a person would: the page loads without console errors, each of the seed
tester's four buttons shows its success mark, a prediction and a validation error (its
detail shown), a prediction with the keyboard alone, batch vs individual, the live charts,
a picture to ResNet-18 (when the repository has it) giving five labelled bars, and the page
at 360 px wide. Screenshots go to OUT_DIR and must not be blank.

Usage: check_ui.py BASE_URL OUT_DIR CHROMIUM CHROMEDRIVER [PICTURE]
"""

import os
import sys
import time
import urllib.request

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

# As slow as a busy CI machine may be: the benchmark button runs ten batches.
WAIT_SECS = 60

base_url, out_dir, chromium, chromedriver = sys.argv[1:5]
picture = sys.argv[5] if len(sys.argv) > 5 else None
os.makedirs(out_dir, exist_ok=True)
problems = []


def check(condition, message):
    if not condition:
        problems.append(message)
        print(f"FAIL: {message}", flush=True)
    return condition


def start_browser():
    options = Options()
    options.binary_location = chromium
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1500",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The chromedriver given: selenium must not look for (or download) one of its own.
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def wait_for_text(driver, selector, needles, what):
    """Waits until the element's text holds every needle; returns that text."""
    def holds(_):
        text = driver.find_element(By.CSS_SELECTOR, selector).text
        return text if all(n in text for n in needles) else False

    try:
        return WebDriverWait(driver, WAIT_SECS).until(holds)
    except Exception:
        text = driver.find_element(By.CSS_SELECTOR, selector).text
        check(False, f"{what}: {needles} not in {selector}: {text!r}")
        return text


def screenshot(driver, name):
    path = os.path.join(out_dir, f"{name}.png")
    driver.save_screenshot(path)
    with Image.open(path) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    distinct = len(colors) if colors is not None else 1 << 20
    check(distinct > 16, f"screenshot {name} is blank ({distinct} colours)")
    print(f"screenshot {path}: {distinct} colours", flush=True)


def tab_to(driver, selector, limit=80):
    """Presses Tab until the focused element matches `selector`; whether it ever did."""
    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.execute_script("return document.activeElement.matches(arguments[0])", selector):
            return True
    return False


def click(driver, label):
    button = driver.find_element(By.XPATH, f"//button[contains(normalize-space(.), '{label}')]")
    button.click()


def wait_until_ready():
    """Every model of the repository loaded (ResNet-18 takes a while)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/health/ready", timeout=5) as answer:
                if answer.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    check(False, "the server was not ready within 180 s")


wait_until_ready()
driver = start_browser()
try:
    driver.get(f"{base_url}/ui")
    WebDriverWait(driver, WAIT_SECS).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#models tr[data-name]")
    )
    models = [row.get_attribute("data-name")
              for row in driver.find_elements(By.CSS_SELECTOR, "#models tr[data-name]")]
    check("example_model" in models, f"the example model is not listed: {models}")
    screenshot(driver, "loaded")

    # The seed page's tester, its four buttons.
    click(driver, "Run Batch Example")
    wait_for_text(driver, "#quick-batch-result", ["✅ Batch Success!"], "Run Batch Example")
    click(driver, "Connectivity Test")
    wait_for_text(driver, "#batch-test-results", ["✅ Batch API is responsive"], "Connectivity Test")
    click(driver, "Benchmark (10x)")
    wait_for_text(driver, "#batch-test-results",
                  ["Success Rate: 100.0%", "Successful Batches: 10/10"], "Benchmark (10x)")
    click(driver, "Consistency Test")
    wait_for_text(driver, "#batch-test-results",
                  ["Successful Runs: 5/5", "Length Consistent: ✅ Yes", "Deterministic: ✅ Yes"],
                  "Consistency Test")
    screenshot(driver, "seed-tester")

    # A prediction, then a validation error whose detail the page shows.
    Select(driver.find_element(By.ID, "model-select")).select_by_value("example_model")
    field = driver.find_element(By.CSS_SELECTOR, "#inputs textarea")
    field.clear()
    field.send_keys("[2.0]")
    click(driver, "Predict")
    wait_for_text(driver, "#try-result", ["ms", "prediction"], "Predict")
    field.clear()
    field.send_keys("[1.0, 2.0]")
    click(driver, "Predict")
    wait_for_text(driver, "#try-error", ["422", "too many values"], "validation error")
    screenshot(driver, "validation-error")

    # The same with the keyboard only: Tab from the header to the field, type, Tab, Enter.
    driver.find_element(By.ID, "api-key").click()
    if check(tab_to(driver, "#inputs textarea"), "keyboard: Tab never reaches the input"):
        field = driver.switch_to.active_element
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("[3.0]")
        if check(tab_to(driver, "#try-form button[type=submit]", limit=5),
                 "keyboard: Tab does not go from the input to Predict"):
            ActionChains(driver).send_keys(Keys.ENTER).perform()
            wait_for_text(driver, "#try-result", ["ms", "prediction"], "Predict by keyboard")

    click(driver, "Compare")
    wait_for_text(driver, "#compare-result", ["batching is"], "batch vs individual")
    # The live panel has polled at least twice by now and counted the requests above.
    time.sleep(2.5)
    rps = driver.find_element(By.ID, "v-rps").text
    check(rps != "", "the live panel shows no requests/s")
    check(driver.find_element(By.ID, "live-error").text == "", "the live panel shows an error")
    screenshot(driver, "live")

    if picture and "resnet18" in models:
        Select(driver.find_element(By.ID, "model-select")).select_by_value("resnet18")
        driver.find_element(By.ID, "file").send_keys(os.path.abspath(picture))
        try:
            WebDriverWait(driver, WAIT_SECS).until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "#classes > div")) == 5
            )
            labels = [row.text for row in driver.find_elements(By.CSS_SELECTOR, "#classes > div")]
            check(all(label.strip() for label in labels), f"empty labels: {labels}")
            print(f"resnet18 top-5: {labels}", flush=True)
        except Exception:
            error = driver.find_element(By.ID, "try-error").text
            check(False, f"no five classes for the picture (error shown: {error!r})")
        screenshot(driver, "resnet18")
    else:
        print("resnet18 is not in the repository: the picture check is skipped", flush=True)

    # A phone's width: nothing wider than the screen.
    driver.set_window_size(360, 800)
    time.sleep(0.5)
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    # What sticks out, for the message (a table scrolls in its own box).
    widest = driver.execute_script(
        "const width = document.documentElement.clientWidth;"
        "return [...document.querySelectorAll('body *')]"
        ".filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > width + 0.5)"
        ".slice(0, 5).map(e => `${e.tagName}#${e.id}.${e.className}`).join(', ');")
    check(overflow <= 0, f"at 360 px the page is {overflow} px wider than the screen: {widest}")
    screenshot(driver, "narrow")

    # The browser logs the deliberate 422 above as a failed resource; anything else counts.
    errors = [entry for entry in driver.get_log("browser")
              if entry["level"] == "SEVERE" and "status of 422" not in entry["message"]]
    for entry in errors:
        check(False, f"console error: {entry['message']}")
finally:
    driver.quit()

if problems:
    sys.exit(1)
print("ui: every check passed", flush=True)

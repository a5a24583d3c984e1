"""The dashboard in a real browser: headless Chromium against `nexa up`.

Run with scripts/test-dashboard (it installs Chromium, chromedriver, selenium and pytest).
The binary is NEXA_BIN or target/debug/nexa. Screenshots go to target/dashboard-screenshots
(NEXA_SCREENSHOTS overrides) and are kept.

Every wait is bounded; the assertions are about what the page shows, never about timings.
"""

import hashlib
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
WAIT = 30  # seconds any one thing may take to show up
TRAIN = {
    "job_type": "train",
    "params": {"model_id": "m", "dataset_uri": "file:///tmp/x.csv", "epochs": 1},
}


def _binary():
    path = Path(os.environ.get("NEXA_BIN") or ROOT / "target" / "debug" / "nexa")
    if not path.is_file():
        pytest.fail(f"no nexa binary at {path}: run `cargo build -p nexa` or set NEXA_BIN")
    return path


def _shots_dir():
    path = Path(os.environ.get("NEXA_SCREENSHOTS") or ROOT / "target" / "dashboard-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Nexa:
    """`nexa up` with the test handler for train jobs, on free ports; with_token makes an
    API token first, which the API then requires; handlers=False leaves every job type to the
    worker's built-in stages (real datasets and models)."""

    def __init__(self, with_token=False, handlers=True):
        self.data = tempfile.TemporaryDirectory(prefix="nexa-dashboard-")
        data = Path(self.data.name) / "var"
        self.stderr_path = Path(self.data.name) / "nexa.stderr"
        self.stdout_lines = []
        self.token = self._create_token(data) if with_token else None
        handler = ["--handler", f"train=python3 {shlex.quote(str(HERE / 'handler.py'))}"] if handlers else []
        # Every checkpoint kept, so a short training run has several for the page to fold.
        handler += [] if handlers else ["--checkpoint-interval", "0"]
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [str(_binary()), "up", "--data", str(data),
             "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", *handler],
            stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL,
            env={**os.environ, "NEXA_LOG": os.environ.get("NEXA_LOG", "info")},
        )
        lines = queue.Queue()

        def read():
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self.stdout_lines.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.base = None
        deadline = time.monotonic() + WAIT
        while self.base is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                pytest.fail("nexa up printed no http://127.0.0.1:PORT/ address:\n" + self.output())
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.stop()
                pytest.fail(f"nexa up exited ({self.proc.poll()}) before printing its address:\n" + self.output())
            m = re.search(r"http://127\.0\.0\.1:(\d+)/?", line)
            if m:
                self.base = f"http://127.0.0.1:{m.group(1)}/"
        self._wait_healthy(deadline)

    @staticmethod
    def _create_token(data):
        out = subprocess.run([str(_binary()), "token", "create", "--data", str(data), "--name", "dashboard-test"],
                             capture_output=True, text=True, timeout=WAIT)
        assert out.returncode == 0, f"nexa token create failed ({out.returncode}): {out.stdout}{out.stderr}"
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        assert lines, f"nexa token create printed no token: {out.stdout!r} {out.stderr!r}"
        return lines[-1]

    def _wait_healthy(self, deadline):
        last = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"{self.base}healthz never answered 200 ({last}):\n" + self.output())

    def request(self, method, path, body=None, token=True):
        """(status, parsed JSON body) of an API call; HTTP errors are answers too."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path.lstrip("/"), data=data, method=method)
        if token and self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def submit(self, spec):
        status, job = self.request("POST", "api/jobs", spec)
        assert status == 201, f"POST /api/jobs {json.dumps(spec)}: expected 201 with the job, got {status}: {job}"
        assert isinstance(job, dict) and re.fullmatch(r"job-\d+", str(job.get("job_id"))), \
            f"POST /api/jobs answered a job without a job_id like job-7: {job}"
        return job["job_id"]

    def finished(self, job_id, timeout=120):
        """The job once it has finished, polled through the API."""
        deadline = time.monotonic() + timeout
        while True:
            status, job = self.request("GET", f"api/jobs/{job_id}")
            assert status == 200, f"GET /api/jobs/{job_id}: {status} {job}"
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"{job_id} is still {job['status']} after {timeout} s:\n" + self.output())
            time.sleep(0.2)

    def succeeded(self, spec, timeout=120):
        job = self.finished(self.submit(spec), timeout)
        assert job["status"] == "succeeded", f"{job['job_id']} ({spec['job_type']}): {job.get('error')}"
        return job

    def output(self):
        try:
            err = self.stderr_path.read_text(errors="replace")
        except OSError:
            err = ""
        return ("--- stdout ---\n" + "\n".join(self.stdout_lines[-40:]) +
                "\n--- stderr (tail) ---\n" + "\n".join(err.splitlines()[-60:]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        self.data.cleanup()


@pytest.fixture(scope="module")
def nexa():
    node = Nexa()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    chromium = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
    if os.path.exists(chromium):
        options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture()
def page(browser, nexa, request):
    """The browser, with failure diagnostics: a screenshot, the console and nexa's output."""
    browser.set_window_size(1280, 1000)
    yield Page(browser, nexa, request.node.name)


class Page:
    def __init__(self, driver, nexa, name):
        self.driver = driver
        self.nexa = nexa
        self.name = name

    def open(self, hash_=""):
        self.driver.get(self.nexa.base + hash_)

    def go(self, hash_):
        self.driver.execute_script("location.hash = arguments[0]", hash_)

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def text(self, selector):
        """textContent of the first match, or None; read in the page (no stale elements)."""
        return self.js("var e = document.querySelector(arguments[0]); return e ? e.textContent : null;", selector)

    def wait(self, what, condition, timeout=WAIT):
        last = [None]

        def check(_):
            try:
                last[0] = condition()
            except WebDriverException as e:
                last[0] = e
                return False
            return last[0]

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(check)
        except TimeoutException:
            shot = self.screenshot(f"failed-{self.name}")
            raise AssertionError(
                f"waited {timeout} s for {what}; last seen: {last[0]!r}\n"
                f"screenshot: {shot}\nbrowser console:\n{self.console()}\n{self.nexa.output()}"
            ) from None

    def screenshot(self, name):
        path = _shots_dir() / f"{name}.png"
        self.driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path

    def full_screenshot(self, name):
        """The whole page: the window is made as tall as the document for the shot."""
        height = self.js("return Math.max(document.documentElement.scrollHeight, 800)")
        size = self.driver.get_window_size()
        self.driver.set_window_size(size["width"], min(int(height) + 160, 6000))
        try:
            return self.screenshot(name)
        finally:
            self.driver.set_window_size(size["width"], size["height"])

    def console(self):
        try:
            return "\n".join(f"  {e['level']}: {e['message']}" for e in self.driver.get_log("browser")) or "  (empty)"
        except WebDriverException:
            return "  (unavailable)"

    def row_status(self, job_id):
        return self.text(f'#jobs-table tr[data-job-id="{job_id}"] .status')


def test_the_binary_serves_this_dashboard(nexa):
    """The page is embedded at build time: an older binary would test an older page."""
    with urllib.request.urlopen(nexa.base, timeout=10) as r:
        assert r.status == 200
        assert r.headers.get_content_type() == "text/html"
        served = r.read()
    source = (ROOT / "bin" / "src" / "http" / "dashboard.html").read_bytes()
    assert served == source, "the binary serves another dashboard.html than the source: rebuild (cargo build -p nexa)"


def test_a_job_appears_and_reaches_succeeded_in_the_table(page, nexa):
    page.open()
    page.wait("the jobs table", lambda: page.driver.find_element(By.ID, "jobs-table"))
    page.js("window.__sameDocument = true")
    job_id = nexa.submit(TRAIN)
    page.wait(f"the row of {job_id}", lambda: page.row_status(job_id) is not None)
    status = page.wait(f"{job_id} to be succeeded in the table",
                       lambda: (page.row_status(job_id) or "").strip() == "succeeded" and "succeeded")
    assert status == "succeeded"
    row = f'#jobs-table tr[data-job-id="{job_id}"]'
    assert page.text(row + " td:nth-child(2)").strip() == "train"
    assert page.text(row + " td:nth-child(5)").strip() == "local", "the worker column names the local worker"
    assert page.js("return window.__sameDocument === true"), "the table updated without a reload"
    page.screenshot("jobs")


def test_filters_keep_only_matching_jobs_and_show_in_the_url(page, nexa):
    job_id = nexa.submit(TRAIN)
    page.open()
    page.wait(f"{job_id} to succeed", lambda: (page.row_status(job_id) or "").strip() == "succeeded")
    Select(page.driver.find_element(By.ID, "filter-status")).select_by_value("failed")
    page.wait("the failed filter to hide the succeeded job", lambda: page.row_status(job_id) is None)
    assert "status=failed" in page.js("return location.hash")
    Select(page.driver.find_element(By.ID, "filter-status")).select_by_value("succeeded")
    page.wait(f"{job_id} under the succeeded filter", lambda: page.row_status(job_id) is not None)
    statuses = page.js("return [...document.querySelectorAll('#jobs-table tbody tr .status')].map(e => e.textContent.trim())")
    assert statuses and set(statuses) == {"succeeded"}, statuses
    # A reload keeps the filter (it lives in the URL).
    page.driver.refresh()
    page.wait(f"{job_id} after a reload with the filter", lambda: page.row_status(job_id) is not None)
    assert page.driver.find_element(By.ID, "filter-status").get_attribute("value") == "succeeded"
    page.go("#/jobs")


def test_polling_pauses_while_the_tab_is_hidden(page, nexa):
    page.open()
    page.wait("the table to load", lambda: page.text("#live-status").startswith("Live"))
    count = "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/jobs')).length"
    set_hidden = """
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => arguments[0]});
        document.dispatchEvent(new Event('visibilitychange'));"""
    page.js(set_hidden, True)
    time.sleep(0.5)  # a request already on its way may still land
    page.js("performance.clearResourceTimings()")
    time.sleep(3.5)  # more than two polling periods
    assert page.js(count) == 0, "the jobs list was fetched while the tab was hidden"
    page.js(set_hidden, False)
    page.wait("a fetch once the tab is visible again", lambda: page.js(count) > 0)


def test_job_detail_shows_spec_result_attempts_events_and_logs(page, nexa):
    job_id = nexa.submit(TRAIN)
    page.open()
    page.wait(f"the row of {job_id}", lambda: page.row_status(job_id) is not None)
    page.driver.find_element(By.CSS_SELECTOR, f'#jobs-table tr[data-job-id="{job_id}"] td:nth-child(2)').click()
    page.wait("the URL to name the job", lambda: page.js("return location.hash") == f"#/jobs/{job_id}")
    page.wait("the job detail", lambda: page.driver.find_element(By.ID, "job-detail").is_displayed())
    page.wait("the log lines", lambda: "training done" in (page.text("#job-logs") or ""))
    logs = page.text("#job-logs")
    for line in ("model m on file:///tmp/x.csv", "step 1/3", "step 3/3"):
        assert line in logs, f"{line!r} missing from the logs:\n{logs}"
    assert "NEXA_PROGRESS" not in logs, "progress lines are not log lines"
    page.wait("the logs to say the job finished",
              lambda: (page.text("#job-logs-status") or "").strip() == "finished: succeeded")
    page.wait("the status badge to say succeeded", lambda: (page.text("#job-status") or "").strip() == "succeeded")
    detail = page.text("#job-detail")
    assert '"dataset_uri": "file:///tmp/x.csv"' in detail, "the params are shown"
    assert "loss" in page.text("#job-outcome") and "0.1" in page.text("#job-outcome"), "the result's metrics are shown"
    page.wait("an attempt row", lambda: page.js("return document.querySelectorAll('#job-attempts tbody tr').length") >= 1)
    assert "local" in page.text("#job-attempts tbody tr")
    page.wait("events in the timeline", lambda: "succeeded" in (page.text("#job-events") or ""))
    assert page.driver.find_element(By.ID, "job-cancel").is_displayed() is False, "no cancel for a finished job"
    page.full_screenshot("job-detail")

    # The detail can be linked: loading the URL afresh shows the same job and its logs.
    page.open(f"#/jobs/{job_id}")
    page.driver.refresh()
    page.wait("the job after a reload", lambda: (page.text("#job-title") or "").strip() == job_id)
    page.wait("the logs after a reload", lambda: "training done" in (page.text("#job-logs") or ""))


def test_strings_from_the_api_are_shown_as_text(page, nexa):
    evil = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
    params = {**TRAIN["params"], "hyperparameters": {"note": evil}}
    job_id = nexa.submit({"job_type": "train", "params": params})
    page.open(f"#/jobs/{job_id}")
    page.wait("the log line with the note", lambda: evil in (page.text("#job-logs") or ""))
    page.wait("the params", lambda: "onerror" in (page.text("#job-spec") or ""))
    assert page.js("return document.querySelectorAll('#job-detail img, #job-detail b').length") == 0
    assert page.js("return window.__pwned === undefined")


def test_workers_view_lists_the_local_worker(page, nexa):
    page.open()
    page.driver.find_element(By.ID, "nav-workers").click()
    page.wait("the workers URL", lambda: page.js("return location.hash") == "#/workers")
    row = '#workers-table tr[data-worker-id="local"]'
    page.wait("the local worker's row", lambda: page.text(row) is not None)
    page.wait("the local worker to be alive", lambda: (page.text(row + " .status") or "").strip() == "alive")
    text = page.text(row)
    assert "train" in text, f"the local worker offers train jobs: {text}"
    page.wait("a last heartbeat like '3 s ago'",
              lambda: re.search(r"\d+ (s|min) ago", page.text(row + " .heartbeat") or ""))
    page.screenshot("workers")


def test_the_submit_form_creates_a_job_and_shows_validation_errors(page, nexa):
    page.open()
    panel = page.driver.find_element(By.ID, "submit-panel")
    if not panel.get_attribute("open"):
        panel.find_element(By.TAG_NAME, "summary").click()
    form = page.wait("the submit form", lambda: page.driver.find_element(By.ID, "submit-form").is_displayed())
    assert form
    Select(page.driver.find_element(By.ID, "submit-type")).select_by_value("train")
    params = page.driver.find_element(By.ID, "submit-params")
    example = json.loads(params.get_attribute("value"))
    assert {"model_id", "dataset_uri"} <= set(example), f"the train example has the required params: {example}"
    # The hint is the server's own definition of the params (GET /api/job_types).
    hint = page.wait("the params hint", lambda: page.text("#submit-params-hint") or None)
    assert hint.startswith("Required: model_id") and "epochs (" in hint and "learning_rate" in hint, hint
    Select(page.driver.find_element(By.ID, "submit-type")).select_by_value("distill")
    hint = page.text("#submit-params-hint")
    assert "alpha (" in hint and "prompt_template" in hint, hint
    Select(page.driver.find_element(By.ID, "submit-type")).select_by_value("train")

    # An invalid job (no dataset_uri): the API's message is shown next to the params.
    params.clear()
    params.send_keys(json.dumps({"model_id": "m", "epochs": 1}))
    page.driver.find_element(By.ID, "submit-button").click()
    message = page.wait("a validation error", lambda: page.js(
        "var a = document.getElementById('submit-params-error'), b = document.getElementById('submit-error');"
        "return (!a.hidden && a.textContent) || (!b.hidden && b.textContent) || null;"))
    assert "dataset_uri" in message, f"the error names the field: {message!r}"
    page.screenshot("submit-validation-error")

    # A valid one.
    params.clear()
    params.send_keys(json.dumps(TRAIN["params"]))
    page.driver.find_element(By.ID, "submit-button").click()
    link = page.wait("the submitted job's link",
                     lambda: page.driver.find_element(By.CSS_SELECTOR, "#submit-result a"))
    job_id = link.text.strip()
    assert re.fullmatch(r"job-\d+", job_id), job_id
    page.wait(f"the row of {job_id}", lambda: page.row_status(job_id) is not None)
    status, job = nexa.request("GET", f"api/jobs/{job_id}")
    assert status == 200 and job["job_type"] == "train" and job["params"]["model_id"] == "m", job
    page.wait(f"{job_id} to succeed", lambda: (page.row_status(job_id) or "").strip() == "succeeded")
    page.screenshot("submit-form")


def test_cancel_from_the_job_detail(page, nexa):
    job_id = nexa.submit({"job_type": "train", "params": {**TRAIN["params"], "epochs": 100}})
    page.open(f"#/jobs/{job_id}")
    page.wait("the long job's ticks in the logs", lambda: "tick 2" in (page.text("#job-logs") or ""))
    page.wait("the job to be running", lambda: (page.text("#job-status") or "").strip() == "running")
    button = page.wait("the cancel button", lambda: page.driver.find_element(By.ID, "job-cancel").is_displayed()
                       and page.driver.find_element(By.ID, "job-cancel"))
    button.click()
    page.wait("the confirmation", lambda: page.driver.switch_to.alert).accept()
    page.wait("the job to be cancelled", lambda: (page.text("#job-status") or "").strip() == "cancelled")
    page.wait("the logs to say the job finished",
              lambda: (page.text("#job-logs-status") or "").strip() == "finished: cancelled")
    assert not page.driver.find_element(By.ID, "job-cancel").is_displayed()
    page.wait("the error class", lambda: "cancelled" in (page.text("#job-outcome") or ""))
    page.screenshot("job-cancelled")
    # The jobs list says why it ended: the first line of its error.
    status, job = nexa.request("GET", f"api/jobs/{job_id}")
    assert status == 200 and job["error"], job
    first = job["error"]["message"].strip().split("\n")[0].strip()
    page.go("#/jobs")
    cell = f'#jobs-table tr[data-job-id="{job_id}"] td.reason'
    page.wait("the cancel reason in the row", lambda: (page.text(cell) or "").strip() == first)


def test_a_failed_job_says_why_in_the_list_and_folds_a_long_error(page, nexa):
    # One attempt only; the handler fails model "flaky"'s first attempt, quoting its output
    # (the note's three lines among it) in the message.
    job_id = nexa.submit({"job_type": "train", "max_attempts": 1, "params": {
        **TRAIN["params"], "model_id": "flaky", "hyperparameters": {"note": "one\ntwo\nthree"}}})
    job = nexa.finished(job_id)
    assert job["status"] == "failed", job
    lines = job["error"]["message"].strip().split("\n")
    assert len(lines) > 5 and any(ln.startswith("attempt 1 fails on purpose") for ln in lines), \
        f"a message long enough to fold: {lines}"

    # The list: the first line of the error, in the row's last column.
    page.open()
    cell = f'#jobs-table tr[data-job-id="{job_id}"] td.reason'
    page.wait(f"the first line of {job_id}'s error in its row", lambda: (page.text(cell) or "").strip() == lines[0].strip())
    assert page.js("return document.querySelectorAll(arguments[0] + ' *').length", cell) == 1, "text, no markup"
    page.screenshot("jobs-failed-reason")

    # The attempt's message keeps its lines: the first 4, and a button for all of them.
    error = job["attempts"][0]["outcome"]["error"]
    full = (f"{error['class']}: " + error["message"]).strip().split("\n")
    page.go(f"#/jobs/{job_id}")
    text = '#job-attempts tr[data-attempt="1"] .folded .msg-lines'
    page.wait("the failed attempt's message", lambda: page.text(text) is not None)
    assert page.text(text).split("\n") == full[:4], page.text(text)
    assert page.js("return getComputedStyle(document.querySelector(arguments[0])).whiteSpace", text) == "pre-wrap"
    more = page.driver.find_element(By.CSS_SELECTOR, '#job-attempts tr[data-attempt="1"] .folded button')
    assert more.text == f"Show all {len(full)} lines ({len(full) - 4} more)", more.text
    more.click()
    page.wait("every line", lambda: page.text(text).split("\n") == full)
    assert more.get_attribute("aria-expanded") == "true"
    page.full_screenshot("job-failed-attempt")
    more.click()
    page.wait("the first 4 lines again", lambda: page.text(text).split("\n") == full[:4])


def test_a_job_that_has_not_started_says_why_in_its_log_box(page, nexa):
    # The local worker runs one job at a time: while a long one runs, the next one queues.
    busy = nexa.submit({"job_type": "train", "params": {**TRAIN["params"], "epochs": 100}})
    deadline = time.monotonic() + WAIT
    while nexa.request("GET", f"api/jobs/{busy}")[1]["status"] != "running":
        assert time.monotonic() < deadline, f"{busy} never ran:\n" + nexa.output()
        time.sleep(0.1)
    job_id = nexa.submit(TRAIN)
    hint = "#job-logs-hint"
    page.open(f"#/jobs/{job_id}")
    page.wait("the hint and the pending reason in the log box",
              lambda: "waiting for a worker with free capacity" in (page.text(hint) or ""))
    assert page.text(hint).startswith("Logs appear here once a worker starts the job."), page.text(hint)
    page.screenshot("job-queued-logs")

    # A job no worker can run says so; once cancelled, it has no log lines and no hint.
    unfit = nexa.submit({**TRAIN, "resources": {"gpus": 8}})
    page.go(f"#/jobs/{unfit}")
    page.wait("the unfit job's reason", lambda: "no connected worker can run it" in (page.text(hint) or ""))
    status, body = nexa.request("POST", f"api/jobs/{unfit}/cancel", {"reason": "no such worker"})
    assert status == 200, body
    page.wait("the logs to end", lambda: (page.text("#job-logs-status") or "").strip() == "finished: cancelled")
    page.wait("the hint to go", lambda: page.text(hint) is None)
    assert "No log lines." in page.text("#job-logs")

    # Once the worker is free the job starts: its lines take the hint's place.
    page.go(f"#/jobs/{job_id}")
    page.wait("the hint again", lambda: page.text(hint) is not None)
    status, body = nexa.request("POST", f"api/jobs/{busy}/cancel", {"reason": "make room"})
    assert status == 200, body
    page.wait("the queued job's lines", lambda: "training done" in (page.text("#job-logs") or ""), timeout=60)
    assert page.text(hint) is None and "Logs appear here" not in page.text("#job-logs")


def test_a_retried_job_shows_its_attempts_and_their_logs(page, nexa):
    job_id = nexa.submit({"job_type": "train", "params": {**TRAIN["params"], "model_id": "flaky"}})
    page.open(f"#/jobs/{job_id}")
    page.wait("the second attempt to succeed", lambda: (page.text("#job-status") or "").strip() == "succeeded")
    rows = page.wait("two attempt rows", lambda: (lambda r: len(r) == 2 and r)(page.js(
        "return [...document.querySelectorAll('#job-attempts tbody tr')].map(e => e.textContent)")))
    assert "failed" in rows[0] and "stage_error" in rows[0], rows[0]
    assert "succeeded" in rows[1], rows[1]
    page.wait("the live logs to finish", lambda: (page.text("#job-logs-status") or "").strip() == "finished: succeeded")
    assert f"starting {job_id} attempt 2" in page.text("#job-logs")
    page.wait("the attempt picker", lambda: page.driver.find_element(By.ID, "job-logs-attempt").is_displayed())
    Select(page.driver.find_element(By.ID, "job-logs-attempt")).select_by_value("1")
    page.wait("attempt 1's logs", lambda: "attempt 1 fails on purpose" in (page.text("#job-logs") or ""))
    assert "training done" not in page.text("#job-logs")
    page.full_screenshot("job-retried")


def test_a_server_with_tokens_asks_for_one(browser):
    secured = Nexa(with_token=True)
    try:
        status, body = secured.request("GET", "api/jobs", token=False)
        assert status == 401, f"GET /api/jobs without a token: expected 401, got {status}: {body}"
        page = Page(browser, secured, "token")
        browser.set_window_size(1280, 1000)
        page.open()
        page.wait("the token field", lambda: page.driver.find_element(By.ID, "auth-token").is_displayed())
        page.screenshot("token-prompt")
        page.driver.find_element(By.ID, "auth-token").send_keys(secured.token)
        page.driver.find_element(By.CSS_SELECTOR, "#auth-form button[type=submit]").click()
        job_id = secured.submit(TRAIN)
        page.wait(f"{job_id} to succeed", lambda: (page.row_status(job_id) or "").strip() == "succeeded")
        assert not page.driver.find_element(By.ID, "auth-panel").is_displayed()
        assert page.js("return localStorage.getItem('nexa-forge.api-token')") == secured.token
        # EventSource cannot send the token: the logs are polled instead.
        page.go(f"#/jobs/{job_id}")
        page.wait("the logs, polled with the token", lambda: "training done" in (page.text("#job-logs") or ""))
        page.wait("the logs to say the job finished",
                  lambda: (page.text("#job-logs-status") or "").strip() == "finished: succeeded")
    finally:
        secured.stop()


def test_narrow_screen(page, nexa):
    job_id = nexa.submit(TRAIN)
    page.driver.set_window_size(420, 900)
    page.open()
    page.wait(f"the row of {job_id}", lambda: page.row_status(job_id) is not None)
    overflow = page.js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, f"the page scrolls sideways by {overflow}px at 420px"
    page.screenshot("narrow-jobs")
    page.go(f"#/jobs/{job_id}")
    page.wait("the logs", lambda: "training done" in (page.text("#job-logs") or ""))
    page.screenshot("narrow-job-detail")


@pytest.fixture(scope="module")
def builtin():
    """A second `nexa up` with no handlers: train jobs run the built-in stage and register
    real models."""
    node = Nexa(handlers=False)
    yield node
    node.stop()


def _download(url):
    """(bytes, Content-Disposition) of a download link, fetched as the browser would."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200, f"GET {url}: {r.status}"
        return r.read(), r.headers.get("Content-Disposition") or ""


def test_models_page_lists_a_trained_model_and_the_job_page_its_artifacts(browser, builtin):
    page = Page(browser, builtin, "models")
    browser.set_window_size(1280, 1000)
    generated = builtin.succeeded({"job_type": "generate", "params": {"domain": "physics", "num_samples": 400, "seed": 3}})
    dataset = generated["result"]["artifacts"]["dataset"]
    trained = builtin.succeeded({"job_type": "train", "params": {
        "model_id": "dash-model", "dataset_uri": dataset, "epochs": 2,
        "hyperparameters": {"base": "student_small", "batch_size": 32}}})
    model_sha = trained["result"]["artifacts"]["model"].rsplit("/", 1)[1]
    evaluated = builtin.succeeded({"job_type": "evaluate", "params": {"model_id": "dash-model", "dataset_uri": dataset}})
    gen_id, train_id, eval_id = generated["job_id"], trained["job_id"], evaluated["job_id"]

    # The models list: the model, its version count, who made the latest, its metrics.
    page.open("#/models")
    row = '#models-table tr[data-model-name="dash-model"]'
    page.wait("the model's row", lambda: page.text(row) is not None)
    assert page.js("return document.getElementById('nav-models').getAttribute('aria-current')") == "page"
    assert page.text(row + " .versions").strip() == "1"
    made_by = page.text(row + " .made-by")
    assert "train" in made_by and train_id in made_by, made_by
    assert "test_score" in page.text(row + " .metrics-cell"), page.text(row)
    page.wait("the evaluation in the list", lambda: eval_id in (page.text(row + " .evaluations") or ""))
    page.screenshot("models")

    # A click on the row opens the model: its version, what made it, its data and lineage.
    page.driver.find_element(By.CSS_SELECTOR, row + " td.versions").click()
    page.wait("the model's URL", lambda: page.js("return location.hash") == "#/models/dash-model")
    version = '#model-versions tr[data-version="1"]'
    page.wait("version 1", lambda: page.text(version) is not None)
    assert "dash-model:1" in page.text(version)
    assert page.js("return document.querySelector(arguments[0]).getAttribute('href')",
                   version + f' .made-by a[href="#/jobs/{train_id}"]') == f"#/jobs/{train_id}"
    dataset_cell = page.text(version + " .dataset")
    assert ".parquet" in dataset_cell and gen_id in dataset_cell, f"the dataset and the job that made it: {dataset_cell}"
    page.wait("the evaluation with its accuracy",
              lambda: "accuracy" in (page.text(version + f' .evaluations [data-evaluation="{eval_id}"]') or ""))
    assert (page.text(version + " .teacher") or "").strip() == "—", "a trained model has no teacher"
    dataset_link = page.driver.find_element(By.CSS_SELECTOR, version + " .dataset a.download")
    data, _ = _download(dataset_link.get_attribute("href"))
    assert data[:4] == b"PAR1" and hashlib.sha256(data).hexdigest() == dataset.rsplit("/", 1)[1]
    page.full_screenshot("model-detail")

    # The train job's page: what it kept, each with a download link, and the version it made.
    page.driver.find_element(By.CSS_SELECTOR, version + f' .made-by a[href="#/jobs/{train_id}"]').click()
    page.wait("the train job's URL", lambda: page.js("return location.hash") == f"#/jobs/{train_id}")
    model_row = f'#job-artifacts-table tr[data-sha256="{model_sha}"]'
    page.wait("the model among the job's artifacts", lambda: page.text(model_row) is not None)
    assert "model" in page.text(model_row + ' td[data-label="Kind"]')
    assert "dash-model.safetensors" in page.text(model_row)
    assert re.search(r"\d+(\.\d+)? (B|KiB|MiB)", page.text(model_row + ' td[data-label="Size"]'))
    kinds = page.js("return [...document.querySelectorAll('#job-artifacts-table tbody tr')].map(r => r.dataset.kind)")
    assert kinds[0] == "model" and "checkpoint" in kinds, f"the model, then the latest checkpoints: {kinds}"
    status, listed = builtin.request("GET", f"api/jobs/{train_id}/artifacts")
    assert status == 200, listed
    steps = sorted((a["step"] for a in listed["artifacts"] if a["kind"] == "checkpoint"), reverse=True)
    assert len(steps) > 3, f"enough checkpoints to fold some away: {steps}"
    shown = "return [...document.querySelectorAll('#job-artifacts-table tr[data-kind=checkpoint] td[data-label=Kind]')].map(e => e.textContent)"
    assert page.js(shown) == [f"checkpoint step {s}" for s in steps[:3]], "the latest three, the latest first"
    page.driver.find_element(By.ID, "job-artifacts-more").click()
    page.wait("every checkpoint", lambda: len(page.js(shown)) == len(steps))
    link = page.driver.find_element(By.CSS_SELECTOR, model_row + " a.download")
    href = link.get_attribute("href")
    assert href == builtin.base + f"api/artifacts/{model_sha}/content", href
    data, disposition = _download(href)
    assert hashlib.sha256(data).hexdigest() == model_sha, "the link downloads the very file"
    assert "dash-model.safetensors" in disposition, disposition
    page.wait("the link to the version it registered",
              lambda: (page.text("#job-model-link") or "").strip() == "dash-model:1")
    page.full_screenshot("job-artifacts")
    page.driver.find_element(By.ID, "job-model-link").click()
    page.wait("the version, marked", lambda: page.js(
        "var r = document.querySelector('#model-versions tr[data-version=\"1\"]'); return !!r && r.classList.contains('current')"))
    assert page.js("return location.hash") == "#/models/dash-model?version=1"

    # The evaluate job's page names the version it scored; the generate job's lists its dataset.
    page.go(f"#/jobs/{eval_id}")
    page.wait("the scored version", lambda: (page.text("#job-model-link") or "").strip() == "dash-model:1")
    page.go(f"#/jobs/{gen_id}")
    page.wait("the dataset among the generate job's artifacts",
              lambda: page.js("return [...document.querySelectorAll('#job-artifacts-table tbody tr')].map(r => r.dataset.kind)") == ["dataset"])

    # An unknown model says so, naming those that exist.
    page.go("#/models/nobody")
    page.wait("the not-found message", lambda: "dash-model" in (page.text("#model-error") or ""))

    # Narrow screens: the tables fold into cards; nothing scrolls sideways.
    page.driver.set_window_size(420, 900)
    overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    for hash_, ready in (("#/models", row), (f"#/models/dash-model", version),
                         (f"#/jobs/{train_id}", model_row)):
        page.go(hash_)
        page.wait(f"{hash_} at 420px", lambda: page.text(ready) is not None)
        assert page.js(overflow) <= 1, f"{hash_} scrolls sideways by {page.js(overflow)}px at 420px"
    page.screenshot("narrow-model")


def test_a_download_link_sends_the_token(browser, tmp_path):
    """A plain link cannot carry the API token: with one in use the page fetches the bytes
    itself and hands them to the browser, under the artifact's name."""
    secured = Nexa(with_token=True, handlers=False)
    page = None
    try:
        job = secured.succeeded({"job_type": "generate", "params": {"domain": "physics", "num_samples": 200}})
        sha = job["result"]["artifacts"]["dataset"].rsplit("/", 1)[1]
        status, _ = secured.request("GET", f"api/artifacts/{sha}/content", token=False)
        assert status == 401, "the bytes need the token too"
        browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
        page = Page(browser, secured, "token-download")
        browser.set_window_size(1280, 1000)
        page.open()
        page.js("localStorage.setItem('nexa-forge.api-token', arguments[0])", secured.token)
        page.open(f"#/jobs/{job['job_id']}")
        page.driver.refresh()
        row = f'#job-artifacts-table tr[data-sha256="{sha}"]'
        page.wait("the dataset's row", lambda: page.text(row) is not None)
        page.driver.find_element(By.CSS_SELECTOR, row + " a.download").click()
        done = page.wait("the downloaded file", lambda: [p for p in tmp_path.iterdir() if p.suffix != ".crdownload"])
        assert [p.name for p in done] == ["physics_projectile.parquet"]
        assert hashlib.sha256(done[0].read_bytes()).hexdigest() == sha
        assert page.js("return document.getElementById('notice').hidden"), page.text("#notice")
    finally:
        browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "default"})
        if page is not None:
            page.js("localStorage.removeItem('nexa-forge.api-token')")
        secured.stop()


def test_endpoints_view_says_when_nothing_is_deployed(page, nexa):
    page.open()
    page.driver.find_element(By.ID, "nav-endpoints").click()
    page.wait("the endpoints URL", lambda: page.js("return location.hash") == "#/endpoints")
    page.wait("the empty-state message", lambda: page.driver.find_element(By.ID, "endpoints-empty").is_displayed())
    assert "Nothing is deployed" in page.text("#endpoints-empty")
    assert page.js("return document.querySelectorAll('#endpoints-body tr').length") == 0
    assert page.js("return document.getElementById('nav-endpoints').getAttribute('aria-current')") == "page"
    assert page.js("return document.title") == "Endpoints · Nexa Forge"
    assert page.js("return document.getElementById('endpoints-error').hidden"), page.text("#endpoints-error")
    page.screenshot("endpoints-empty")


def test_endpoints_view_lists_a_deployed_model_until_it_is_undeployed(browser, builtin):
    page = Page(browser, builtin, "endpoints")
    browser.set_window_size(1280, 1000)
    generated = builtin.succeeded({"job_type": "generate", "params": {"domain": "physics", "num_samples": 400, "seed": 5}})
    builtin.succeeded({"job_type": "train", "params": {
        "model_id": "dash-served", "dataset_uri": generated["result"]["artifacts"]["dataset"], "epochs": 2}})
    job_id = builtin.submit({"job_type": "deploy", "params": {"model_id": "dash-served", "target": "dash-api"}})
    try:
        page.open("#/endpoints")
        row = '#endpoints-table tr[data-endpoint-name="dash-api"]'
        page.wait("the endpoint's row", lambda: page.text(row) is not None)
        page.wait("its replica to be ready", lambda: (page.text(row + " td.ready") or "").strip() == "1 / 1")
        replica = row + f' .replica[data-job-id="{job_id}"]'
        page.wait("the replica's ready state", lambda: (page.text(replica + " .ready-state") or "").strip() == "ready")
        assert (page.text(replica + " .badge.s-running") or "").strip() == "running"
        assert (page.text(replica + " a.worker") or "").strip() == "local"
        assert page.js("return document.querySelector(arguments[0]).getAttribute('href')",
                       replica + " a[href^='#/jobs/']") == f"#/jobs/{job_id}"
        assert page.js("return document.querySelector(arguments[0]).getAttribute('href')",
                       row + " td.model a") == "#/models/dash-served"
        urls = page.text(row + " .predict-url")
        assert builtin.base + "api/endpoints/dash-api/predict" in urls, urls
        assert builtin.base + "v2/models/dash-api/infer" in page.text(row + " .infer-url")
        assert page.driver.find_element(By.ID, "endpoints-empty").is_displayed() is False
        assert (page.text("#endpoints-count") or "").strip() == "1 ready of 1"
        page.screenshot("endpoints")

        page.driver.set_window_size(420, 900)
        overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        assert page.js(overflow) <= 1, f"the endpoints view scrolls sideways by {page.js(overflow)}px at 420px"
        page.screenshot("narrow-endpoints")
        browser.set_window_size(1280, 1000)

        # The replica's job link opens the deploy job.
        page.driver.find_element(By.CSS_SELECTOR, replica + " a[href^='#/jobs/']").click()
        page.wait("the deploy job's URL", lambda: page.js("return location.hash") == f"#/jobs/{job_id}")
        page.wait("the deploy job", lambda: (page.text("#job-title") or "").strip() == job_id)
        page.go("#/endpoints")
        page.wait("the endpoint's row again", lambda: page.text(row) is not None)
        # Undeploy, from the row: every replica's job is cancelled.
        page.driver.find_element(By.CSS_SELECTOR, row + " button.undeploy").click()
        page.driver.switch_to.alert.accept()
    finally:
        builtin.request("DELETE", "api/endpoints/dash-api")
    assert builtin.finished(job_id)["status"] == "cancelled"
    assert builtin.finished(job_id)["error"]["message"] == 'endpoint "dash-api" undeployed'
    # The row goes, the empty state shows.
    page.wait("the row to go", lambda: page.text(row) is None)
    page.wait("the empty-state message", lambda: page.driver.find_element(By.ID, "endpoints-empty").is_displayed())


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))


def test_an_audit_shows_its_verdict_and_findings(page, nexa):
    # The data folder is one of the local worker's data roots.
    data = Path(nexa.data.name) / "var" / "copies.csv"
    data.write_text("x,y\n1,a\n1,a\n1,a\n")
    job_id = nexa.submit({"job_type": "audit", "params": {"dataset_uri": str(data), "label_column": "y"}})
    page.open(f"#/jobs/{job_id}")
    verdict = page.wait("the audit's verdict", lambda: page.text("#job-verdict"))
    assert verdict.strip() == "verdict: problems", verdict
    findings = page.text("#job-findings")
    assert "repeat an earlier row" in findings and "the same class" in findings, findings
    page.screenshot("audit-verdict")


# Pipelines: a DAG of job and gate steps (POST /api/pipelines), its runs listed and drawn.

PIPELINE = {"name": "dash-physics", "steps": {
    "generate": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 400, "seed": 5}},
    "audit": {"job_type": "audit", "params": {"dataset_uri": "${generate.artifacts.dataset}"}},
    "enough_rows": {"gate": {"on": "audit", "min_rows": 100}},
    "train": {"job_type": "train", "needs": ["enough_rows"], "params": {
        "model_id": "dash-pl", "dataset_uri": "${generate.artifacts.dataset}", "epochs": 1}},
    "evaluate": {"job_type": "evaluate", "params": {
        "model_id": "${train.model}", "dataset_uri": "${generate.artifacts.dataset}"}},
    # One epoch on 400 rows is nowhere near this: the gate stops the run.
    "accurate": {"gate": {"on": "evaluate", "min_metrics": {"accuracy": 0.999}}},
}}
# Each step's column: 1 + the deepest step it needs.
PIPELINE_DEPTHS = {"generate": 0, "audit": 1, "enough_rows": 2, "train": 3, "evaluate": 4, "accurate": 5}
OVERFLOW = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"


def _pipeline_ended(node, run_id, timeout=120):
    """The run once it has ended, polled through the API."""
    deadline = time.monotonic() + timeout
    while True:
        status, run = node.request("GET", f"api/pipelines/{run_id}")
        assert status == 200, f"GET /api/pipelines/{run_id}: {status} {run}"
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        if time.monotonic() > deadline:
            pytest.fail(f"{run_id} is still {run['status']} after {timeout} s: {run}\n" + node.output())
        time.sleep(0.2)


def _step_statuses(page):
    return page.js("return Object.fromEntries([...document.querySelectorAll('#pipeline-dag .step')]"
                   ".map(e => [e.dataset.step, e.dataset.status]))")


# Boxes that overlap one another, and edges that cross a box (sampled every 3px along each
# path, its ends excepted): the drawing must leave every box's text readable.
DAG_CLASHES = """
    var dag = document.querySelector('#pipeline-dag .dag');
    var boxes = [...dag.querySelectorAll('.step')].map(e => ({name: e.dataset.step,
        l: e.offsetLeft, t: e.offsetTop, r: e.offsetLeft + e.offsetWidth, b: e.offsetTop + e.offsetHeight}));
    var clashes = [];
    boxes.forEach((a, i) => boxes.slice(i + 1).forEach(b => {
        if (a.l < b.r && b.l < a.r && a.t < b.b && b.t < a.b) clashes.push('boxes ' + a.name + ' and ' + b.name);
    }));
    dag.querySelectorAll('svg path').forEach(p => {
        var len = p.getTotalLength();
        for (var s = 3; s < len - 3; s += 3) {
            var pt = p.getPointAtLength(s);
            boxes.forEach(b => {
                if (pt.x > b.l + 1 && pt.x < b.r - 1 && pt.y > b.t + 1 && pt.y < b.b - 1)
                    clashes.push('edge ' + p.dataset.from + '->' + p.dataset.to + ' crosses ' + b.name);
            });
        }
    });
    return [...new Set(clashes)];
"""


@pytest.fixture(scope="module")
def failed_pipeline(builtin):
    """PIPELINE run to its end on the built-in stages: it fails at its last gate."""
    status, run = builtin.request("POST", "api/pipelines", PIPELINE)
    assert status == 201, f"POST /api/pipelines: expected 201 with the run, got {status}: {run}"
    assert re.fullmatch(r"pl-\d+", run["pipeline_id"]), run
    run = _pipeline_ended(builtin, run["pipeline_id"])
    assert run["status"] == "failed" and run["failed_step"] == "accurate", run
    return run


def test_pipelines_view_says_when_no_pipeline_has_run(page, nexa):
    page.open()
    page.driver.find_element(By.ID, "nav-pipelines").click()
    page.wait("the pipelines URL", lambda: page.js("return location.hash") == "#/pipelines")
    page.wait("the empty-state message", lambda: page.driver.find_element(By.ID, "pipelines-empty").is_displayed())
    assert "No pipeline runs yet" in page.text("#pipelines-empty")
    assert page.js("return document.querySelectorAll('#pipelines-body tr').length") == 0
    assert page.js("return document.getElementById('nav-pipelines').getAttribute('aria-current')") == "page"
    assert page.js("return document.title") == "Pipelines · Nexa Forge"
    assert page.js("return document.getElementById('pipelines-error').hidden"), page.text("#pipelines-error")
    page.screenshot("pipelines-empty")


def test_a_pipeline_run_is_listed_and_drawn_as_a_graph(browser, builtin, failed_pipeline):
    page = Page(browser, builtin, "pipeline")
    browser.set_window_size(1280, 1000)
    run = failed_pipeline
    run_id = run["pipeline_id"]
    steps = {s["name"]: s for s in run["steps"]}
    assert list(steps) == list(PIPELINE_DEPTHS), f"the steps in DAG order: {list(steps)}"
    edges = sorted((need, s["name"]) for s in run["steps"] for need in s["needs"])
    assert len(edges) == 7, edges  # train and evaluate also need generate (their references)

    # The list: the run, its status, how far it got, where it failed.
    page.open("#/pipelines")
    row = f'#pipelines-table tr[data-pipeline-id="{run_id}"]'
    page.wait("the run's row", lambda: page.text(row) is not None)
    assert page.text(row + " .status").strip() == "failed"
    assert page.text(row + ' td[data-label="Name"]').strip() == "dash-physics"
    assert page.text(row + " .steps").strip() == "5 of 6"
    assert "accurate" in page.text(row + " .failed-step") and "accuracy" in page.text(row + " .failed-step")
    assert page.text(row + " .rerun-of").strip() == "—"
    assert page.js("return document.querySelector(arguments[0]).getAttribute('href')", row + " td.id a") \
        == f"#/pipelines/{run_id}"
    assert not page.driver.find_element(By.ID, "pipelines-empty").is_displayed()
    page.screenshot("pipelines")

    # A click on the row opens the run.
    page.driver.find_element(By.CSS_SELECTOR, row + ' td[data-label="Name"]').click()
    page.wait("the run's URL", lambda: page.js("return location.hash") == f"#/pipelines/{run_id}")
    page.wait("every step's box", lambda: len(_step_statuses(page)) == len(steps))
    assert page.js("return document.title") == f"{run_id} · Pipelines · Nexa Forge"
    assert page.js("return document.getElementById('nav-pipelines').getAttribute('aria-current')") == "page"
    assert page.text("#pipeline-status").strip() == "failed"
    assert _step_statuses(page) == {name: s["status"] for name, s in steps.items()}
    assert _step_statuses(page) == {**{name: "succeeded" for name in steps}, "accurate": "failed"}
    box = '#pipeline-dag .step[data-step="{}"]'.format
    depths = page.js("return Object.fromEntries([...document.querySelectorAll('#pipeline-dag .step')]"
                     ".map(e => [e.dataset.step, +e.dataset.depth]))")
    assert depths == PIPELINE_DEPTHS, depths
    # Columns left to right by depth, each box right of every step it needs.
    lefts = page.js("return Object.fromEntries([...document.querySelectorAll('#pipeline-dag .step')]"
                    ".map(e => [e.dataset.step, [e.offsetLeft, e.offsetLeft + e.offsetWidth]]))")
    for need, name in edges:
        assert lefts[need][1] < lefts[name][0], f"{need} is left of {name}: {lefts}"

    # Each job step links its job; the gates say what they checked and what they found.
    for name, s in steps.items():
        if s["kind"] == "job":
            assert page.js("return document.querySelector(arguments[0]).getAttribute('href')",
                           box(name) + " a[href^='#/jobs/']") == f"#/jobs/{s['job_id']}", name
            assert (page.text(box(name) + " .type") or "").strip() == s["job_type"]
        else:
            assert (page.text(box(name) + " .type") or "").strip() == "gate"
            assert page.js("return document.querySelectorAll(arguments[0]).length", box(name) + " a[href^='#/jobs/']") == 0
    assert "passed" in page.text(box("enough_rows") + " .verdict")
    assert "rows ≥ 100" in page.text(box("enough_rows") + " .checks")
    reasons = steps["accurate"]["gate"]["reasons"]
    assert reasons and page.js("return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)",
                               box("accurate") + " .verdict li") == reasons
    assert "accuracy ≥ 0.999" in page.text(box("accurate") + " .checks")
    # The train step's model and the generated dataset's URI.
    assert page.js("return document.querySelector(arguments[0]).getAttribute('href')",
                   box("train") + " .model a") == "#/models/dash-pl?version=1"
    dataset = steps["generate"]["outputs"]["artifacts"]["dataset"]
    assert page.text(box("generate") + ' [data-artifact="dataset"] .uri') == dataset
    assert page.js("return document.querySelector(arguments[0]).getAttribute('href')",
                   box("generate") + ' [data-artifact="dataset"] a.download') \
        == f"api/artifacts/{dataset.rsplit('/', 1)[1]}/content"
    # Nothing after the failed gate: it is the last column, and no edge leaves it.
    assert max(depths.values()) == depths["accurate"]
    assert page.js("return document.querySelectorAll('#pipeline-dag svg path[data-from=\"accurate\"]').length") == 0

    # The edges: one path per need, from it to the step that needs it; none crosses a box.
    drawn = page.js("return [...document.querySelectorAll('#pipeline-dag svg path')].map(p => [p.dataset.from, p.dataset.to])")
    assert sorted(map(tuple, drawn)) == edges, drawn
    assert page.js("return document.querySelectorAll('#pipeline-dag svg path').length") == len(edges)
    assert page.js("return [...document.querySelectorAll('#pipeline-dag svg path')].every(p => p.getTotalLength() > 20)")
    assert page.js(DAG_CLASHES) == []
    assert page.js("var s = document.getElementById('pipeline-dag'); return s.scrollWidth <= s.clientWidth + 1"), \
        "six columns fit a 1280px window"

    # The run: its error, its events; an ended run can be rerun, not cancelled.
    assert page.text("#pipeline-run-error") == run["error"]
    page.wait("the events", lambda: "step accurate failed" in (page.text("#pipeline-events") or ""))
    assert f"step generate submitted as {steps['generate']['job_id']}" in page.text("#pipeline-events")
    assert page.driver.find_element(By.ID, "pipeline-rerun-form").is_displayed()
    assert not page.driver.find_element(By.ID, "pipeline-cancel").is_displayed()
    assert page.js("return [...document.querySelectorAll('#pipeline-rerun-from option')].map(o => o.value)") \
        == [""] + list(steps)
    assert page.driver.find_element(By.ID, "pipeline-rerun-from").get_attribute("value") == ""
    page.full_screenshot("pipeline-detail")

    # A step's job links back to its run.
    page.driver.find_element(By.CSS_SELECTOR, box("train") + " a[href^='#/jobs/']").click()
    page.wait("the train job", lambda: (page.text("#job-title") or "").strip() == steps["train"]["job_id"])
    page.wait("its run", lambda: (page.text("#job-pipeline") or "").strip() == f"{run_id} step train")
    page.go(f"#/pipelines/{run_id}")
    page.wait("the graph again", lambda: len(_step_statuses(page)) == len(steps))

    # Narrow screens: the graph scrolls inside its own box; the page does not scroll sideways.
    page.driver.set_window_size(420, 900)
    page.wait("the graph at 420px", lambda: page.js(
        "var s = document.getElementById('pipeline-dag'); return s.scrollWidth > s.clientWidth"))
    assert page.js(OVERFLOW) <= 1, f"the run scrolls the page sideways by {page.js(OVERFLOW)}px at 420px"
    assert page.js(DAG_CLASHES) == []
    assert page.driver.find_element(By.ID, "pipeline-dag-hint").is_displayed()
    page.screenshot("narrow-pipeline")
    page.js("document.getElementById('pipeline-dag').scrollLeft = 10000")
    page.screenshot("narrow-pipeline-scrolled")
    page.go("#/pipelines")
    page.wait("the list at 420px", lambda: page.text(row) is not None)
    assert page.js(OVERFLOW) <= 1, f"the list scrolls the page sideways by {page.js(OVERFLOW)}px at 420px"
    page.screenshot("narrow-pipelines")


def test_a_pipeline_rerun_from_a_step_opens_the_new_run_which_reuses_the_steps_before(browser, builtin, failed_pipeline):
    page = Page(browser, builtin, "pipeline-rerun")
    browser.set_window_size(1280, 1000)
    old = failed_pipeline
    old_id = old["pipeline_id"]
    new_id = f"pl-{int(old_id[3:]) + 1}"
    old_steps = {s["name"]: s for s in old["steps"]}
    page.open(f"#/pipelines/{old_id}")
    page.wait("the rerun form", lambda: page.driver.find_element(By.ID, "pipeline-rerun-form").is_displayed())
    Select(page.driver.find_element(By.ID, "pipeline-rerun-from")).select_by_value("train")
    page.driver.find_element(By.ID, "pipeline-rerun").click()
    page.wait("the new run's URL", lambda: page.js("return location.hash") == f"#/pipelines/{new_id}")
    page.wait("the new run's title", lambda: (page.text("#pipeline-title") or "").strip() == new_id)
    status, runs = builtin.request("GET", "api/pipelines")
    assert status == 200 and runs["pipelines"][0]["pipeline_id"] == new_id, runs
    assert runs["pipelines"][0]["rerun_of"] == old_id and runs["pipelines"][0]["from"] == "train", runs["pipelines"][0]

    box = '#pipeline-dag .step[data-step="{}"]'.format
    page.wait("generate reused", lambda: f"reused from {old_id}" in (page.text(box("generate")) or ""))
    assert page.js("return document.querySelector(arguments[0]).getAttribute('href')",
                   box("generate") + " .reused a") == f"#/pipelines/{old_id}"
    assert page.js("return document.querySelector(arguments[0]).getAttribute('href')",
                   box("generate") + " a[href^='#/jobs/']") == f"#/jobs/{old_steps['generate']['job_id']}"
    new = _pipeline_ended(builtin, new_id)
    assert new["status"] == "failed", new
    new_steps = {s["name"]: s for s in new["steps"]}
    assert new_steps["audit"]["reused_from"] == old_id and new_steps["train"]["reused_from"] is None, new_steps
    # The page follows the run to its end: train ran again, as a new job.
    page.wait("the new run to fail", lambda: (page.text("#pipeline-status") or "").strip() == "failed")
    page.wait("the boxes at the end", lambda: _step_statuses(page) == {n: s["status"] for n, s in new_steps.items()})
    assert page.js("return document.querySelector(arguments[0]).getAttribute('href')",
                   box("train") + " a[href^='#/jobs/']") == f"#/jobs/{new_steps['train']['job_id']}"
    assert new_steps["train"]["job_id"] != old_steps["train"]["job_id"]
    assert "reused" not in page.text(box("train"))
    assert f"{old_id} from step train" in page.text("#pipeline-state")
    assert page.js(DAG_CLASHES) == []
    page.full_screenshot("pipeline-rerun")
    # The list says which run it reruns.
    page.go("#/pipelines")
    cell = f'#pipelines-table tr[data-pipeline-id="{new_id}"] .rerun-of'
    page.wait("the rerun-of link", lambda: (page.text(cell) or "").strip() == f"{old_id} from train")


def test_cancel_a_running_pipeline_from_its_page(page, nexa):
    # The test handler's train job runs as long as its epochs: long enough to cancel.
    status, run = nexa.request("POST", "api/pipelines", {"name": "dash-cancel", "steps": {
        "long": {"job_type": "train", "params": {**TRAIN["params"], "epochs": 100}},
        "after": {"job_type": "train", "needs": ["long"], "params": TRAIN["params"]}}})
    assert status == 201, run
    run_id = run["pipeline_id"]
    page.open(f"#/pipelines/{run_id}")
    box = '#pipeline-dag .step[data-step="{}"]'.format
    page.wait("the long step to run", lambda: page.js(
        "var e = document.querySelector(arguments[0]); return e && e.dataset.status", box("long")) == "running")
    assert page.js("return document.querySelector(arguments[0]).dataset.status", box("after")) == "pending"
    assert not page.driver.find_element(By.ID, "pipeline-rerun-form").is_displayed()
    page.screenshot("pipeline-running")
    page.driver.find_element(By.ID, "pipeline-cancel").click()
    page.wait("the confirmation", lambda: page.driver.switch_to.alert).accept()
    page.wait("the run to be cancelled", lambda: (page.text("#pipeline-status") or "").strip() == "cancelled")
    page.wait("both steps cancelled", lambda: _step_statuses(page) == {"long": "cancelled", "after": "cancelled"})
    assert "its pipeline run was cancelled" in page.text(box("after") + " .why")
    assert "was cancelled" in page.text(box("long") + " .why")
    assert not page.driver.find_element(By.ID, "pipeline-cancel").is_displayed()
    page.wait("the rerun form", lambda: page.driver.find_element(By.ID, "pipeline-rerun-form").is_displayed())
    assert page.js("return document.getElementById('pipeline-action-error').hidden"), page.text("#pipeline-action-error")
    page.screenshot("pipeline-cancelled")


def test_a_read_only_token_cannot_cancel_or_rerun_a_pipeline(browser):
    secured = Nexa(with_token=True)
    page = None
    try:
        out = subprocess.run([str(_binary()), "token", "create", "--data", str(Path(secured.data.name) / "var"),
                              "--name", "dashboard-reader", "--read-only"], capture_output=True, text=True, timeout=WAIT)
        assert out.returncode == 0, out.stdout + out.stderr
        reader = [line.strip() for line in out.stdout.splitlines() if line.strip()][-1]
        status, run = secured.request("POST", "api/pipelines", {"name": "dash-read-only", "steps": {
            "long": {"job_type": "train", "params": {**TRAIN["params"], "epochs": 100}}}})
        assert status == 201, run
        run_id = run["pipeline_id"]
        page = Page(browser, secured, "pipeline-read-only")
        browser.set_window_size(1280, 1000)
        page.open()
        page.js("localStorage.setItem('nexa-forge.api-token', arguments[0])", reader)
        page.open(f"#/pipelines/{run_id}")
        page.driver.refresh()
        button = page.wait("the cancel button", lambda: page.driver.find_element(By.ID, "pipeline-cancel").is_displayed()
                           and page.driver.find_element(By.ID, "pipeline-cancel"))
        button.click()
        page.wait("the confirmation", lambda: page.driver.switch_to.alert).accept()
        page.wait("the refusal", lambda: "may only read (403)" in (page.text("#pipeline-action-error") or ""))
        assert page.driver.find_element(By.ID, "pipeline-action-error").is_displayed()
        time.sleep(2)  # a poll or two later, the message stays
        assert "may only read (403)" in page.text("#pipeline-action-error")
        assert (page.text("#pipeline-status") or "").strip() == "running"
        status, body = secured.request("POST", f"api/pipelines/{run_id}/cancel")
        assert status == 200, body
        page.wait("the rerun form", lambda: page.driver.find_element(By.ID, "pipeline-rerun-form").is_displayed())
        page.driver.find_element(By.ID, "pipeline-rerun").click()
        page.wait("the rerun's refusal", lambda: "may only read (403)" in (page.text("#pipeline-action-error") or ""))
        assert page.js("return location.hash") == f"#/pipelines/{run_id}"
        page.screenshot("pipeline-read-only")
    finally:
        if page is not None:
            page.js("localStorage.removeItem('nexa-forge.api-token')")
        secured.stop()

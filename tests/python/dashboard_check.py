"""Drives the dashboard in headless Chromium (Debian's chromium, through its chromedriver)
as each role, and prints what it saw as one JSON object. Exits 1 if a check failed.

For every page a role may open: the page loads (the app marks it loaded), the browser
console has no errors, and the page's chart, if it has one, is drawn with data. The
interaction detail view shows captured content to the auditor and not to finance.
A screenshot of every page is saved into SCREENSHOT_DIR.

Usage: dashboard_check.py BASE_URL SCREENSHOT_DIR INTERACTION_ID ROLE=TOKEN...
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

PAGES = {
    "finance": ["spend", "budgets", "performance", "interactions"],
    "auditor": ["spend", "budgets", "performance", "violations", "interactions", "governance"],
    "admin": ["spend", "budgets", "performance", "violations", "interactions", "governance"],
}
CHARTS = {
    "spend": ["spend-chart"],
    "budgets": ["budget-chart"],
    "performance": ["latency-chart", "reliability-chart", "health-chart"],
    "violations": ["violation-chart"],
}
TABLES = {
    "spend": "#top-spenders tbody tr",
    "budgets": "#budgets tbody tr",
    "performance": "#latency tbody tr, #health tbody tr",
    "violations": "#violation-counts tbody tr",
    "interactions": "#interactions tbody tr",
    "governance": "#governance tbody tr",
}


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


def console_errors(driver):
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_loaded(driver, page):
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.body.dataset.loaded") == page
        or d.find_element(By.ID, "status").text
    )
    return driver.find_element(By.ID, "status").text


def check_role(base, role, token, interaction_id, shots):
    problems = []
    seen = {}
    driver = browser()
    try:
        driver.get(base + "/")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "token").is_displayed())
        driver.save_screenshot(os.path.join(shots, f"{role}-sign-in.png"))
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.loaded") == "spend")
        nav = [link.get_attribute("data-page") for link in driver.find_elements(By.CSS_SELECTOR, "nav a") if link.is_displayed()]
        if nav != PAGES[role]:
            problems.append(f"{role}: the navigation offers {nav}, not {PAGES[role]}")
        for number, page in enumerate(PAGES[role]):
            # A full load of each page (the session survives it, in the tab's storage).
            driver.get(f"{base}/?load={number}#/{page}")
            failure = wait_loaded(driver, page)
            if failure:
                problems.append(f"{role}/{page}: {failure}")
            time.sleep(0.3)  # let the chart's first frame paint before the screenshot
            info = {"rows": 0}
            for table in TABLES[page].split(", "):
                rows = len(driver.find_elements(By.CSS_SELECTOR, table))
                info["rows"] += rows
                if rows == 0:
                    problems.append(f"{role}/{page}: the table {table} is empty")
            for chart in CHARTS.get(page, []):
                points = driver.execute_script(
                    "const c = Chart.getChart(arguments[0]);"
                    "const drawn = (v) => (v !== null && typeof v === 'object' ? Array.isArray(v.x) : v > 0);"
                    "return c ? c.data.datasets.reduce((n, d) => n + d.data.filter(drawn).length, 0) : -1;",
                    chart,
                )
                info.setdefault("chart_points", 0)
                info["chart_points"] += max(points, 0)
                if points <= 0:
                    problems.append(f"{role}/{page}: the chart {chart} has no data ({points})")
            errors = console_errors(driver)
            if errors:
                problems.append(f"{role}/{page}: console errors: {errors}")
            driver.save_screenshot(os.path.join(shots, f"{role}-{page}.png"))
            if page == "performance":
                driver.execute_script("document.getElementById('health-chart').scrollIntoView()")
                time.sleep(0.3)
                driver.save_screenshot(os.path.join(shots, f"{role}-performance-health.png"))
            seen[page] = info

        # The detail view: content for auditors and admins, not for finance.
        driver.get(f"{base}/?load=detail#/interactions/{interaction_id}")
        wait_loaded(driver, "interactions")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "detail").is_displayed())
        shown = [block.text for block in driver.find_elements(By.CSS_SELECTOR, "#detail-content pre.content")]
        withheld = driver.find_elements(By.ID, "content-withheld")
        proof = driver.find_element(By.ID, "detail-proof").text
        seen["detail"] = {"content_blocks": len(shown), "withheld": bool(withheld), "proof": proof}
        if role == "finance" and (shown or not withheld):
            problems.append("finance: the detail view shows content")
        if role != "finance" and not (shown and any(text.strip() for text in shown)):
            problems.append(f"{role}: the detail view shows no content")
        if not proof:
            problems.append(f"{role}: the detail view shows no inclusion proof status")
        errors = console_errors(driver)
        if errors:
            problems.append(f"{role}/detail: console errors: {errors}")
        driver.save_screenshot(os.path.join(shots, f"{role}-interaction-detail.png"))

        # The CSV the dashboard writes itself keeps formulas from running in a spreadsheet.
        written = driver.execute_script(
            'return csv([["=HYPERLINK(\\"http://x\\")", "-12", "gpt-4o", "@SUM(A1)", "a,b", "+1-1"]]);'
        )
        wanted = '"\'=HYPERLINK(""http://x"")",-12,gpt-4o,\'@SUM(A1),"a,b",\'+1-1\n'
        if written != wanted:
            problems.append(f"{role}: the dashboard's CSV writer gave {written!r}, not {wanted!r}")
    finally:
        driver.quit()
    return seen, problems


def main():
    base, shots, interaction_id = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(shots, exist_ok=True)
    report = {"roles": {}, "problems": []}
    for argument in sys.argv[4:]:
        role, token = argument.split("=", 1)
        seen, problems = check_role(base, role, token, interaction_id, shots)
        report["roles"][role] = seen
        report["problems"].extend(problems)
    print(json.dumps(report))
    sys.exit(1 if report["problems"] else 0)


if __name__ == "__main__":
    main()

"""Open the built site in headless Chromium: check that every figure loads, take screenshots.

    python docs/_tooling/browser_check.py SITE_DIR OUT_DIR [PAGE ...]

Serves SITE_DIR on 127.0.0.1, loads each page (default: the front page and an example page)
inside a same-origin frame, waits for it to load and records every <img>'s naturalWidth (0 for a
figure that did not load); then takes a 1280-px-wide screenshot of each page into OUT_DIR.
Prints a JSON report and exits with status 1 when a page has no figure or a figure did not load.
"""
from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

PAGES = {"index.html": "front_page.png", "examples/restore_photo.html": "example_page.png"}
CHECK_PAGE = """<!doctype html><html><body>
<iframe id="page" src="/{page}" style="width:1280px;height:2000px"></iframe>
<pre id="result">pending</pre>
<script>
const frame = document.getElementById("page");
frame.addEventListener("load", async () => {{
  const images = Array.from(frame.contentDocument.images);
  await Promise.all(images.map(img => img.complete ? null : new Promise(done => {{
    img.addEventListener("load", done); img.addEventListener("error", done); }})));
  document.getElementById("result").textContent = JSON.stringify(images.map(img => ({{
    src: img.getAttribute("src"), naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight}})));
}});
</script></body></html>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/__check__/"):
            body = CHECK_PAGE.format(page=self.path[len("/__check__/"):]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


def _browser(*args: str, timeout: float = 120) -> str:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--disable-dev-shm-usage", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True).stdout


def check(site: Path, out: Path, pages: dict[str, str] = PAGES) -> dict:
    if chromium() is None:
        raise RuntimeError("no chromium on PATH (Debian: apt-get install chromium)")
    out.mkdir(parents=True, exist_ok=True)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    report = {}
    try:
        for page, shot in pages.items():
            dom = _browser("--virtual-time-budget=15000", "--dump-dom", f"{base}/__check__/{page}")
            found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
            text = found.group(1) if found else "pending"
            images = json.loads(text.replace("&quot;", '"').replace("&amp;", "&")) if text != "pending" else None
            _browser("--window-size=1280,1600", f"--screenshot={out / shot}", f"{base}/{page}")
            report[page] = {"images": images, "screenshot": str(out / shot)}
    finally:
        server.shutdown()
    return report


def failures(report: dict) -> list[str]:
    problems = []
    for page, found in report.items():
        if found["images"] is None:
            problems.append(f"{page}: the page did not finish loading")
        elif not found["images"]:
            problems.append(f"{page}: no <img> on the page")
        problems += [f"{page}: {img['src']} did not load" for img in found["images"] or [] if img["naturalWidth"] == 0]
        if not Path(found["screenshot"]).is_file():
            problems.append(f"{page}: no screenshot")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    pages = {p: Path(p).with_suffix(".png").name for p in argv[2:]} or PAGES
    report = check(Path(argv[0]), Path(argv[1]), pages)
    print(json.dumps(report, indent=1))
    problems = failures(report)
    for problem in problems:
        print("FAILED:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

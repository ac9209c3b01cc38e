"""Open a report in headless Chromium through the DevTools protocol and say what the browser saw.

Used by tests/test_report.py, and by hand on a real report:
    python -m tests.browser reports/index.html /tmp/report.png
The page is loaded with the network off (DevTools offline emulation, and every request
sent to a proxy at 127.0.0.1:9 where nothing listens); every request, console message
and exception is recorded, and the image sizes, the map's pixels and its hover tip are
read from the browser itself.
"""
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

from tests.conftest import stop_process_group
from vae_pipeline.datasets import IMAGE_SIZE

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--proxy-server=http://127.0.0.1:9", "--remote-debugging-port=0",
                  "--window-size=1280,900"]


def chromium() -> str | None:
    return shutil.which("chromium")


class DevTools:
    """A minimal DevTools client: send a command, wait for its answer, keep every event seen."""

    def __init__(self, url: str):
        self.socket = connect(url, max_size=None, open_timeout=30)
        self.events = []
        self.next_id = 0

    def __call__(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            if "method" in message:
                self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        seen = [e for e in self.events if e["method"] == method]
        while not seen:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if "method" in message:
                self.events.append(message)
                if message["method"] == method:
                    return message
        return seen[0]

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")


def page_socket(user_data_dir: Path, timeout: float = 60) -> str:
    """The DevTools WebSocket address of Chromium's first page, once it is listening."""
    port_file = user_data_dir / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
        if time.monotonic() > deadline:
            raise TimeoutError("Chromium did not open its DevTools port")
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(100):
        targets = json.loads(no_proxy.open(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        pages = [t for t in targets if t["type"] == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise TimeoutError("Chromium has no page target")


def screenshot(tools: DevTools, path: Path, clip: dict | None = None) -> None:
    if clip is None:
        size = tools("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"]}
    shot = tools("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip={**clip, "scale": 1})
    Path(path).write_bytes(base64.b64decode(shot["data"]))


def hover_the_map(tools: DevTools) -> dict | None:
    """Move the mouse over the map until a point's tip shows; its text and where, or None."""
    tools.js("document.getElementById('map-frame').scrollIntoView({block: 'center', behavior: 'instant'})")
    box = tools.js("(() => { const r = document.getElementById('map-canvas').getBoundingClientRect();"
                   " return [r.left, r.top, r.width, r.height]; })()")
    left, top, width, height = box
    for fy in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
        for fx in [i / 24 for i in range(2, 23)]:
            x, y = left + fx * width, top + fy * height
            tools("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
            # The tip's text, the row it names, and its enlarged picture sampled back to IMAGE_SIZE pixels square
            # (the middle of each enlarged pixel).
            tip = tools.js(f"(() => {{ const SIZE = {IMAGE_SIZE};"
                           " const t = document.getElementById('map-tip'); if (t.hidden) return null;"
                           " const c = t.querySelector('canvas'), w = c.width, f = Math.floor(w / SIZE);"
                           " const d = c.getContext('2d').getImageData(0, 0, w, w).data;"
                           " const pixels = []; for (let y = 0; y < SIZE; y++) for (let x = 0; x < SIZE; x++)"
                           " pixels.push(d[((f * y + (f >> 1)) * w + f * x + (f >> 1)) * 4]);"
                           " return {text: t.innerText, pixels: pixels,"
                           " hovered: document.getElementById('map-frame').dataset.hovered}; })()")
            if tip:
                return {**tip, "x": x, "y": y}
    return None


def check_report(html: Path, screenshot_path: Path) -> dict:
    """Load `html` offline in headless Chromium; return what the browser saw."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed")
    user_data_dir = Path(tempfile.mkdtemp(prefix="chromium-"))
    browser = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        tools = DevTools(page_socket(user_data_dir))
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools(f"{domain}.enable")
        tools("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1,
              uploadThroughput=-1)
        tools("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        tools("Page.navigate", url=Path(html).resolve().as_uri())
        tools.wait_for("Page.loadEventFired")
        # Two animation frames: the map's first drawing is done.
        tools.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        seen = {
            "title": tools.js("document.title"),
            "sections": tools.js("[...document.querySelectorAll('main > section')].map(s => s.id)"),
            "images": tools.js("[...document.images].map(i => ({src: i.src.slice(0, 30), complete: i.complete,"
                               " width: i.naturalWidth, height: i.naturalHeight}))"),
            # Pixels the map's canvas painted (alpha > 0): zero means nothing was drawn.
            "map_pixels": tools.js("(() => { const c = document.getElementById('map-canvas');"
                                   " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                                   " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })()"),
        }
        screenshot(tools, screenshot_path)
        seen["hover"] = hover_the_map(tools)
        if seen["hover"]:
            frame = tools.js("(() => { const r = document.getElementById('map-frame').getBoundingClientRect();"
                             " return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; })()")
            screenshot(tools, Path(screenshot_path).with_name(Path(screenshot_path).stem + "-hover.png"), frame)
        centre = tools.js("(() => { const r = document.getElementById('map-canvas').getBoundingClientRect();"
                          " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        tools("Input.dispatchMouseEvent", type="mouseWheel", x=centre[0], y=centre[1], deltaX=0, deltaY=-400)
        tools.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        seen["zoom_after_wheel"] = float(tools.js("document.getElementById('map-frame').dataset.zoom"))
        seen["requests"] = [e["params"]["request"]["url"][:80] for e in tools.events
                            if e["method"] == "Network.requestWillBeSent"]
        seen["console_errors"] = (
            [e["params"]["args"] for e in tools.events if e["method"] == "Runtime.consoleAPICalled"
             and e["params"]["type"] in ("error", "assert")]
            + [e["params"]["exceptionDetails"] for e in tools.events if e["method"] == "Runtime.exceptionThrown"]
            + [e["params"]["entry"] for e in tools.events if e["method"] == "Log.entryAdded"
               and e["params"]["entry"]["level"] == "error"])
        tools.socket.close()
        return seen
    finally:
        stop_process_group(browser, timeout=10)
        shutil.rmtree(user_data_dir, ignore_errors=True)


if __name__ == "__main__":
    result = check_report(Path(sys.argv[1]), Path(sys.argv[2]))
    if result["hover"]:
        result["hover"]["pixels"] = f"{len(result['hover']['pixels'])} values"
    print(json.dumps(result, indent=1))

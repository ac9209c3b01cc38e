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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from tests.conftest import stop_process_group
from vae_pipeline.ml.data import IMAGE_SIZE

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--proxy-server=http://127.0.0.1:9", "--remote-debugging-port=0",
                  "--window-size=1280,900"]


def chromium() -> str | None:
    return shutil.which("chromium")


def skip_without_chromium() -> None:
    """Skip the calling test, saying why, where Chromium is missing."""
    if chromium() is None:
        pytest.skip("Debian's chromium is not installed and could not be (`make test` installs it as root "
                    "with apt-get install -y chromium)")


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


@contextmanager
def open_page(html: Path, width: int = 1280, height: int = 900) -> Iterator[DevTools]:
    """`html` loaded offline in a fresh headless Chromium, `width` x `height`, its first frames drawn."""
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
        tools("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        tools("Page.navigate", url=Path(html).resolve().as_uri())
        tools.wait_for("Page.loadEventFired")
        # Two animation frames: the map's first drawing is done.
        next_frames(tools)
        yield tools
        tools.socket.close()
    finally:
        stop_process_group(browser, timeout=10)
        shutil.rmtree(user_data_dir, ignore_errors=True)


def next_frames(tools: DevTools) -> None:
    """Wait for two animation frames: what the page scheduled for the next frame is drawn."""
    tools.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def requests_and_errors(tools: DevTools) -> dict:
    """Every request the page made, and every console error, exception and error log entry so far."""
    return {
        "requests": [e["params"]["request"]["url"][:80] for e in tools.events
                     if e["method"] == "Network.requestWillBeSent"],
        "console_errors": (
            [e["params"]["args"] for e in tools.events if e["method"] == "Runtime.consoleAPICalled"
             and e["params"]["type"] in ("error", "assert")]
            + [e["params"]["exceptionDetails"] for e in tools.events if e["method"] == "Runtime.exceptionThrown"]
            + [e["params"]["entry"] for e in tools.events if e["method"] == "Log.entryAdded"
               and e["params"]["entry"]["level"] == "error"]),
    }


def check_report(html: Path, screenshot_path: Path) -> dict:
    """Load `html` offline in headless Chromium; return what the browser saw."""
    with open_page(html) as tools:
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
        next_frames(tools)
        seen["zoom_after_wheel"] = float(tools.js("document.getElementById('map-frame').dataset.zoom"))
        return {**seen, **requests_and_errors(tools)}


# ---- the latent explorer -------------------------------------------------------------------

def click(tools: DevTools, x: float, y: float) -> None:
    """A real left click at (x, y) in the viewport: move, press, release."""
    tools("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="none")
    for kind in ("mousePressed", "mouseReleased"):
        tools("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def click_element(tools: DevTools, element_id: str) -> None:
    tools.js(f"document.getElementById('{element_id}').scrollIntoView({{block: 'center', behavior: 'instant'}})")
    x, y = tools.js(f"(() => {{ const r = document.getElementById('{element_id}').getBoundingClientRect();"
                    " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    click(tools, x, y)
    next_frames(tools)


KEY_CODES = {"Tab": 9, "Enter": 13, "ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40}


def press(tools: DevTools, key: str) -> None:
    """A real key press (down and up) sent to whatever has the focus."""
    code = KEY_CODES[key]
    tools("Input.dispatchKeyEvent", type="rawKeyDown", key=key, code=key, windowsVirtualKeyCode=code)
    tools("Input.dispatchKeyEvent", type="keyUp", key=key, code=key, windowsVirtualKeyCode=code)


def tab_to(tools: DevTools, test: str, limit: int = 120) -> bool:
    """Press Tab until the focused element passes the JavaScript test `test` (on `e`); whether it did."""
    for _ in range(limit):
        press(tools, "Tab")
        if tools.js(f"(e => !!e && ({test}))(document.activeElement)"):
            return True
    return False


def map_points(tools: DevTools) -> dict:
    """The map canvas's box in the viewport, and each selectable point's place on it and its label."""
    tools.js("document.getElementById('map-frame').scrollIntoView({block: 'center', behavior: 'instant'})")
    next_frames(tools)
    return tools.js("(() => { const m = vaeReport.map, r = m.canvas.getBoundingClientRect(), n = m.data.hover;"
                    " const places = []; for (let k = 0; k < n; k++) places.push(m.screenOf(...m.place(k)));"
                    " return {left: r.left, top: r.top, width: r.width, height: r.height, places: places,"
                    " labels: Array.from(m.labels.slice(0, n))}; })()")


def pick_targets(points: dict) -> tuple[list[int], list[float]]:
    """Three selectable points of three classes, each alone under the mouse, far apart; and an empty place near some."""
    places = np.array(points["places"], dtype=float)
    labels = np.array(points["labels"])
    # Alone: the click lands on the point (rounded to a whole pixel) and no other is as near.
    clicks = np.round(places)
    gaps = np.linalg.norm(clicks[:, None] - places[None], axis=2)
    own = gaps[np.arange(len(places)), np.arange(len(places))]
    np.fill_diagonal(gaps, np.inf)
    inside = ((places > 30) & (places < [points["width"] - 30, points["height"] - 30])).all(1)
    alone = np.flatnonzero(inside & (gaps.min(1) > own + 1))
    chosen = [int(alone[0])]
    for _ in range(2):
        others = [k for k in alone if labels[k] not in labels[chosen]] or [k for k in alone if k not in chosen]
        distance = np.min([np.linalg.norm(places[others] - places[c], axis=1) for c in chosen], axis=0)
        chosen.append(int(others[int(np.argmax(distance))]))
    # Empty: no selectable point within 16 pixels (the map picks within 12), the nearest within 60.
    grid = np.stack(np.meshgrid(np.arange(40, points["width"] - 40, 6), np.arange(40, points["height"] - 40, 6)),
                    -1).reshape(-1, 2)
    nearest = np.linalg.norm(grid[:, None] - places[None], axis=2).min(1)
    empty = grid[np.flatnonzero((nearest > 16) & (nearest < 60))[0]]
    return chosen, [float(empty[0]), float(empty[1])]


def click_point(tools: DevTools, points: dict, k: int) -> None:
    """A click on selectable point k of the map (at its place rounded to a whole pixel, as pick_targets chose)."""
    x, y = np.round(points["places"][k])
    click(tools, points["left"] + x, points["top"] + y)


def strip_pixels(tools: DevTools) -> list[list[int]]:
    """The grey values of every frame shown in the walk's strip, in order."""
    return tools.js("[...document.querySelectorAll('#explorer-strip canvas')].map(c => {"
                    " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                    " const g = []; for (let i = 0; i < d.length; i += 4) g.push(d[i]); return g; })")


def canvas_pixels(tools: DevTools, element_id: str) -> list[int]:
    return tools.js(f"(() => {{ const c = document.getElementById('{element_id}');"
                    " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                    " const g = []; for (let i = 0; i < d.length; i += 4) g.push(d[i]); return g; })()")


def element_shot(tools: DevTools, path: Path, top_id: str, bottom_id: str) -> None:
    """A screenshot from the top of one element to the bottom of another, the page's width."""
    box = tools.js(f"(() => {{ const a = document.getElementById('{top_id}').getBoundingClientRect(),"
                   f" b = document.getElementById('{bottom_id}').getBoundingClientRect();"
                   " return {x: 0, y: a.top + scrollY - 8, width: document.documentElement.clientWidth,"
                   " height: Math.max(a.bottom, b.bottom) - a.top + 16}; })()")
    screenshot(tools, path, box)


def timings(tools: DevTools, draws: int = 300) -> dict:
    """When the explorer was ready and the page loaded (ms after navigation), and the decode time per image."""
    return tools.js(
        "(() => { const nav = performance.getEntriesByType('navigation')[0], d = vaeReport.decoder.latentDim;"
        f" const zs = []; for (let i = 0; i < {draws}; i++) zs.push(Array.from({{length: d}}, () => 3 * Math.random() - 1.5));"
        " for (let i = 0; i < 20; i++) vaeReport.decode(zs[i]);"
        " const t = performance.now(); for (const z of zs) vaeReport.decode(z);"
        " return {interactive_ms: vaeReport.readyAt, dom_content_loaded_ms: nav.domContentLoadedEventEnd,"
        f" load_ms: nav.loadEventEnd, decode_ms: (performance.now() - t) / {draws}}}; }})()")


def explore_report(html: Path, latent_vectors: list[list[float]], screenshots: Path | None = None) -> dict:
    """Use the report's latent explorer as a reader would, in headless Chromium; return what it showed.

    Decodes `latent_vectors` in the page; clicks two points of the map, extends the walk to a
    third, swaps it, clicks empty space; drags a slider; reaches the map and a slider with Tab
    and selects and slides with the keys; then looks at a narrow window. With `screenshots`,
    PNGs of each step land in that folder (explorer-*.png).
    """
    def shot(name: str, top: str = "map-frame", bottom: str = "explorer-strip") -> None:
        if screenshots:
            screenshots.mkdir(parents=True, exist_ok=True)
            element_shot(tools, screenshots / f"explorer-{name}.png", top, bottom)

    def state() -> dict:
        return tools.js("vaeReport.explorer.state()")

    seen = {}
    with open_page(html) as tools:
        seen["timings"] = timings(tools)
        seen["decoded"] = tools.js(f"{json.dumps(latent_vectors)}.map(z => Array.from(vaeReport.decode(z)))")
        seen["decoder"] = tools.js("vaeReport.decoder")
        points = map_points(tools)
        chosen, empty = pick_targets(points)
        seen["targets"] = chosen
        for k in chosen[:2]:
            click_point(tools, points, k)
        next_frames(tools)
        seen["two"] = {**state(), "strip": strip_pixels(tools), "text": tools.js(
            "document.getElementById('explorer-points').innerText")}
        shot("walk")
        click_element(tools, "explorer-extend")
        points = map_points(tools)
        click_point(tools, points, chosen[2])
        next_frames(tools)
        seen["three"] = state()
        seen["animation"] = tools.js("new Promise(r => setTimeout(() => r("
                                     "document.getElementById('explorer-animation').dataset.frame), 1500))")
        shot("extended")
        click_element(tools, "explorer-swap")
        seen["swapped"] = state()
        click_element(tools, "explorer-clear")
        seen["cleared"] = state()
        points = map_points(tools)
        click(tools, points["left"] + empty[0], points["top"] + empty[1])
        next_frames(tools)
        seen["estimate"] = {**state(), "text": tools.js("document.getElementById('explorer-points').innerText")}
        shot("estimate", bottom="map-legend")

        # A slider dragged with the mouse, from its middle to near its right end.
        tools.js("document.querySelector('#explorer-sliders input').scrollIntoView({block: 'center', behavior: 'instant'})")
        plane = "(() => { const p = document.getElementById('explorer-plane'); return p ? p.dataset.point : null; })()"
        seen["slider_dims"] = tools.js("[...document.querySelectorAll('#explorer-sliders input')].map(i => +i.dataset.dim)")
        before = {**state()["slider"], "canvas": canvas_pixels(tools, "explorer-slider-image"), "plane": tools.js(plane)}
        left, top, width, height = tools.js("(() => { const r = document.querySelector('#explorer-sliders input')"
                                            ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
        tools("Input.dispatchMouseEvent", type="mousePressed", x=left + width / 2, y=top + height / 2,
              button="left", clickCount=1)
        for f in (0.6, 0.7, 0.8, 0.9):
            tools("Input.dispatchMouseEvent", type="mouseMoved", x=left + f * width, y=top + height / 2, button="left")
        tools("Input.dispatchMouseEvent", type="mouseReleased", x=left + 0.9 * width, y=top + height / 2,
              button="left", clickCount=1)
        next_frames(tools)
        seen["slider"] = {"before": before, "after": {**state()["slider"], "plane": tools.js(plane),
                                                      "canvas": canvas_pixels(tools, "explorer-slider-image")}}
        shot("sliders", "explorer-sliders-block", "explorer-sliders-block")

        # The keyboard alone: Tab to the map, move its cursor, Enter; Tab on to a slider, arrow keys.
        click_element(tools, "explorer-clear")
        tools.js("document.activeElement.blur(); window.scrollTo(0, 0)")
        keyboard = {"map_reached": tab_to(tools, "e.id === 'map-canvas'")}
        for _ in range(4):
            press(tools, "ArrowRight")
            press(tools, "ArrowDown")
        press(tools, "Enter")
        next_frames(tools)
        keyboard["points"] = len(state()["points"])
        keyboard["slider_reached"] = tab_to(tools, "e.matches('#explorer-sliders input')")
        keyboard["slider_before"] = state()["slider"]["z"]
        for _ in range(25):
            press(tools, "ArrowRight")
        next_frames(tools)
        keyboard["slider_after"] = state()["slider"]["z"]
        seen["keyboard"] = keyboard
        seen.update(requests_and_errors(tools))

    with open_page(html, width=390, height=844) as tools:
        seen["narrow"] = tools.js("({page: document.documentElement.scrollWidth, window: innerWidth,"
                                  " explorer: document.getElementById('explorer').getBoundingClientRect().width})")
        points = map_points(tools)
        for k in pick_targets(points)[0][:2]:
            click_point(tools, points, k)
        next_frames(tools)
        seen["narrow"]["points"] = len(state()["points"])
        shot("narrow", "map-frame", "explorer-sliders-block")
        seen["narrow_errors"] = requests_and_errors(tools)["console_errors"]
    return seen


if __name__ == "__main__":
    # python -m tests.browser REPORT SCREENSHOT [FOLDER]: what the browser saw; with FOLDER, also the
    # explorer used as a reader would, its screenshots in FOLDER and its timings.
    result = check_report(Path(sys.argv[1]), Path(sys.argv[2]))
    if result["hover"]:
        result["hover"]["pixels"] = f"{len(result['hover']['pixels'])} values"
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 3:
        explored = explore_report(Path(sys.argv[1]), [], Path(sys.argv[3]))
        print(json.dumps({"timings": explored["timings"], "decoder": explored["decoder"],
                          "console_errors": explored["console_errors"], "narrow": explored["narrow"],
                          "keyboard": {k: v for k, v in explored["keyboard"].items() if "slider_" not in k}},
                         indent=1))

{% raw %}
// The interactive latent map: every point on one canvas, zoom and pan, and the image of
// the point under the mouse. Data comes from the JSON block #map-data (see map_data() in
// stages/report.py); the hover images from the sprite sheet #map-sprite. No libraries.
// Keyboard: the canvas takes the focus; the arrow keys move a cursor (Shift: faster),
// + and - zoom at it, 0 shows the whole map, Enter or Space picks there.
// For explorer.js it offers window.vaeReport.map: a click (or Enter) on the map calls
// map.onPick({k, u, v}) (k: the hoverable point there, or -1; u, v: the place, in the map's
// units), and each function in map.overlays draws over the points, given the context and screenOf.
(function () {
  "use strict";
  const report = window.vaeReport;
  const dataNode = document.getElementById("map-data");
  const frame = document.getElementById("map-frame");
  const canvas = document.getElementById("map-canvas");
  if (!dataNode || !canvas) return;
  const data = JSON.parse(dataNode.textContent);
  const sprite = document.getElementById("map-sprite");
  const tip = document.getElementById("map-tip");
  const tipCanvas = tip.querySelector("canvas");
  const tipText = tip.querySelector(".tip-text");
  const marker = document.getElementById("map-marker");

  const bytes = report.bytes;
  const xy = new Uint16Array(bytes(data.xy).buffer);   // x, y pairs, scaled to 0..65535
  const labels = bytes(data.labels);
  const rows = data.hover ? new Uint32Array(bytes(data.rows).buffer) : new Uint32Array(0);
  const n = data.n;
  const hidden = new Set();
  // The points are stored shuffled. They are drawn in chunks of 2048, class by class within a
  // chunk: that keeps the mix (no class painted over all others) with few colour changes.
  // drawOrder lists the points in that order; runs holds [start, end, class] of each colour's stretch.
  const drawOrder = new Uint32Array(n), runs = [];
  for (let start = 0, at = 0; start < n; start += 2048) {
    const end = Math.min(n, start + 2048);
    for (let c = 0; c < data.classes.length; c++) {
      const first = at;
      for (let i = start; i < end; i++) if (labels[i] === c) drawOrder[at++] = i;
      if (at > first) runs.push(first, at, c);
    }
  }

  // Data point (u, v), both in [0, 1], is drawn at ((u - cx) * scale + w / 2, h / 2 - (v - cy) * scale).
  function fullView() {
    const w = canvas.clientWidth, h = canvas.clientHeight;
    const ex = data.extent[0], ey = Math.max(data.extent[1], 1e-6);
    const scale = 0.92 * Math.min(w / ex, h / ey);
    return { cx: ex / 2, cy: ey / 2, scale: scale, base: scale };
  }
  let view = fullView();

  function screenOf(u, v) {
    return [(u - view.cx) * view.scale + canvas.clientWidth / 2,
            canvas.clientHeight / 2 - (v - view.cy) * view.scale];
  }
  function dataOf(sx, sy) {
    return [(sx - canvas.clientWidth / 2) / view.scale + view.cx,
            (canvas.clientHeight / 2 - sy) / view.scale + view.cy];
  }

  function draw() {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    // A view made while the canvas had no size yet (scale 0) would stay empty, its zoom 0 / 0.
    if (!(view.base > 0)) view = fullView();
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const zoom = view.scale / view.base;
    const size = Math.min(7, (n > 20000 ? 1.6 : 3.2) * Math.sqrt(zoom));
    ctx.globalAlpha = n > 20000 ? 0.55 : 0.8;
    // One path per run (a chunk's points of one class, see `runs`), the transform written out:
    // 60,000 points in tens of milliseconds, where a fillRect and an array per point took hundreds.
    const half = size / 2, x0 = w / 2 - view.cx * view.scale, y0 = h / 2 + view.cy * view.scale;
    const k = view.scale / 65535;
    for (let r = 0; r < runs.length; r += 3) {
      const c = runs[r + 2];
      if (hidden.has(c)) continue;
      ctx.fillStyle = data.colours[c];
      ctx.beginPath();
      for (let at = runs[r]; at < runs[r + 1]; at++) {
        const i = drawOrder[at], x = x0 + xy[2 * i] * k, y = y0 - xy[2 * i + 1] * k;
        if (x < -size || y < -size || x > w + size || y > h + size) continue;
        ctx.rect(x - half, y - half, size, size);
      }
      ctx.fill();
    }
    // Class names at the median of each class.
    ctx.globalAlpha = 1;
    ctx.font = "600 14px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.lineJoin = "round";
    data.centres.forEach(function (centre, c) {
      if (!centre || hidden.has(c)) return;
      const p = screenOf(centre[0], centre[1]);
      ctx.lineWidth = 4;
      ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
      ctx.strokeText(data.classes[c], p[0], p[1]);
      ctx.fillStyle = "#1d2330";
      ctx.fillText(data.classes[c], p[0], p[1]);
    });
    map.overlays.forEach(function (overlay) { overlay(ctx, screenOf); });
    if (cursor && document.activeElement === canvas) {
      ctx.strokeStyle = "#1d2330";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(cursor[0] - 10, cursor[1]); ctx.lineTo(cursor[0] - 3, cursor[1]);
      ctx.moveTo(cursor[0] + 3, cursor[1]); ctx.lineTo(cursor[0] + 10, cursor[1]);
      ctx.moveTo(cursor[0], cursor[1] - 10); ctx.lineTo(cursor[0], cursor[1] - 3);
      ctx.moveTo(cursor[0], cursor[1] + 3); ctx.lineTo(cursor[0], cursor[1] + 10);
      ctx.stroke();
    }
    frame.dataset.zoom = zoom.toFixed(3);
  }
  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; draw(); });
  }

  function zoomAt(sx, sy, factor) {
    const before = dataOf(sx, sy);
    view.scale = Math.min(view.base * 400, Math.max(view.base * 0.5, view.scale * factor));
    view.cx = before[0] - (sx - canvas.clientWidth / 2) / view.scale;
    view.cy = before[1] - (canvas.clientHeight / 2 - sy) / view.scale;
    hideTip();
    redraw();
  }

  // The hoverable point nearest the mouse, within 12 pixels, or -1.
  function nearest(sx, sy) {
    let best = -1, bestDistance = 144;
    for (let k = 0; k < data.hover; k++) {
      if (hidden.has(labels[k])) continue;
      const p = screenOf(xy[2 * k] / 65535, xy[2 * k + 1] / 65535);
      const d = (p[0] - sx) * (p[0] - sx) + (p[1] - sy) * (p[1] - sy);
      if (d < bestDistance) { best = k; bestDistance = d; }
    }
    return best;
  }
  function hideTip() { tip.hidden = true; marker.hidden = true; }
  // The image of hoverable point k, from the sprite sheet, drawn to fill `target` (a canvas).
  function drawImageOf(k, target) {
    const ctx = target.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, target.width, target.height);
    if (sprite && sprite.complete) {
      const size = data.imageSize, col = k % data.spriteColumns, row = Math.floor(k / data.spriteColumns);
      ctx.drawImage(sprite, col * size, row * size, size, size, 0, 0, target.width, target.height);
    }
  }
  function showTip(k) {
    const p = screenOf(xy[2 * k] / 65535, xy[2 * k + 1] / 65535);
    drawImageOf(k, tipCanvas);
    const name = document.createElement("b");
    name.textContent = data.classes[labels[k]];
    const where = document.createElement("div");
    where.textContent = data.split + " image #" + rows[k];
    tipText.replaceChildren(name, where);
    marker.style.left = p[0] + "px";
    marker.style.top = p[1] + "px";
    marker.style.borderColor = data.colours[labels[k]];
    marker.hidden = false;
    tip.hidden = false;
    // Beside the point, flipped to the other side near the right or bottom edge.
    const left = p[0] + 16 + tip.offsetWidth > frame.clientWidth ? p[0] - 16 - tip.offsetWidth : p[0] + 16;
    const top = p[1] + 16 + tip.offsetHeight > frame.clientHeight ? p[1] - 16 - tip.offsetHeight : p[1] + 16;
    tip.style.left = left + "px";
    tip.style.top = top + "px";
    frame.dataset.hovered = String(rows[k]);
  }

  // A press and release that moved less than a few pixels is a click: a pick, not a pan.
  function pickAt(sx, sy) {
    const place = dataOf(sx, sy);
    if (map.onPick) map.onPick({ k: nearest(sx, sy), u: place[0], v: place[1] });
  }
  let drag = null, press = null;
  canvas.addEventListener("wheel", function (event) {
    event.preventDefault();
    const box = canvas.getBoundingClientRect();
    zoomAt(event.clientX - box.left, event.clientY - box.top, Math.exp(-event.deltaY * 0.0015));
  }, { passive: false });
  canvas.addEventListener("pointerdown", function (event) {
    drag = { x: event.clientX, y: event.clientY };
    press = { x: event.clientX, y: event.clientY };
    cursor = null;
    canvas.setPointerCapture(event.pointerId);
    frame.classList.add("dragging");
    hideTip();
  });
  canvas.addEventListener("pointerup", function (event) {
    drag = null;
    frame.classList.remove("dragging");
    if (press && Math.abs(event.clientX - press.x) + Math.abs(event.clientY - press.y) < 5) {
      const box = canvas.getBoundingClientRect();
      pickAt(event.clientX - box.left, event.clientY - box.top);
    }
    press = null;
  });
  canvas.addEventListener("pointerleave", function () { if (!drag) hideTip(); });
  canvas.addEventListener("pointermove", function (event) {
    if (drag) {
      view.cx -= (event.clientX - drag.x) / view.scale;
      view.cy += (event.clientY - drag.y) / view.scale;
      drag = { x: event.clientX, y: event.clientY };
      redraw();
      return;
    }
    const box = canvas.getBoundingClientRect();
    const k = nearest(event.clientX - box.left, event.clientY - box.top);
    if (k < 0) hideTip(); else showTip(k);
  });
  canvas.addEventListener("dblclick", function () { view = fullView(); hideTip(); redraw(); });

  // The keyboard's cursor, in canvas pixels; it starts in the middle when the map takes the focus.
  let cursor = null;
  function moveCursor(dx, dy) {
    const w = canvas.clientWidth, h = canvas.clientHeight;
    cursor = cursor || [w / 2, h / 2];
    const x = cursor[0] + dx, y = cursor[1] + dy;
    // Past the edge, the map pans instead.
    const cx = Math.min(w - 4, Math.max(4, x)), cy = Math.min(h - 4, Math.max(4, y));
    view.cx += (x - cx) / view.scale;
    view.cy -= (y - cy) / view.scale;
    cursor = [cx, cy];
    const k = nearest(cx, cy);
    if (k < 0) hideTip(); else showTip(k);
    redraw();
  }
  // Only a focus from the keyboard shows the cursor (a mouse click focuses the canvas too).
  canvas.addEventListener("focus", function () {
    let keyboard = true;
    try { keyboard = canvas.matches(":focus-visible"); } catch (e) { /* an older browser: show it */ }
    if (keyboard) moveCursor(0, 0);
  });
  canvas.addEventListener("blur", function () { hideTip(); redraw(); });
  canvas.addEventListener("keydown", function (event) {
    const step = event.shiftKey ? 40 : 8;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    cursor = cursor || [canvas.clientWidth / 2, canvas.clientHeight / 2];
    if (moves[event.key]) moveCursor(moves[event.key][0], moves[event.key][1]);
    else if (event.key === "+" || event.key === "=") zoomAt(cursor[0], cursor[1], 1.6);
    else if (event.key === "-" || event.key === "_") zoomAt(cursor[0], cursor[1], 1 / 1.6);
    else if (event.key === "0") { view = fullView(); cursor = null; moveCursor(0, 0); }
    else if (event.key === "Enter" || event.key === " ") pickAt(cursor[0], cursor[1]);
    else return;
    event.preventDefault();
  });
  frame.parentNode.querySelectorAll("[data-zoom]").forEach(function (button) {
    button.addEventListener("click", function () {
      const how = button.dataset.zoom;
      if (how === "reset") { view = fullView(); hideTip(); redraw(); return; }
      zoomAt(canvas.clientWidth / 2, canvas.clientHeight / 2, how === "in" ? 1.6 : 1 / 1.6);
    });
  });
  document.querySelectorAll("#map-legend [data-class]").forEach(function (button) {
    button.addEventListener("click", function () {
      const c = Number(button.dataset.class);
      if (hidden.has(c)) hidden.delete(c); else hidden.add(c);
      button.classList.toggle("off", hidden.has(c));
      hideTip();
      redraw();
    });
  });
  window.addEventListener("resize", function () {
    const zoom = view.base > 0 ? view.scale / view.base : 1;
    const fresh = fullView();
    view.base = fresh.base;
    view.scale = fresh.base * zoom;
    redraw();
  });
  const map = report.map = {
    data: data, labels: labels, rows: rows, canvas: canvas,
    overlays: [], onPick: null, redraw: redraw, drawImageOf: drawImageOf,
    screenOf: screenOf,
    // Hoverable point k's place in the map's units (u, v in [0, 1], as screenOf takes them).
    place: function (k) { return [xy[2 * k] / 65535, xy[2 * k + 1] / 65535]; },
  };
  draw();
})();
{% endraw %}

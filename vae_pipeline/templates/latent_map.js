{% raw %}
// The interactive latent map: every point on one canvas, zoom and pan, and the image of
// the point under the mouse. Data comes from the JSON block #map-data (see map_data() in
// stages/report.py); the hover images from the sprite sheet #map-sprite. No libraries.
(function () {
  "use strict";
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

  function bytes(base64) {
    const text = atob(base64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  const xy = new Uint16Array(bytes(data.xy).buffer);   // x, y pairs, scaled to 0..65535
  const labels = bytes(data.labels);
  const rows = data.hover ? new Uint32Array(bytes(data.rows).buffer) : new Uint32Array(0);
  const n = data.n;
  const hidden = new Set();

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
    // The points are stored shuffled; drawing them in chunks, class by class within a chunk,
    // keeps that mix (no class painted over all others) with few colour changes.
    const chunk = 2048;
    for (let start = 0; start < n; start += chunk) {
      const end = Math.min(n, start + chunk);
      for (let c = 0; c < data.classes.length; c++) {
        if (hidden.has(c)) continue;
        ctx.fillStyle = data.colours[c];
        for (let i = start; i < end; i++) {
          if (labels[i] !== c) continue;
          const p = screenOf(xy[2 * i] / 65535, xy[2 * i + 1] / 65535);
          if (p[0] < -size || p[1] < -size || p[0] > w + size || p[1] > h + size) continue;
          ctx.fillRect(p[0] - size / 2, p[1] - size / 2, size, size);
        }
      }
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
  function showTip(k) {
    const p = screenOf(xy[2 * k] / 65535, xy[2 * k + 1] / 65535);
    const ctx = tipCanvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, tipCanvas.width, tipCanvas.height);
    if (sprite && sprite.complete) {
      const size = data.imageSize, col = k % data.spriteColumns, row = Math.floor(k / data.spriteColumns);
      ctx.drawImage(sprite, col * size, row * size, size, size, 0, 0, tipCanvas.width, tipCanvas.height);
    }
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

  let drag = null;
  canvas.addEventListener("wheel", function (event) {
    event.preventDefault();
    const box = canvas.getBoundingClientRect();
    zoomAt(event.clientX - box.left, event.clientY - box.top, Math.exp(-event.deltaY * 0.0015));
  }, { passive: false });
  canvas.addEventListener("pointerdown", function (event) {
    drag = { x: event.clientX, y: event.clientY };
    canvas.setPointerCapture(event.pointerId);
    frame.classList.add("dragging");
    hideTip();
  });
  canvas.addEventListener("pointerup", function () { drag = null; frame.classList.remove("dragging"); });
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
  draw();
})();
{% endraw %}

{% raw %}
// The latent explorer: pick points on the latent map and travel between them, decoded live
// in the page by decoder.js. Its data is the JSON block #explorer-data (explorer_data() in
// stages/report.py): the μ of the map's hoverable points, in the map's order, the KL of each
// latent dimension and the walk's steps and frame time.
//   * A click on a point selects it (its image, label and μ); a second click, the straight
//     walk between the two μ, decoded, as a strip and an animation. "Extend" lets the next
//     click add a further point; "swap" reverses the walk; "clear" starts again.
//   * A click on empty space selects an estimate: the μ of the nearest points, weighted by
//     the inverse of their squared distance on the map, labelled "estimated".
//   * One slider per latent dimension, most KL first (the first 16 at most), from the last
//     point selected or the walk frame clicked; the image follows at the display's rate.
//     With a 2-D latent space, the plane itself: the decoder's manifold and the sliders' point.
// window.vaeReport.explorer.state() says what is shown, for tests and the curious.
(function () {
  "use strict";
  const report = window.vaeReport;
  const root = document.getElementById("explorer");
  const node = document.getElementById("explorer-data");
  if (!root || !node || !report.decode || !report.map) return;
  const data = JSON.parse(node.textContent);
  const map = report.map;
  const d = data.latentDim, steps = data.walkSteps, SIZE = map.data.imageSize;
  const classes = map.data.classes, colours = map.data.colours;
  const mu = new Float32Array(report.bytes(data.mu).buffer);   // hoverable point k: mu[k * d .. k * d + d)
  const selectable = mu.length / d;
  const MAX_POINTS = 6;       // a walk through at most this many points
  const NEIGHBOURS = 8;       // an estimate averages this many points' μ
  const LETTERS = "ABCDEF";
  const $ = function (id) { return document.getElementById(id); };

  let points = [];            // {z, k, label, estimated, u, v}
  let extending = false;      // the next pick adds a point instead of starting again
  let legs = [];              // per leg, steps + 1 frames {z, pixels}
  let sliderZ = new Float32Array(d), sliderFrom = "the origin, z = 0", sliderStart = new Float32Array(d);

  function format(x) { return (x < 0 ? "−" : "") + Math.abs(x).toFixed(2); }
  function vectorText(z) {
    const shown = Array.from(z.slice(0, 8), format).join(", ");
    return "(" + shown + (z.length > 8 ? ", … " + z.length + " values" : "") + ")";
  }
  function element(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function imageCanvas(pixels) {
    const c = element("canvas");
    report.paint(c, pixels, SIZE);
    return c;
  }

  // ---- points -----------------------------------------------------------------------------

  function realPoint(k) {
    const place = map.place(k);
    return { z: mu.slice(k * d, k * d + d), k: k, row: map.rows[k], label: map.labels[k], estimated: false,
             u: place[0], v: place[1] };
  }
  // No point there: the μ of the nearest ones, each weighted by 1 / (squared distance on the map).
  function estimatedPoint(u, v) {
    if (!selectable) return null;
    const near = [];
    for (let k = 0; k < selectable; k++) {
      const p = map.place(k), dist = (p[0] - u) * (p[0] - u) + (p[1] - v) * (p[1] - v);
      if (near.length < NEIGHBOURS || dist < near[near.length - 1].dist) {
        near.push({ k: k, dist: dist });
        near.sort(function (a, b) { return a.dist - b.dist; });
        if (near.length > NEIGHBOURS) near.pop();
      }
    }
    const z = new Float32Array(d);
    let total = 0;
    near.forEach(function (n) {
      const w = 1 / (n.dist + 1e-12);
      total += w;
      for (let j = 0; j < d; j++) z[j] += w * mu[n.k * d + j];
    });
    for (let j = 0; j < d; j++) z[j] /= total;
    return { z: z, k: -1, row: null, label: map.labels[near[0].k], estimated: true, u: u, v: v };
  }
  function describe(point, i) {
    const name = LETTERS[i] + ": ";
    return point.estimated ? name + "estimated, near " + classes[point.label]
      : name + classes[point.label] + ", " + map.data.split + " image #" + point.row;
  }

  function pick(where) {
    const point = where.k >= 0 ? realPoint(where.k) : estimatedPoint(where.u, where.v);
    if (!point) return;
    const last = points[points.length - 1];
    // A double click (which also shows the whole map) picks the same place twice: once is enough.
    const same = last && (point.estimated ? last.estimated && last.u === point.u && last.v === point.v
                                          : last.k === point.k);
    if (same) return;
    if ((points.length >= 2 && !extending) || points.length >= MAX_POINTS) points = [];
    extending = false;
    points.push(point);
    setSliders(point.z, describe(point, points.length - 1));
    update();
  }

  // ---- the walk ---------------------------------------------------------------------------

  function makeWalk() {
    legs = [];
    for (let i = 0; i + 1 < points.length; i++) {
      const a = points[i].z, b = points[i + 1].z, frames = [];
      for (let s = 0; s <= steps; s++) {
        const t = s / steps, z = new Float32Array(d);
        for (let j = 0; j < d; j++) z[j] = (1 - t) * a[j] + t * b[j];
        frames.push({ z: z, pixels: report.decode(z) });
      }
      legs.push(frames);
    }
  }

  // The animation: every leg, the shared points once, lingering on each selected point.
  let sequence = [], shown = 0, timer = null;
  let playing = !(window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches);
  function animate() {
    clearTimeout(timer);
    timer = null;
    const canvas = $("explorer-animation");
    if (!sequence.length) {
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      canvas.dataset.frame = "";
      return;
    }
    shown = shown % sequence.length;
    const frame = sequence[shown];
    report.paint(canvas, frame.pixels, SIZE);
    canvas.dataset.frame = String(shown);
    document.querySelectorAll("#explorer-strip .frame.current").forEach(function (b) { b.classList.remove("current"); });
    if (frame.button) frame.button.classList.add("current");
    if (playing) {
      timer = setTimeout(function () { shown++; animate(); }, data.frameMs * (frame.pause ? 4 : 1));
    }
  }

  function renderStrip() {
    const strip = $("explorer-strip");
    strip.replaceChildren();
    sequence = [];
    legs.forEach(function (frames, i) {
      const row = element("div", "leg");
      row.appendChild(element("span", "leg-name", LETTERS[i] + " → " + LETTERS[i + 1]));
      const cells = element("div", "frames");
      frames.forEach(function (frame, s) {
        const button = element("button", "frame");
        button.type = "button";
        button.title = LETTERS[i] + " → " + LETTERS[i + 1] + ", step " + s + " of " + steps + ": to the sliders";
        button.setAttribute("aria-label", button.title);
        button.appendChild(imageCanvas(frame.pixels));
        button.addEventListener("click", function () {
          setSliders(frame.z, "step " + s + " of " + steps + " from " + LETTERS[i] + " to " + LETTERS[i + 1]);
        });
        cells.appendChild(button);
        if (i === 0 || s > 0) sequence.push({ pixels: frame.pixels, button: button, pause: s === 0 || s === steps });
      });
      row.appendChild(cells);
      strip.appendChild(row);
    });
    strip.hidden = !legs.length;
    shown = 0;
    animate();
  }

  // ---- the selected points ----------------------------------------------------------------

  function renderPoints() {
    const list = $("explorer-points");
    list.replaceChildren();
    points.forEach(function (point, i) {
      const card = element("li", "point" + (point.estimated ? " estimated" : ""));
      card.style.borderColor = colours[point.label];
      const pictures = element("div", "pictures");
      if (!point.estimated) {
        const picture = element("canvas");
        picture.width = picture.height = SIZE;
        map.drawImageOf(point.k, picture);
        picture.title = "the image";
        pictures.appendChild(picture);
      }
      const decoded = imageCanvas(report.decode(point.z));
      decoded.title = "its μ, decoded";
      pictures.appendChild(decoded);
      card.appendChild(pictures);
      const text = element("div", "point-text");
      text.appendChild(element("b", "", LETTERS[i] + " · " + (point.estimated ? "estimated" : classes[point.label])));
      text.appendChild(element("span", "", point.estimated
        ? "no image here: the weighted mean μ of the " + Math.min(NEIGHBOURS, selectable) + " nearest points (nearest: "
          + classes[point.label] + ")"
        : map.data.split + " image #" + point.row));
      text.appendChild(element("code", "", (point.estimated ? "z ≈ " : "μ = ") + vectorText(point.z)));
      card.appendChild(text);
      list.appendChild(card);
    });
  }

  function update() {
    makeWalk();
    renderPoints();
    renderStrip();
    $("explorer-swap").disabled = points.length < 2;
    $("explorer-clear").disabled = !points.length;
    $("explorer-extend").disabled = points.length < 2 || points.length >= MAX_POINTS;
    $("explorer-extend").setAttribute("aria-pressed", String(extending));
    $("explorer-walk").hidden = points.length < 2;
    const status = !points.length ? "Click a point on the map (or press Enter on it) to select it."
      : points.length === 1 ? "Selected " + describe(points[0], 0) + ". Click a second point: the walk between them."
      : "The walk " + points.map(function (p, i) { return describe(p, i); }).join(" → ") + ", "
        + (steps + 1) + " frames a leg." + (extending ? " Click a point to extend it." : "");
    $("explorer-status").textContent = status;
    map.redraw();
    drawPlane();
  }

  // The selected points on the map: a ring and a letter each.
  map.overlays.push(function (ctx, screenOf) {
    points.forEach(function (point, i) {
      const p = screenOf(point.u, point.v);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#fff";
      ctx.beginPath(); ctx.arc(p[0], p[1], 9, 0, 2 * Math.PI); ctx.stroke();
      ctx.lineWidth = 2;
      ctx.strokeStyle = point.estimated ? "#1d2330" : colours[point.label];
      ctx.setLineDash(point.estimated ? [3, 3] : []);
      ctx.beginPath(); ctx.arc(p[0], p[1], 9, 0, 2 * Math.PI); ctx.stroke();
      ctx.setLineDash([]);
      ctx.font = "700 13px system-ui, sans-serif";
      ctx.lineWidth = 4;
      ctx.strokeStyle = "#fff";
      ctx.strokeText(LETTERS[i], p[0] + 12, p[1] - 12);
      ctx.fillStyle = "#1d2330";
      ctx.fillText(LETTERS[i], p[0] + 12, p[1] - 12);
    });
  });
  map.onPick = pick;

  // ---- the sliders ------------------------------------------------------------------------

  const sliders = data.sliders.map(function (j) {
    const label = element("label", "slider");
    label.appendChild(element("span", "dim", "z" + j));
    const input = element("input");
    input.type = "range";
    input.min = String(-data.reach);
    input.max = String(data.reach);
    input.step = "0.01";
    input.value = "0";
    input.dataset.dim = String(j);
    input.setAttribute("aria-label", "latent dimension z" + j + " (KL " + data.kl[j].toFixed(2) + " nats)");
    const output = element("output", "", format(0));
    label.appendChild(input);
    label.appendChild(output);
    label.appendChild(element("small", "", "KL " + data.kl[j].toFixed(2)));
    $("explorer-sliders").appendChild(label);
    input.addEventListener("input", function () {
      sliderZ[j] = Number(input.value);
      output.textContent = format(sliderZ[j]);
      scheduleSliderImage();
    });
    return { dim: j, input: input, output: output };
  });

  let sliderPixels = null, framePending = false;
  function showSliderImage() {
    framePending = false;
    sliderPixels = report.decode(sliderZ);
    const canvas = $("explorer-slider-image");
    report.paint(canvas, sliderPixels, SIZE);
    canvas.dataset.z = Array.from(sliderZ, function (v) { return v.toFixed(3); }).join(",");
    drawPlane();
  }
  // One decode per displayed frame, however fast the slider moves.
  function scheduleSliderImage() {
    if (framePending) return;
    framePending = true;
    requestAnimationFrame(showSliderImage);
  }
  function setSliders(z, from) {
    sliderStart = Float32Array.from(z);
    sliderZ = Float32Array.from(z);
    sliderFrom = from;
    sliders.forEach(function (s) {
      s.input.value = String(sliderZ[s.dim]);
      s.output.textContent = format(sliderZ[s.dim]);
    });
    $("explorer-from").textContent = sliderFrom;
    showSliderImage();
  }

  // ---- a 2-D latent space: the plane itself -----------------------------------------------

  const plane = $("explorer-plane");
  const PLANE_GRID = 15;
  let manifold = null;
  const reach = data.reach;
  function planeXY(z) {
    return [(z[0] + reach) / (2 * reach) * plane.width, (reach - z[1]) / (2 * reach) * plane.height];
  }
  // The decoder over a grid of the plane: each tile is the decoding of its centre.
  function makeManifold() {
    manifold = document.createElement("canvas");
    manifold.width = manifold.height = PLANE_GRID * SIZE;
    const ctx = manifold.getContext("2d"), tile = document.createElement("canvas");
    for (let row = 0; row < PLANE_GRID; row++) {
      for (let col = 0; col < PLANE_GRID; col++) {
        const z = [-reach + (col + 0.5) * 2 * reach / PLANE_GRID, reach - (row + 0.5) * 2 * reach / PLANE_GRID];
        report.paint(tile, report.decode(z), SIZE);
        ctx.drawImage(tile, col * SIZE, row * SIZE);
      }
    }
  }
  let manifoldPending = false;
  function drawPlane() {
    if (!plane || d !== 2) return;
    const ctx = plane.getContext("2d");
    if (manifold) {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(manifold, 0, 0, plane.width, plane.height);
    } else {
      // Its 225 decodings wait until the page has loaded.
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, plane.width, plane.height);
      if (!manifoldPending) {
        manifoldPending = true;
        const later = function () { setTimeout(function () { makeManifold(); drawPlane(); }, 0); };
        if (document.readyState === "complete") later(); else window.addEventListener("load", later);
      }
    }
    ctx.font = "700 15px system-ui, sans-serif";
    if (points.length > 1) {         // the walk: a straight line here, as in the latent space
      ctx.strokeStyle = "#ffd166";
      ctx.lineWidth = 2;
      ctx.beginPath();
      points.forEach(function (point, i) {
        const p = planeXY(point.z);
        if (i) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]);
      });
      ctx.stroke();
    }
    points.forEach(function (point, i) {
      const p = planeXY(point.z);
      ctx.fillStyle = "#ffd166";
      ctx.fillText(LETTERS[i], p[0] + 7, p[1] - 7);
      ctx.beginPath(); ctx.arc(p[0], p[1], 4, 0, 2 * Math.PI); ctx.fill();
    });
    const s = planeXY(sliderZ);
    ctx.strokeStyle = "#ff4d4d";
    ctx.lineWidth = 3;
    ctx.beginPath(); ctx.arc(s[0], s[1], 10, 0, 2 * Math.PI); ctx.stroke();
    plane.dataset.point = s.map(function (v) { return v.toFixed(1); }).join(",");
  }
  if (plane && d === 2) {
    // Pressing or dragging on the plane moves the sliders' point there: it is the latent space itself.
    let dragging = false;
    const moveTo = function (event) {
      const box = plane.getBoundingClientRect();
      const x = (event.clientX - box.left) / box.width, y = (event.clientY - box.top) / box.height;
      sliderZ[0] = Math.max(-reach, Math.min(reach, -reach + 2 * reach * x));
      sliderZ[1] = Math.max(-reach, Math.min(reach, reach - 2 * reach * y));
      sliders.forEach(function (s) {
        s.input.value = String(sliderZ[s.dim]);
        s.output.textContent = format(sliderZ[s.dim]);
      });
      scheduleSliderImage();
    };
    plane.addEventListener("pointerdown", function (event) {
      dragging = true;
      plane.setPointerCapture(event.pointerId);
      moveTo(event);
    });
    plane.addEventListener("pointermove", function (event) { if (dragging) moveTo(event); });
    plane.addEventListener("pointerup", function () { dragging = false; });
  }

  // ---- the controls -----------------------------------------------------------------------

  $("explorer-swap").addEventListener("click", function () { points.reverse(); update(); });
  $("explorer-clear").addEventListener("click", function () {
    points = [];
    extending = false;
    setSliders(new Float32Array(d), "the origin, z = 0");
    update();
  });
  $("explorer-extend").addEventListener("click", function () { extending = !extending; update(); });
  $("explorer-random").addEventListener("click", function () {
    if (selectable) pick({ k: Math.floor(Math.random() * selectable) });
  });
  $("explorer-reset").addEventListener("click", function () { setSliders(sliderStart, sliderFrom); });
  const play = $("explorer-play");
  play.addEventListener("click", function () {
    playing = !playing;
    play.setAttribute("aria-pressed", String(playing));
    play.textContent = playing ? "pause" : "play";
    animate();
  });
  play.setAttribute("aria-pressed", String(playing));
  play.textContent = playing ? "pause" : "play";
  $("explorer-random").disabled = !selectable;

  report.explorer = {
    // What the explorer shows, as plain arrays: the points, the walk's frames per leg, the sliders' z and image.
    state: function () {
      return {
        points: points.map(function (p) {
          return { k: p.k, row: p.row, label: p.label, estimated: p.estimated, z: Array.from(p.z) };
        }),
        legs: legs.map(function (frames) {
          return frames.map(function (f) { return { z: Array.from(f.z), pixels: Array.from(f.pixels) }; });
        }),
        slider: { z: Array.from(sliderZ), pixels: sliderPixels ? Array.from(sliderPixels) : null, from: sliderFrom },
      };
    },
    pick: pick,
  };
  setSliders(sliderZ, sliderFrom);
  update();
  report.readyAt = performance.now();    // the page is interactive from here
})();
{% endraw %}

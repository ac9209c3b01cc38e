{% raw %}
// window.vaeReport: the one global the page's scripts share (latent_map.js adds `map`,
// decoder.js `decode`, explorer.js `explorer`), and the helpers they have in common.
(function () {
  "use strict";
  const report = window.vaeReport = window.vaeReport || {};

  // The bytes of a base64 string (the page's data blocks hold their arrays this way).
  report.bytes = function (base64) {
    const text = atob(base64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  };

  // Grey pixel values in [0, 1], row by row, painted onto a canvas of the image's own size.
  report.paint = function (canvas, pixels, size) {
    if (canvas.width !== size || canvas.height !== size) { canvas.width = size; canvas.height = size; }
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(size, size);
    for (let i = 0; i < size * size; i++) {
      const grey = Math.round(Math.min(1, Math.max(0, pixels[i])) * 255);
      image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = grey;
      image.data[4 * i + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
  };
})();
{% endraw %}

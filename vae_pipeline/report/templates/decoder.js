{% raw %}
// The VAE's decoder, run in the page: window.vaeReport.decode(z) takes a latent vector
// (an array of latentDim numbers) and returns the image's pixel values in [0, 1], a
// Float32Array of 784, row by row. The weights are the JSON block #decoder-data, made by
// vae_pipeline/report/explorer.py: dense layers, ReLU between them, a sigmoid after the
// last, as the model's own decode. No library.
(function () {
  "use strict";
  const node = document.getElementById("decoder-data");
  if (!node) return;
  const report = window.vaeReport;
  const packed = JSON.parse(node.textContent);

  // float16 -> float32: a table of all 65,536 half-precision values, made once.
  function halfTable() {
    const table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
      table[h] = exponent === 0 ? sign * fraction * Math.pow(2, -24)
        : exponent === 31 ? (fraction ? NaN : sign * Infinity)
        : sign * (1 + fraction / 1024) * Math.pow(2, exponent - 15);
    }
    return table;
  }
  let halves = null;
  // The stored arrays are little-endian, as are the typed arrays of every browser in use.
  function floats(base64, type) {
    const raw = report.bytes(base64);
    if (type === "float32") return new Float32Array(raw.buffer);
    halves = halves || halfTable();
    const half = new Uint16Array(raw.buffer), out = new Float32Array(half.length);
    for (let i = 0; i < half.length; i++) out[i] = halves[half[i]];
    return out;
  }
  const layers = packed.layers.map(function (layer) {
    return { in: layer.in, out: layer.out, weight: floats(layer.weight, layer.weightType),
             bias: floats(layer.bias, "float32") };
  });
  const latentDim = layers[0].in;

  function decode(z) {
    if (!z || z.length !== latentDim) {
      throw new RangeError("vaeReport.decode: z needs " + latentDim + " numbers, got " + (z ? z.length : z));
    }
    let x = Float64Array.from(z);
    for (let l = 0; l < layers.length; l++) {
      const layer = layers[l], w = layer.weight, n = layer.in, y = new Float64Array(layer.out);
      for (let o = 0; o < layer.out; o++) {
        let sum = layer.bias[o];
        for (let i = 0, at = o * n; i < n; i++) sum += w[at + i] * x[i];
        y[o] = l < layers.length - 1 ? Math.max(0, sum) : 1 / (1 + Math.exp(-sum));
      }
      x = y;
    }
    return Float32Array.from(x);
  }

  report.decode = decode;
  report.decoder = { latentDim: latentDim, pixels: layers[layers.length - 1].out,
                     weightType: packed.layers[0].weightType, maxError: packed.maxError, checked: packed.checked };
})();
{% endraw %}

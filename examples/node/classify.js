#!/usr/bin/env node
// Classify digit images with toolkit's app-ready model (exported/model.app.onnx) from Node.js.
// The model takes raw 28x28 uint8 pixels (white digit on black) and returns `probabilities` [N,10] and
// `digit` [N]; normalization is inside the graph, so this file needs no constants from training.
'use strict';

const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');
const { PNG } = require('pngjs');

const SIDE = 28;

// Grayscale as Pillow's convert("L") computes it (ITU-R 601-2 luma), after compositing alpha onto white,
// so this program sees the same pixels as `toolkit predict`.
function readDigit(file) {
  let png;
  try {
    png = PNG.sync.read(fs.readFileSync(file));
  } catch (e) {
    throw new Error(`${file}: not a readable PNG (${e.message})`);
  }
  if (png.width !== SIDE || png.height !== SIDE) {
    throw new Error(`${file}: ${png.width}x${png.height}; this example takes 28x28 PNGs (toolkit predict fits any size)`);
  }
  const gray = new Uint8Array(SIDE * SIDE);
  for (let i = 0; i < SIDE * SIDE; i++) {
    const [r, g, b, a] = png.data.subarray(4 * i, 4 * i + 4);
    const luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
    gray[i] = Math.round((luma * a + 255 * (255 - a)) / 255);
  }
  // MNIST digits are white on black: invert a dark digit on a light background (bright border).
  let border = 0;
  for (let k = 0; k < SIDE; k++) {
    border += gray[k] + gray[(SIDE - 1) * SIDE + k] + gray[k * SIDE] + gray[k * SIDE + SIDE - 1];
  }
  if (border / (4 * SIDE) > 127) {
    for (let i = 0; i < gray.length; i++) gray[i] = 255 - gray[i];
  }
  return gray;
}

async function classify(modelPath, files) {
  const session = await ort.InferenceSession.create(modelPath);
  if (!session.inputNames.includes('pixels') || !session.outputNames.includes('digit')) {
    throw new Error(`${modelPath} is not toolkit's app-ready model (inputs ${session.inputNames}); export it with toolkit export --format onnx-app`);
  }
  const pixels = new Uint8Array(files.length * SIDE * SIDE);
  files.forEach((file, n) => pixels.set(readDigit(file), n * SIDE * SIDE));
  const out = await session.run({ pixels: new ort.Tensor('uint8', pixels, [files.length, SIDE, SIDE]) });
  const probs = out.probabilities.data;
  return files.map((file, n) => {
    const row = Array.from(probs.subarray(10 * n, 10 * n + 10));
    const digit = Number(out.digit.data[n]);
    return { file, digit, probability: row[digit], probabilities: row };
  });
}

async function main(argv) {
  let model = path.join(__dirname, '..', '..', 'exported', 'model.app.onnx');
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--model') model = argv[++i];
    else files.push(argv[i]);
  }
  if (files.length === 0) throw new Error('usage: classify.js [--model model.app.onnx] IMAGE.png...');
  if (!fs.existsSync(model)) throw new Error(`${model} not found; run toolkit export --format onnx-app first`);
  console.log(JSON.stringify(await classify(model, files)));
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(`error: ${e.message}`);
    process.exit(1);
  });
}

module.exports = { classify, readDigit };

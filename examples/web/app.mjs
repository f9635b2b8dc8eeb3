// The draw-a-digit page: a canvas, toolkit's model.app.onnx on ONNX Runtime Web (wasm), a bar chart.
//
// Served by `toolkit web`, which maps ONNX Runtime Web's npm files to /ort/ and the exported model to
// /model/model.app.onnx, with the headers that make the page cross-origin isolated (needed for threads).
// `?threads=N` sets the number of wasm threads (default: up to 4 where the page is isolated, else 1).
import * as ort from '/ort/ort.wasm.min.mjs';
import { SIDE, mnistPixels } from './mnist-preprocess.mjs';

const MODEL_URL = '/model/model.app.onnx';
const MAX_PIXELS = 40_000_000; // the limit toolkit predict uses for image files

const pad = document.getElementById('pad');
const padContext = pad.getContext('2d', { willReadFrequently: true });
const inputView = document.getElementById('input').getContext('2d');
const digitView = document.getElementById('digit');
const confidenceView = document.getElementById('confidence');
const statusView = document.getElementById('status');
const bars = document.getElementById('bars');

const requested = Number(new URLSearchParams(location.search).get('threads'));
const threads = !crossOriginIsolated ? 1
  : Number.isInteger(requested) && requested >= 1 ? requested : Math.min(4, navigator.hardwareConcurrency || 1);
ort.env.wasm.wasmPaths = '/ort/';
ort.env.wasm.numThreads = threads;

for (let d = 0; d < 10; d++) {
  const row = document.createElement('li');
  row.innerHTML = `<span class="label">${d}</span><div class="track"><div class="fill"></div></div><span class="pct">–</span>`;
  bars.append(row);
}

function clearPad() {
  padContext.fillStyle = '#ffffff';
  padContext.fillRect(0, 0, pad.width, pad.height);
}
clearPad();

let session;
let lastMs = 0;

/** Classify N digits: `pixels` is a Uint8Array of N*28*28 (white on black). Returns the model's outputs. */
async function classify(pixels) {
  const n = pixels.length / (SIDE * SIDE);
  const out = await session.run({ pixels: new ort.Tensor('uint8', pixels, [n, SIDE, SIDE]) });
  return { digits: Array.from(out.digit.data, Number), probabilities: out.probabilities.data };
}

function describe() {
  const isolation = crossOriginIsolated ? 'cross-origin isolated' : 'not cross-origin isolated, so 1 thread';
  const timing = lastMs ? ` · last run ${lastMs.toFixed(2)} ms` : '';
  return `ONNX Runtime Web ${ort.env.versions.web} · wasm · ${threads} thread${threads > 1 ? 's' : ''} · ${isolation}${timing}`;
}

function show(pixels, result) {
  const image = inputView.createImageData(SIDE, SIDE);
  pixels.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
  inputView.putImageData(image, 0, 0);
  const probabilities = result ? Array.from(result.probabilities) : null;
  const top = result ? result.digits[0] : -1;
  digitView.textContent = result ? String(top) : '–';
  digitView.classList.toggle('empty', !result);
  confidenceView.textContent = result ? `${(100 * probabilities[top]).toFixed(1)}% sure` : 'draw a digit';
  [...bars.children].forEach((row, d) => {
    const p = probabilities ? probabilities[d] : 0;
    row.classList.toggle('top', d === top);
    row.querySelector('.fill').style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector('.pct').textContent = probabilities ? `${(100 * p).toFixed(1)}%` : '–';
  });
  statusView.textContent = describe();
  document.body.dataset.prediction = result ? String(top) : '';
}

// One classification at a time; strokes that arrive meanwhile are folded into the next one.
let busy = false;
let pending = null;
async function predictImage(imageData) {
  if (busy) {
    pending = imageData;
    return;
  }
  busy = true;
  try {
    const pixels = mnistPixels(imageData);
    const empty = !pixels.some((v) => v > 0);
    const start = performance.now();
    const result = empty ? null : await classify(pixels);
    if (!empty) lastMs = performance.now() - start;
    show(pixels, result);
  } finally {
    busy = false;
  }
  if (pending) {
    const next = pending;
    pending = null;
    await predictImage(next);
  }
}
const predictPad = () => predictImage(padContext.getImageData(0, 0, pad.width, pad.height));

// Drawing: pointer events cover mouse, pen and touch alike.
let drawing = false;
let frameRequested = false;
function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}
pad.addEventListener('pointerdown', (event) => {
  if (!session) return;
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  const [x, y] = padPoint(event);
  padContext.strokeStyle = '#1d2433';
  padContext.fillStyle = '#1d2433';
  padContext.lineWidth = 18;
  padContext.lineCap = 'round';
  padContext.lineJoin = 'round';
  padContext.beginPath();
  padContext.arc(x, y, padContext.lineWidth / 2, 0, 2 * Math.PI);
  padContext.fill();
  padContext.beginPath();
  padContext.moveTo(x, y);
});
pad.addEventListener('pointermove', (event) => {
  if (!drawing) return;
  const [x, y] = padPoint(event);
  padContext.lineTo(x, y);
  padContext.stroke();
  padContext.beginPath();
  padContext.moveTo(x, y);
  if (!frameRequested) { // classify at most once per frame while the stroke goes on
    frameRequested = true;
    requestAnimationFrame(() => {
      frameRequested = false;
      predictPad();
    });
  }
});
const endStroke = () => {
  if (!drawing) return;
  drawing = false;
  predictPad();
};
pad.addEventListener('pointerup', endStroke);
pad.addEventListener('pointercancel', endStroke);
document.getElementById('clear').addEventListener('click', () => {
  clearPad();
  predictPad();
});

// Image files: classified from their own pixels (like toolkit predict), shown fitted on the pad.
async function openImage(file) {
  if (!file || !session) return;
  try {
    const bitmap = await createImageBitmap(file, { imageOrientation: 'from-image' });
    if (bitmap.width * bitmap.height > MAX_PIXELS) throw new Error(`${bitmap.width}x${bitmap.height} is too large`);
    const full = new OffscreenCanvas(bitmap.width, bitmap.height).getContext('2d', { willReadFrequently: true });
    full.drawImage(bitmap, 0, 0);
    clearPad();
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale, h = bitmap.height * scale;
    padContext.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    await predictImage(full.getImageData(0, 0, bitmap.width, bitmap.height));
  } catch (e) {
    statusView.textContent = `${file.name}: not a readable image (${e.message})`;
  }
}
document.getElementById('file').addEventListener('change', (event) => openImage(event.target.files[0]));
pad.addEventListener('dragover', (event) => {
  event.preventDefault();
  pad.classList.add('dragging');
});
pad.addEventListener('dragleave', () => pad.classList.remove('dragging'));
pad.addEventListener('drop', (event) => {
  event.preventDefault();
  pad.classList.remove('dragging');
  openImage(event.dataTransfer.files[0]);
});

// For scripts driving the page (the browser test, the benchmark): window.demo.
const ready = (async () => {
  try {
    session = await ort.InferenceSession.create(MODEL_URL, { executionProviders: ['wasm'] });
  } catch (e) {
    statusView.textContent = `cannot load ${MODEL_URL}: ${e.message}`;
    statusView.classList.add('error');
    throw e;
  }
  statusView.textContent = describe();
  document.body.dataset.ready = 'true';
  return { ortVersion: ort.env.versions.web, threads, crossOriginIsolated };
})();
window.demo = { ready, classify, mnistPixels };

#!/usr/bin/env node
// Classify digit images (PNG or JPEG, any size and colour) with toolkit's app-ready model from Node.js.
//
//   node classify.js [--model exported/model.app.onnx] [--invert | --no-invert] [--pixels] IMAGE...
//
// Prints one JSON list: the file, digit, its probability and all 10 probabilities per image (`--pixels` adds
// the 28x28 input the model saw). Images become the model's input through ../web/mnist-preprocess.mjs, the
// module the web page uses, which follows the steps of `toolkit predict`. The model takes raw uint8 pixels
// and holds its normalization inside, so this file needs no constants from training.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ort from 'onnxruntime-node';
import pngjs from 'pngjs';
import jpeg from 'jpeg-js';
import { SIDE, mnistPixels } from '../web/mnist-preprocess.mjs';

const MAX_PIXELS = 40_000_000; // refuse larger images before decoding them, as toolkit predict does

// EXIF orientation (1-8) of a JPEG, or 1 when it has none: phones store photos unrotated and say so here.
function jpegOrientation(buf) {
  let at = 2;
  while (at + 4 <= buf.length && buf[at] === 0xff) {
    const marker = buf[at + 1];
    const length = buf.readUInt16BE(at + 2);
    if (marker === 0xe1 && buf.toString('latin1', at + 4, at + 10) === 'Exif\0\0') {
      const tiff = at + 10;
      const little = buf.toString('latin1', tiff, tiff + 2) === 'II';
      const u16 = (o) => (little ? buf.readUInt16LE(o) : buf.readUInt16BE(o));
      const u32 = (o) => (little ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
      const ifd = tiff + u32(tiff + 4);
      const entries = u16(ifd);
      for (let e = 0; e < entries; e++) {
        const entry = ifd + 2 + 12 * e;
        if (u16(entry) === 0x0112) return u16(entry + 8);
      }
      return 1;
    }
    if (marker === 0xda) break; // image data starts: no EXIF before it
    at += 2 + length;
  }
  return 1;
}

// Apply an EXIF orientation to RGBA pixels, as Pillow's ImageOps.exif_transpose does.
function orient({ data, width, height }, orientation) {
  if (orientation <= 1 || orientation > 8) return { data, width, height };
  const swap = orientation >= 5;
  const ow = swap ? height : width, oh = swap ? width : height;
  const out = new Uint8Array(ow * oh * 4);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      // (sx, sy): the source pixel shown at (x, y) after the rotation/mirror the tag asks for
      const [sx, sy] = {
        2: [width - 1 - x, y], 3: [width - 1 - x, height - 1 - y], 4: [x, height - 1 - y],
        5: [y, x], 6: [y, height - 1 - x], 7: [width - 1 - y, height - 1 - x], 8: [width - 1 - y, x],
      }[orientation];
      out.set(data.subarray(4 * (sy * width + sx), 4 * (sy * width + sx) + 4), 4 * (y * ow + x));
    }
  }
  return { data: out, width: ow, height: oh };
}

/** Decode a PNG or JPEG file into RGBA pixels: {data, width, height}. */
export function decodeImage(file) {
  let buf;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new Error(`${file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`);
  }
  if (buf.length === 0) throw new Error(`${file}: empty file, not an image`);
  const tooLarge = (w, h) => new Error(`${file}: ${w}x${h} is too large (limit ${MAX_PIXELS / 1e6} megapixels)`);
  try {
    if (buf.length > 24 && buf.toString('latin1', 1, 4) === 'PNG') {
      const w = buf.readUInt32BE(16), h = buf.readUInt32BE(20);
      if (w * h > MAX_PIXELS) throw tooLarge(w, h);
      const png = pngjs.PNG.sync.read(buf);
      return { data: png.data, width: png.width, height: png.height };
    }
    if (buf[0] === 0xff && buf[1] === 0xd8) {
      const img = jpeg.decode(buf, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: MAX_PIXELS / 1e6 });
      return orient(img, jpegOrientation(buf));
    }
  } catch (e) {
    if (e.message.startsWith(`${file}:`)) throw e;
    throw new Error(`${file}: cannot decode image (${e.message})`);
  }
  throw new Error(`${file}: not a readable image (PNG or JPEG)`);
}

/** An image file -> the model's 28x28 uint8 input (white digit on black), like `toolkit predict`. */
export function readDigit(file, invert) {
  return mnistPixels(decodeImage(file), { invert });
}

export async function classify(modelPath, files, { invert, pixels: withPixels = false } = {}) {
  const inputs = files.map((file) => readDigit(file, invert)); // read every image first: a bad file fails fast
  const session = await ort.InferenceSession.create(modelPath);
  if (!session.inputNames.includes('pixels') || !session.outputNames.includes('digit')) {
    throw new Error(`${modelPath} is not toolkit's app-ready model (inputs ${session.inputNames}); export it with toolkit export --format onnx-app`);
  }
  const batch = new Uint8Array(files.length * SIDE * SIDE);
  inputs.forEach((digit, n) => batch.set(digit, n * SIDE * SIDE));
  const out = await session.run({ pixels: new ort.Tensor('uint8', batch, [files.length, SIDE, SIDE]) });
  const probs = out.probabilities.data;
  return files.map((file, n) => {
    const row = Array.from(probs.subarray(10 * n, 10 * n + 10));
    const digit = Number(out.digit.data[n]);
    const result = { file, digit, probability: row[digit], probabilities: row };
    if (withPixels) result.pixels = Array.from(inputs[n]);
    return result;
  });
}

async function main(argv) {
  const here = path.dirname(fileURLToPath(import.meta.url));
  let model = path.join(here, '..', '..', 'exported', 'model.app.onnx');
  let invert;
  let pixels = false;
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--model') model = argv[++i];
    else if (argv[i] === '--invert') invert = true;
    else if (argv[i] === '--no-invert') invert = false;
    else if (argv[i] === '--pixels') pixels = true;
    else if (argv[i].startsWith('--')) throw new Error(`unknown option ${argv[i]}`);
    else files.push(argv[i]);
  }
  if (!model || files.length === 0) {
    throw new Error('usage: classify.js [--model model.app.onnx] [--invert|--no-invert] [--pixels] IMAGE...');
  }
  if (!fs.existsSync(model)) throw new Error(`${model} not found; run toolkit export --format onnx-app first`);
  console.log(JSON.stringify(await classify(model, files, { invert, pixels })));
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(`error: ${String(e.message).split('\n')[0]}`);
    process.exit(1);
  });
}

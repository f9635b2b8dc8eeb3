// Any RGBA image -> the 28x28 uint8 digit (white on black) that toolkit's model.app.onnx takes.
//
// The same steps as toolkit/preprocess.py's load_image, so a page, a Node program and `toolkit predict`
// feed the model the same pixels: alpha composited onto white, Pillow's grayscale, a dark digit on a
// light background inverted, then (unless the image is already 28x28) the digit's bounding box scaled to
// 20x20 with Pillow's Lanczos filter and placed in 28x28 by its centre of mass. Integer arithmetic follows
// Pillow's, so the result matches Python's to the pixel. Works in browsers and in Node.js (no imports).

export const SIDE = 28;
const FIT = 20;

// Pillow's alpha_composite of one channel over opaque white (7 extra bits, rounded division by 255).
function overWhite(value, alpha) {
  if (alpha === 0) return 255;
  const t = value * alpha * 128 + 255 * (255 - alpha) * 128 + (0x80 << 7);
  return (((t >>> 8) + t) >>> 8) >>> 7;
}

/** RGBA bytes (width x height, row-major) -> grayscale Uint8Array, as Pillow's convert("L") after
 *  compositing any transparency onto white (ITU-R 601-2 luma in Pillow's fixed point). */
export function toGray(rgba, width, height) {
  const n = width * height;
  if (rgba.length !== 4 * n) throw new Error(`expected ${4 * n} RGBA bytes for ${width}x${height}, got ${rgba.length}`);
  const gray = new Uint8Array(n);
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    let r = rgba[j], g = rgba[j + 1], b = rgba[j + 2];
    const a = rgba[j + 3];
    if (a !== 255) {
      r = overWhite(r, a);
      g = overWhite(g, a);
      b = overWhite(b, a);
    }
    gray[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16;
  }
  return gray;
}

/** True when the border is mostly light, i.e. a dark digit on a light background (MNIST is the reverse). */
export function isDarkOnLight(gray, width, height) {
  let sum = 0;
  for (let x = 0; x < width; x++) sum += gray[x] + gray[(height - 1) * width + x];
  for (let y = 0; y < height; y++) sum += gray[y * width] + gray[y * width + width - 1];
  return sum / (2 * width + 2 * height) > 127;
}

// Python's round(): halves go to the even neighbour.
function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function sinc(x) {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

function lanczos(x) {
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

const PRECISION_BITS = 22; // Pillow: 32 - 8 - 2

// One axis of Pillow's two-pass resampling: for each output index, the first input index, how many inputs
// it reads, and their weights in fixed point.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 3 * filterScale;
  const ss = 1 / filterScale;
  const taps = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const first = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - first;
    const w = new Float64Array(count);
    let total = 0;
    for (let x = 0; x < count; x++) {
      w[x] = lanczos((x + first - center + 0.5) * ss);
      total += w[x];
    }
    const k = new Int32Array(count);
    for (let x = 0; x < count; x++) {
      const v = total !== 0 ? w[x] / total : w[x];
      k[x] = Math.trunc(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    taps.push({ first, k });
  }
  return taps;
}

function clip8(acc) {
  if (acc >= 1 << PRECISION_BITS << 8) return 255;
  if (acc <= 0) return 0;
  return acc >> PRECISION_BITS;
}

function resampleRows(src, w, outWidth, rows) {
  const taps = coefficients(w, outWidth);
  const out = new Uint8Array(outWidth * rows);
  for (let y = 0; y < rows; y++) {
    for (let xx = 0; xx < outWidth; xx++) {
      const { first, k } = taps[xx];
      let acc = 1 << (PRECISION_BITS - 1);
      for (let x = 0; x < k.length; x++) acc += src[y * w + first + x] * k[x];
      out[y * outWidth + xx] = clip8(acc);
    }
  }
  return out;
}

function resampleColumns(src, w, h, outHeight) {
  const taps = coefficients(h, outHeight);
  const out = new Uint8Array(w * outHeight);
  for (let yy = 0; yy < outHeight; yy++) {
    const { first, k } = taps[yy];
    for (let x = 0; x < w; x++) {
      let acc = 1 << (PRECISION_BITS - 1);
      for (let y = 0; y < k.length; y++) acc += src[(first + y) * w + x] * k[y];
      out[yy * w + x] = clip8(acc);
    }
  }
  return out;
}

/** Resize a grayscale image as Pillow's Image.resize(size, Image.Resampling.LANCZOS) does, bit for bit.
 *  The two passes round to 8 bits in between, so their order matters: Pillow 13 runs the vertical pass
 *  first when the height shrinks by more than twice as many pixels as the width (earlier Pillow releases
 *  always ran the horizontal pass first, which can change a pixel by 1-2 levels). */
export function resizeLanczos(gray, width, height, outWidth, outHeight) {
  const needH = outWidth !== width, needV = outHeight !== height;
  if (!needH && !needV) return gray.slice();
  const verticalFirst = height - outHeight > 0 && height - outHeight > (width - outWidth) * 2;
  if (verticalFirst) {
    const tmp = needV ? resampleColumns(gray, width, height, outHeight) : gray;
    return needH ? resampleRows(tmp, width, outWidth, outHeight) : tmp;
  }
  const tmp = needH ? resampleRows(gray, width, outWidth, height) : gray;
  return needV ? resampleColumns(tmp, outWidth, height, outHeight) : tmp;
}

/** A white-on-black grayscale digit of any size -> 28x28 like MNIST: bounding box of the pixels brighter
 *  than 20% of the maximum, scaled to fit 20x20, centred by centre of mass. */
export function fitLikeMnist(gray, width, height) {
  let max = 0;
  for (let i = 0; i < gray.length; i++) if (gray[i] > max) max = gray[i];
  const out = new Uint8Array(SIDE * SIDE);
  if (max === 0) return out;
  const threshold = 0.2 * max;
  let top = height, bottom = -1, left = width, right = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (gray[y * width + x] > threshold) {
        if (y < top) top = y;
        if (y > bottom) bottom = y;
        if (x < left) left = x;
        if (x > right) right = x;
      }
    }
  }
  const h = bottom - top + 1, w = right - left + 1;
  const crop = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) crop.set(gray.subarray((top + y) * width + left, (top + y) * width + left + w), y * w);
  const scale = FIT / Math.max(h, w);
  const dw = Math.max(1, roundHalfEven(w * scale)), dh = Math.max(1, roundHalfEven(h * scale));
  const digit = resizeLanczos(crop, w, h, dw, dh);
  let total = 0, sy = 0, sx = 0;
  for (let y = 0; y < dh; y++) {
    for (let x = 0; x < dw; x++) {
      const v = digit[y * dw + x];
      total += v;
      sy += y * v;
      sx += x * v;
    }
  }
  const cy = total ? sy / total : dh / 2, cx = total ? sx / total : dw / 2;
  const oy = Math.min(Math.max(roundHalfEven(14 - cy), 0), SIDE - dh);
  const ox = Math.min(Math.max(roundHalfEven(14 - cx), 0), SIDE - dw);
  for (let y = 0; y < dh; y++) out.set(digit.subarray(y * dw, (y + 1) * dw), (oy + y) * SIDE + ox);
  return out;
}

/** An RGBA image ({data, width, height}, as ImageData or a decoded PNG/JPEG) -> the model's 28x28 input.
 *  `invert`: undefined detects a dark digit on a light background from the border; true/false forces it. */
export function mnistPixels({ data, width, height }, { invert } = {}) {
  const gray = toGray(data, width, height);
  if (invert ?? isDarkOnLight(gray, width, height)) {
    for (let i = 0; i < gray.length; i++) gray[i] = 255 - gray[i];
  }
  return width === SIDE && height === SIDE ? gray : fitLikeMnist(gray, width, height);
}

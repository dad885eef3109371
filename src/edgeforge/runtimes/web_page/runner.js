// The page side of edgeforge's `web` runtime (see edgeforge/runtimes/_browser.py).
//
// Protocol, all paths relative to this page and served by the Python side on 127.0.0.1:
//   GET  config.json  -> {model, externalData, numThreads}
//   POST ready        <- {ok: true, inputNames, outputNames, loadMs} or {ok: false, error,
//                        stage: 'setup' when the page itself is broken}
//   GET  job          -> 200 {id, feeds: {name: {dtype, shape, data}}} | 200 {stop: true}
//                        | 204 (nothing yet: ask again)
//   POST result       <- {id, outputs: {name: {dtype, shape, data}}, ms} or {id, error}
//   POST log          <- {kind, message}: uncaught errors and console errors/warnings
// Tensor data travels as base64 of the little-endian bytes, in C order; strings as a JSON list.
'use strict';

const ARRAYS = {
  bool: Uint8Array,
  float16: Uint16Array,
  float32: Float32Array,
  float64: Float64Array,
  int8: Int8Array,
  int16: Int16Array,
  int32: Int32Array,
  int64: BigInt64Array,
  uint8: Uint8Array,
  uint16: Uint16Array,
  uint32: Uint32Array,
  uint64: BigUint64Array,
};

function post(path, body) {
  return fetch(path, {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify(body),
  });
}

function describe(error) {
  if (error === undefined || error === null) return String(error);
  return String(error.message || error);
}

function report(kind, message) {
  post('log', {kind, message: String(message)}).catch(() => {});
}

window.addEventListener('error', (e) => report('error', `${e.message} (${e.filename}:${e.lineno})`));
window.addEventListener('unhandledrejection', (e) => report('error', describe(e.reason)));
for (const level of ['error', 'warn']) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    report(level, args.map(String).join(' '));
    original(...args);
  };
}

function decode(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes.buffer;
}

function encode(view) {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  const parts = [];
  for (let i = 0; i < bytes.length; i += 0x8000) {
    parts.push(String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000)));
  }
  return btoa(parts.join(''));
}

async function run(session, job) {
  const feeds = {};
  for (const [name, t] of Object.entries(job.feeds)) {
    if (t.dtype === 'string') {
      feeds[name] = new ort.Tensor('string', t.data, t.shape);
      continue;
    }
    const Typed = ARRAYS[t.dtype];
    if (!Typed) throw new Error(`input ${name}: dtype ${t.dtype} has no typed array here`);
    feeds[name] = new ort.Tensor(t.dtype, new Typed(decode(t.data)), t.shape);
  }
  const start = performance.now();
  const results = await session.run(feeds);
  const ms = performance.now() - start;
  const outputs = {};
  for (const [name, tensor] of Object.entries(results)) {
    const shape = Array.from(tensor.dims);
    if (tensor.type === 'string') {
      outputs[name] = {dtype: 'string', shape, data: Array.from(tensor.data)};
    } else if (ArrayBuffer.isView(tensor.data)) {
      outputs[name] = {dtype: tensor.type, shape, data: encode(tensor.data)};
    } else {
      throw new Error(`output ${name}: dtype ${tensor.type} cannot be sent back`);
    }
  }
  return {id: job.id, outputs, ms};
}

async function main() {
  const config = await (await fetch('config.json')).json();
  if (typeof ort === 'undefined') {
    await post('ready', {ok: false, stage: 'setup', error: 'the onnxruntime-web script did not load'});
    return;
  }
  let session;
  try {
    ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;
    if (config.numThreads) ort.env.wasm.numThreads = config.numThreads;
    ort.env.logLevel = 'error';
    const options = {executionProviders: ['wasm']};
    if (config.externalData.length) options.externalData = config.externalData;
    const start = performance.now();
    session = await ort.InferenceSession.create(config.model, options);
    await post('ready', {
      ok: true,
      inputNames: session.inputNames,
      outputNames: session.outputNames,
      loadMs: performance.now() - start,
      crossOriginIsolated: self.crossOriginIsolated,
    });
  } catch (error) {
    await post('ready', {ok: false, error: describe(error)});
    return;
  }
  for (;;) {
    const response = await fetch('job');
    if (response.status === 204) continue;
    if (!response.ok) return;
    const job = await response.json();
    if (job.stop) return;
    let answer;
    try {
      answer = await run(session, job);
    } catch (error) {
      answer = {id: job.id, error: describe(error)};
    }
    await post('result', answer);
  }
}

main().catch((error) => report('error', describe(error)));

// ort_worker.js - ONNX Runtime (CPU, onnxruntime-node) as a worker process
// for `make bench-compare` (bench/compare.py drives it; see bench/README.md).
//
//   node bench/ort_worker.js MODEL.onnx NMAX SETDIR... [--overhead TINY.onnx]
//
// Loads the exported reference model in one session on the CPU execution
// provider with one intra-op and one inter-op thread, all graph
// optimisations and sequential execution, reads the same raw input sets as
// bench_engine (see bench_engine.c), and answers the same line protocol:
//
//   probs S N      ->  ok p_1 .. p_N
//   time S N K     ->  ok CPU_NS t_1 .. t_K      (K timed session.run, ns)
//   overhead K     ->  ok CPU_NS t_1 .. t_K      (session.run of TINY.onnx)
//   quit
//
// Input tensors for the first N rows are views of the set's arrays, made
// once per (S, N) and not timed; a timed call is `await session.run(feeds)`
// as a Node program calls it (the binding runs the graph synchronously
// inside one setImmediate; the output is copied into a JS array).
// TINY.onnx (one Add on a (N,) tensor) measures that call overhead alone.
// If onnxruntime-node cannot load or run, the worker prints
// "unavailable <reason>" and exits, and the coordinator says so.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');

const INPUTS = [
  // name, element type, file suffix
  ['ctx', 'int64', 'i64'],
  ['item_id', 'int64', 'i64'],
  ['item_tags', 'int64', 'i64'],
  ['item_mm', 'float32', 'f32'],
  ['seq_id', 'int64', 'i64'],
  ['seq_tags', 'int64', 'i64'],
  ['seq_mm', 'float32', 'f32'],
];

function say(line) {
  process.stdout.write(line + '\n');
}

function readArray(file, type) {
  const buf = fs.readFileSync(file);
  // Copy into a fresh, aligned ArrayBuffer (a Buffer may sit at any offset
  // of a shared pool).
  const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  return type === 'int64' ? new BigInt64Array(ab) : new Float32Array(ab);
}

function loadSet(dir, nmax) {
  const meta = JSON.parse(fs.readFileSync(path.join(dir, 'meta.json'), 'utf8'));
  const set = {};
  // The set names its inputs (QIN and DIN: the seven above; TIN: its own).
  set.inputs = meta.inputs || INPUTS;
  for (const [name, type, ext] of set.inputs) {
    const shape = meta.shapes[name];
    if (shape[0] !== nmax) throw new Error(`${dir}: ${name} has ${shape[0]} rows, expected ${nmax}`);
    const data = readArray(path.join(dir, `${name}.${ext}`), type);
    const count = shape.reduce((a, b) => a * b, 1);
    if (data.length !== count) throw new Error(`${dir}/${name}.${ext}: ${data.length} elements, expected ${count}`);
    set[name] = { type, shape, data, rowSize: count / nmax };
  }
  return set;
}

function feedsFor(ort, set, n) {
  const feeds = {};
  for (const [name] of set.inputs) {
    const a = set[name];
    feeds[name] = new ort.Tensor(a.type, a.data.subarray(0, n * a.rowSize), [n, ...a.shape.slice(1)]);
  }
  return feeds;
}

function cpuNs(start) {
  const u = process.cpuUsage(start);
  return (u.user + u.system) * 1000;
}

async function main() {
  const args = process.argv.slice(2);
  let overheadPath = null;
  const oi = args.indexOf('--overhead');
  if (oi >= 0) {
    overheadPath = args[oi + 1];
    args.splice(oi, 2);
  }
  const [modelPath, nmaxArg, ...setDirs] = args;
  const nmax = parseInt(nmaxArg, 10);

  let ort;
  try {
    ort = require('onnxruntime-node');
  } catch (e) {
    say(`unavailable require('onnxruntime-node') failed: ${String(e.message).split('\n')[0]}`);
    return;
  }
  const options = {
    executionProviders: ['cpu'],
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  };
  let session, tiny = null;
  const sets = [];
  try {
    session = await ort.InferenceSession.create(modelPath, options);
    if (overheadPath) tiny = await ort.InferenceSession.create(overheadPath, options);
    for (const d of setDirs) sets.push(loadSet(d, nmax));
    // One real run, so that a library that loads but cannot compute is
    // reported as unavailable, not as a failed benchmark.
    await session.run(feedsFor(ort, sets[0], 1));
  } catch (e) {
    say(`unavailable ${String(e.message).split('\n')[0]}`);
    return;
  }
  say(`ready ort=${ort.env.versions.node || ort.env.versions.common} ` +
      `inputs=${session.inputNames.join(',')} outputs=${session.outputNames.join(',')}`);

  const cache = new Map();
  const feeds = (s, n) => {
    const key = `${s}/${n}`;
    if (!cache.has(key)) cache.set(key, feedsFor(ort, sets[s], n));
    return cache.get(key);
  };
  const tinyFeeds = { x: new ort.Tensor('float32', new Float32Array(16), [16]) };
  const outName = session.outputNames[0];

  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of rl) {
    const w = line.trim().split(/\s+/);
    try {
      if (w[0] === 'quit') break;
      if (w[0] === 'probs') {
        const s = +w[1], n = +w[2];
        const out = await session.run(feeds(s, n));
        const p = out[outName].data;
        if (p.length !== n) throw new Error(`got ${p.length} probabilities for ${n} rows`);
        say('ok ' + Array.from(p, (v) => v.toPrecision(9)).join(' '));
      } else if (w[0] === 'time' || w[0] === 'overhead') {
        const isTiny = w[0] === 'overhead';
        if (isTiny && !tiny) throw new Error('no --overhead model');
        const sess = isTiny ? tiny : session;
        const f = isTiny ? tinyFeeds : feeds(+w[1], +w[2]);
        const k = isTiny ? +w[1] : +w[3];
        const t = new Array(k);
        const cpu0 = process.cpuUsage();
        for (let i = 0; i < k; i++) {
          const t0 = process.hrtime.bigint();
          await sess.run(f);
          t[i] = process.hrtime.bigint() - t0;
        }
        say(`ok ${Math.round(cpuNs(cpu0))} ${t.join(' ')}`);
      } else {
        throw new Error(`bad command: ${line}`);
      }
    } catch (e) {
      say(`error ${String(e.message).split('\n')[0]}`);
    }
  }
  process.exit(0);
}

main().catch((e) => {
  say(`unavailable ${String(e.message).split('\n')[0]}`);
  process.exit(0);
});

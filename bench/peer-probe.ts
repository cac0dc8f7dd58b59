/**
 * One side of `npm run bench:peer`, in a process of its own so that load time and memory are its alone:
 * `--engine sfn` (sfn's Engine on the checkpoint) or `--engine llama` (llama.cpp through node-llama-cpp on the
 * GGUF sfn exported from it). Measures load-to-ready, prefill of `--prefill` tokens, greedy decode of `--decode`
 * tokens at batch 1, then resident memory (and its peak). Prints one JSON line. With `--serve 1,4,8` (llama only; sfn's
 * side is its HTTP server, driven by bench/peer.ts), instead: that many sequences of one context generating at
 * once, as llama.cpp's server batches them.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { median, pct } from './stats.ts';

const { values } = parseArgs({
  options: {
    engine: { type: 'string' },
    model: { type: 'string' },
    quantize: { type: 'string', default: 'none' },
    prefill: { type: 'string', default: '512' },
    decode: { type: 'string', default: '64' },
    serve: { type: 'string' },
    'serve-prompt': { type: 'string', default: '64' },
    'serve-tokens': { type: 'string', default: '64' },
    // sfn: the session cache's directory (the server's default when absent; 'off': none).
    'session-cache': { type: 'string' },
    // sfn: also time a prefill of --serve-prompt tokens and a decode step of each of these batch sizes (what the
    // server's own steps allow at those concurrencies).
    steps: { type: 'string' },
  },
});
const prefillN = Number(values.prefill);
const decodeN = Number(values.decode);
const threads = availableParallelism();

/** Resident memory from /proc: total, anonymous, and file-backed (an mmapped model counts there). */
function memory() {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile'), peak: kb('VmHWM') };
}

let bindingS = 0;
/** sfn: where its serving session came from ('cache' when mapped from the session cache). */
let servingFrom: string | undefined;

/**
 * Resident memory once serving: after prefill and decode, when every weight a step reads has been touched (a
 * mapped file is paged in as it is read, so right after load it would count almost nothing), a second later.
 */
async function settledMemory() {
  await new Promise((r) => setTimeout(r, 1000));
  return memory();
}

/**
 * llama.cpp serving `c` streams at once (one context, `c` sequences, its batch dispatcher merging their steps):
 * aggregate generated tokens/s, time to first token and inter-token latency, per concurrency level.
 */
async function llamaServe(model: import('node-llama-cpp').LlamaModel, levels: number[]) {
  const promptN = Number(values['serve-prompt']);
  const tokensN = Number(values['serve-tokens']);
  const out: Record<string, { tokens_per_s: number; ttft_ms_p50: number; itl_ms_p99: number }> = {};
  let seed = 1;
  for (const c of levels) {
    const context = await model.createContext({ contextSize: c * (promptN + tokensN + 16), batchSize: Math.max(512, promptN), threads, sequences: c });
    const ttfts: number[] = [];
    const gaps: number[] = [];
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: c }, async (_, k) => {
        const seq = context.getSequence();
        type Tok = Parameters<typeof seq.controlledEvaluate>[0][number];
        const p = Array.from({ length: promptN }, (_, i) => 1000 + (((seed + k) * 7919 + i * 104729) % 100000));
        const start = performance.now();
        const first = await seq.controlledEvaluate(p.map((id, i) => (i === p.length - 1 ? ([id, { generateNext: { token: true, options: { temperature: 0 } } }] as Tok) : (id as Tok))));
        let prev = performance.now();
        ttfts.push(prev - start);
        let next = first.at(-1)!.next!.token!;
        for (let i = 1; i < tokensN; i++) {
          next = (await seq.controlledEvaluate([[next, { generateNext: { token: true, options: { temperature: 0 } } }] as Tok]))[0]!.next!.token!;
          const now = performance.now();
          gaps.push(now - prev);
          prev = now;
        }
      }),
    );
    seed += c;
    const seconds = (performance.now() - t0) / 1000;
    out[`c${c}`] = { tokens_per_s: +((c * tokensN) / seconds).toFixed(2), ttft_ms_p50: +pct(ttfts, 50).toFixed(1), itl_ms_p99: +pct(gaps, 99).toFixed(1) };
    await context.dispose();
  }
  return out;
}

/** Deterministic prompt ids below 150000 (both vocabularies hold them). */
const prompt = Array.from({ length: prefillN }, (_, i) => (i * 7919 + 13) % 150000);

async function sfn() {
  const { Engine } = await import('../src/engine/engine.ts');
  const { sessionCacheDir } = await import('../src/util/cache-dir.ts');
  const { sessionCacheSetting } = await import('../src/engine/session-cache.ts');
  const sessionCache = sessionCacheSetting(values['session-cache'] ?? sessionCacheDir(), 24 * 1024 ** 3);
  const engine = await Engine.load(values.model!, { threads, quantize: values.quantize as 'none' | 'int4', sessionCache });
  const loadS = performance.now() / 1000;
  servingFrom = engine.servingFrom;
  let t = performance.now();
  const cache = engine.newCache(1);
  const [pre] = await engine.forward(cache, [prompt], { view: engine.baseView });
  const prefillS = (performance.now() - t) / 1000;
  // The server's greedy pick (a reduce with a closure took ~2.5 ms a token: 3% of a 0.5B fp32 step, 8% of int4).
  const { argmax } = await import('../src/engine/sampler.ts');
  let next = argmax(pre[pre.length - 1]);
  // One warm-up step, then the timed ones.
  [[next]] = (await engine.forward(cache, [[next]], { view: engine.baseView })).map((o) => [argmax(o[0])]);
  t = performance.now();
  for (let i = 0; i < decodeN; i++) [[next]] = (await engine.forward(cache, [[next]], { view: engine.baseView })).map((o) => [argmax(o[0])]);
  const decodeS = (performance.now() - t) / 1000;
  const mem = await settledMemory();
  const steps = values.steps ? await stepTimes(engine, values.steps.split(',').map(Number)) : undefined;
  return { loadS, mem, prefillS, decodeS, steps };
}

/** Median seconds of one prefill of --serve-prompt tokens, and of one decode step at each batch size (context ~64). */
async function stepTimes(engine: import('../src/engine/engine.ts').Engine, batches: number[]) {
  const promptN = Number(values['serve-prompt']);
  const ids = (b: number, n: number, k: number) => Array.from({ length: n }, (_, i) => 1000 + ((b * 7919 + i * 104729 + k) % 100000));
  const prefill: number[] = [];
  const decode: Record<string, number> = {};
  for (const B of batches) {
    const cache = engine.newCache(B);
    for (let b = 0; b < B; b++) {
      const t = performance.now();
      await engine.forward(cache, [ids(b, promptN, 0)], { firstRow: b });
      prefill.push((performance.now() - t) / 1000);
    }
    const ts: number[] = [];
    for (let s = 0; s < 9; s++) {
      const t = performance.now();
      await engine.forward(
        cache,
        Array.from({ length: B }, (_, b) => ids(b, 1, s + 1)),
      );
      ts.push((performance.now() - t) / 1000);
    }
    decode[`b${B}`] = +median(ts).toFixed(4);
  }
  return { prefill_s: +median(prefill).toFixed(4), decode_step_s: decode };
}

async function llama() {
  const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
  const tBinding = performance.now();
  const lib = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  // node-llama-cpp tests its binary in a child process first: not llama.cpp's load, so reported apart.
  bindingS = (performance.now() - tBinding) / 1000;
  const model = await lib.loadModel({ modelPath: values.model! });
  if (values.serve) return { serve: await llamaServe(model, values.serve.split(',').map(Number)) };
  const context = await model.createContext({ contextSize: prefillN + decodeN + 16, batchSize: prefillN, threads, sequences: 1 });
  const loadS = performance.now() / 1000;
  const seq = context.getSequence();
  type Tok = Parameters<typeof seq.controlledEvaluate>[0][number];
  let t = performance.now();
  const pre = await seq.controlledEvaluate(prompt.map((id, i) => (i === prompt.length - 1 ? ([id, { generateNext: { token: true, options: { temperature: 0 } } }] as Tok) : (id as Tok))));
  const prefillS = (performance.now() - t) / 1000;
  let next = pre.at(-1)!.next!.token!;
  const step = async () => (await seq.controlledEvaluate([[next, { generateNext: { token: true, options: { temperature: 0 } } }] as Tok]))[0]!.next!.token!;
  next = await step();
  t = performance.now();
  for (let i = 0; i < decodeN; i++) next = await step();
  const decodeS = (performance.now() - t) / 1000;
  return { loadS, mem: await settledMemory(), prefillS, decodeS };
}

const r = values.engine === 'llama' ? await llama() : await sfn();
if ('serve' in r) {
  process.stdout.write(`${JSON.stringify({ engine: 'llama', serve: r.serve })}\n`);
  process.exit(0);
}
process.stdout.write(
  `${JSON.stringify({
    engine: values.engine,
    quantize: values.quantize,
    load_s: +(r.loadS - bindingS).toFixed(2),
    binding_s: +bindingS.toFixed(2),
    ...(servingFrom ? { serving_from: servingFrom } : {}),
    ...('steps' in r && r.steps ? { steps: r.steps } : {}),
    rss_bytes: r.mem.rss,
    rss_anon_bytes: r.mem.anon,
    rss_file_bytes: r.mem.file,
    peak_rss_bytes: Math.max(r.mem.peak, memory().peak),
    prefill_tps: +(prefillN / r.prefillS).toFixed(1),
    decode_tps: +(decodeN / r.decodeS).toFixed(2),
  })}\n`,
);
process.exit(0);

/**
 * sfn against llama.cpp on the same CPU and the same weights: a Qwen2.5-shaped random checkpoint, and the GGUF
 * sfn itself exports from it (`sfn export --format gguf`, f32 and q4_0), loaded by llama.cpp through
 * node-llama-cpp 3.21.1 (a dev dependency). Rounds interleave the two engines (the order alternating), each run in
 * a fresh process, so that the machine's bandwidth drift hits both; every ratio is printed with its spread.
 *
 *   npm run bench:peer [-- --preset qwen2.5-0.5b --rounds 3 --decode 64 --prefill 512 --concurrency 1,4,8 --no-int4]
 *   npm run bench:peer -- --preset qwen2.5-1.5b --concurrency ''   (no serving rows)
 *
 * Rows: decode at batch 1 (fp32, also as weights read per second; int4 against Q4_0), prefill, resident memory
 * once serving, load to ready (sfn's with its session cache, and its first start, which builds that cache, apart),
 * and serving at each concurrency: sfn's HTTP server (streamed completions) against llama.cpp's sequences of one
 * context generating at once (in process, no HTTP: what llama.cpp's server does for each step). Below the table:
 * the machine's streaming read, measured before each fp32 probe (bench/stream-read.c, built with the system's C
 * compiler; left out without one), and each engine's fp32 decode as a fraction of it: how close each comes to the
 * ceiling of a batch-1 step, which reads every weight once.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { readSpec } from '../src/model/config.ts';
import { cachedModel, PRESETS, type Preset } from '../src/model/make-model.ts';
import { cacheDir } from '../src/util/cache-dir.ts';
import { serverProcess } from './server-process.ts';
import { withMallocTuning } from '../bin/malloc.js';
import { decodeWeightBytes, median, pct, streamTokenTimes } from './stats.ts';
import { streamRead, streamReadBinary } from './stream-read.ts';

const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'qwen2.5-0.5b' },
    rounds: { type: 'string', default: '3' },
    decode: { type: 'string', default: '64' },
    prefill: { type: 'string', default: '512' },
    concurrency: { type: 'string', default: '1,4,8' },
    'serve-tokens': { type: 'string', default: '64' },
    'serve-prompt': { type: 'string', default: '64' },
    'no-int4': { type: 'boolean', default: false },
  },
});
const preset = values.preset as Preset;
if (!(preset in PRESETS)) throw new Error(`--preset must be one of ${Object.keys(PRESETS)}`);
const rounds = Number(values.rounds);
// --concurrency '' leaves the serving rows out (the 1.5B row: decode, memory and start-up).
const levels = values.concurrency ? values.concurrency.split(',').map(Number) : [];
const ROOT = new URL('..', import.meta.url).pathname;
const log = (s: string) => process.stderr.write(`bench:peer: ${s}\n`);

interface Probe {
  load_s: number;
  binding_s?: number;
  rss_bytes: number;
  rss_anon_bytes: number;
  rss_file_bytes: number;
  peak_rss_bytes: number;
  prefill_tps: number;
  decode_tps: number;
  serving_from?: string;
  /** sfn: a prefill of the serving prompt, and a decode step per batch size (seconds, medians). */
  steps?: { prefill_s: number; decode_step_s: Record<string, number> };
}

function probe(engine: 'sfn' | 'llama', model: string, quantize = 'none', extra: string[] = []): Probe & { serve?: Record<string, ServeRow> } {
  const r = spawnSync(
    process.execPath,
    ['--import', 'tsx', 'bench/peer-probe.ts', '--engine', engine, '--model', model, '--quantize', quantize, '--prefill', values.prefill!, '--decode', values.decode!, ...extra],
    // Both engines with glibc's allocator as bin/sfn.js sets it where Node can re-execute (Node 24, the image).
    { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20, env: withMallocTuning(process.env) ?? process.env },
  );
  if (r.status !== 0) throw new Error(`${engine} probe failed:\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

interface ServeRow {
  tokens_per_s: number;
  ttft_ms_p50: number;
  itl_ms_p99: number;
}

/** sfn's server, streamed completions at each concurrency level (token-id prompts, greedy, EOS ignored). */
async function sfnServe(dir: string): Promise<Record<string, ServeRow>> {
  const max = String(Math.max(...levels));
  const srv = await serverProcess(['--model', dir, '--port', '0', '--max-batch', max, '--max-running', max], 600_000);
  const promptN = Number(values['serve-prompt']);
  const tokensN = Number(values['serve-tokens']);
  try {
    const models = (await (await fetch(`${srv.url}/v1/models`)).json()) as { data: { id: string }[] };
    const name = models.data[0].id;
    const request = async (seed: number) => {
      const prompt = Array.from({ length: promptN }, (_, i) => 1000 + ((seed * 7919 + i * 104729) % 100000));
      const { start, times } = await streamTokenTimes(srv.url, { model: name, prompt, max_tokens: tokensN, temperature: 0, ignore_eos: true });
      return { ttft: times[0] - start, gaps: times.slice(1).map((t, k) => t - times[k]), tokens: times.length };
    };
    // Warm-up: the first runs pay for lazy allocations.
    await request(0);
    const out: Record<string, ServeRow> = {};
    let seed = 1;
    for (const c of levels) {
      const t0 = performance.now();
      const rs = await Promise.all(Array.from({ length: c }, (_, k) => request(seed + k)));
      seed += c;
      const seconds = (performance.now() - t0) / 1000;
      out[`c${c}`] = {
        tokens_per_s: +(rs.reduce((a, r) => a + r.tokens, 0) / seconds).toFixed(2),
        ttft_ms_p50: +pct(
          rs.map((r) => r.ttft),
          50,
        ).toFixed(1),
        itl_ms_p99: +pct(
          rs.flatMap((r) => r.gaps),
          99,
        ).toFixed(1),
      };
    }
    return out;
  } finally {
    srv.child.kill('SIGTERM');
  }
}

/** The GGUF sfn writes from the checkpoint, cached beside it. */
function gguf(dir: string, dtype: string): string {
  const peerDir = join(cacheDir(), 'peer');
  mkdirSync(peerDir, { recursive: true });
  const path = join(peerDir, `${preset}-seed0-${dtype}.gguf`);
  if (!existsSync(path)) {
    log(`exporting ${path}`);
    execFileSync(process.execPath, ['bin/sfn.js', 'export', '--model', dir, '--format', 'gguf', '--dtype', dtype, '--out', path], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
  }
  return path;
}

const spread = (xs: number[]) => `${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)}`;
const gb = (b: number) => (b / 1e9).toFixed(2);

async function main() {
  const { dir, made } = cachedModel(preset, 0);
  log(`${made ? 'made' : 'using cached'} ${preset} checkpoint at ${dir}`);
  const f32 = gguf(dir, 'f32');
  const q4 = values['no-int4'] ? null : gguf(dir, 'q4_0');
  const runs: { sfn: Probe[]; llama: Probe[]; sfnInt4: Probe[]; llamaQ4: Probe[] } = { sfn: [], llama: [], sfnInt4: [], llamaQ4: [] };
  // The machine's streaming read before each fp32 probe: the ceiling of a batch-1 step, which reads every weight
  // once. Pooled over the run (it moves from minute to minute), both engines' decode is read against its median.
  const reader = streamReadBinary();
  if ('error' in reader) log(`no streaming-read probe (the C compiler failed: ${reader.error}); its rows are left out`);
  const stream: { sfn: number[]; llama: number[] } = { sfn: [], llama: [] };
  const tokenBytes = decodeWeightBytes(readSpec(dir).spec);
  // sfn's first start on a checkpoint builds its session cache (once per checkpoint, CPU and onnxruntime version,
  // as llama.cpp needs its GGUF converted once): timed apart, into a directory of its own that goes afterwards.
  const coldDir = mkdtempSync(join(tmpdir(), 'sfn-bench-cold-'));
  let cold: Probe;
  try {
    cold = probe('sfn', dir, 'none', ['--session-cache', coldDir]);
  } finally {
    rmSync(coldDir, { recursive: true, force: true });
  }
  log(`sfn first start (building the session cache): load ${cold.load_s} s, peak rss ${gb(cold.peak_rss_bytes)} GB`);
  // The rounds use the default session cache, as the server does: make sure it holds both sessions.
  for (const q of q4 ? ['none', 'int4'] : ['none']) log(`sfn ${q}: session ${probe('sfn', dir, q).serving_from}`);
  for (let r = 0; r < rounds; r++) {
    // The order alternates, so that neither engine always runs first in a round.
    const order = r % 2 ? (['llama', 'sfn'] as const) : (['sfn', 'llama'] as const);
    for (const e of order) {
      if ('path' in reader) stream[e].push(streamRead(reader.path, { mib: 1024, threads: availableParallelism(), reps: 5, huge: true }));
      const p = e === 'sfn' ? probe('sfn', dir, 'none', levels.length ? ['--steps', levels.join(','), '--serve-prompt', values['serve-prompt']!] : []) : probe('llama', f32);
      runs[e].push(p);
      log(`round ${r + 1} ${e} fp32: decode ${p.decode_tps} tok/s, prefill ${p.prefill_tps} tok/s, rss ${gb(p.rss_bytes)} GB, load ${p.load_s} s`);
      if (q4) {
        const q = e === 'sfn' ? probe('sfn', dir, 'int4') : probe('llama', q4);
        (e === 'sfn' ? runs.sfnInt4 : runs.llamaQ4).push(q);
        log(`round ${r + 1} ${e} ${e === 'sfn' ? 'int4' : 'Q4_0'}: decode ${q.decode_tps} tok/s`);
      }
    }
  }
  const serve: { sfn: Record<string, ServeRow>[]; llama: Record<string, ServeRow>[] } = { sfn: [], llama: [] };
  for (let r = 0; r < (levels.length ? Math.min(rounds, 2) : 0); r++) {
    const order = r % 2 ? (['llama', 'sfn'] as const) : (['sfn', 'llama'] as const);
    for (const e of order) {
      const s =
        e === 'sfn' ? await sfnServe(dir) : probe('llama', f32, 'none', ['--serve', levels.join(','), '--serve-prompt', values['serve-prompt']!, '--serve-tokens', values['serve-tokens']!]).serve!;
      serve[e].push(s);
      log(`serve round ${r + 1} ${e}: ${JSON.stringify(s)}`);
    }
  }

  const rows: string[] = [];
  const row = (measure: string, a: number[], b: number[]) => {
    const ratios = a.map((x, i) => x / b[i]);
    rows.push(`| ${measure} | ${median(a).toFixed(2)} (${spread(a)}) | ${median(b).toFixed(2)} (${spread(b)}) | **${median(ratios).toFixed(2)}** (${spread(ratios)}) |`);
  };
  row(
    'decode, batch 1, fp32 (tok/s)',
    runs.sfn.map((p) => p.decode_tps),
    runs.llama.map((p) => p.decode_tps),
  );
  if (q4)
    row(
      'decode, batch 1, sfn int4 vs Q4_0 (tok/s)',
      runs.sfnInt4.map((p) => p.decode_tps),
      runs.llamaQ4.map((p) => p.decode_tps),
    );
  const readGbps = { sfn: runs.sfn.map((p) => (p.decode_tps * tokenBytes) / 1e9), llama: runs.llama.map((p) => (p.decode_tps * tokenBytes) / 1e9) };
  row(`decode, batch 1, fp32: weights read per second (GB/s; ${gb(tokenBytes)} GB a token)`, readGbps.sfn, readGbps.llama);
  row(
    `prefill ${values.prefill} tokens, fp32 (tok/s)`,
    runs.sfn.map((p) => p.prefill_tps),
    runs.llama.map((p) => p.prefill_tps),
  );
  row(
    'resident memory once serving (after prefill and decode), fp32 (GB; lower is better)',
    runs.sfn.map((p) => p.rss_bytes / 1e9),
    runs.llama.map((p) => p.rss_bytes / 1e9),
  );
  row(
    'peak resident memory, fp32 (GB; lower is better)',
    runs.sfn.map((p) => p.peak_rss_bytes / 1e9),
    runs.llama.map((p) => p.peak_rss_bytes / 1e9),
  );
  row(
    'load to ready, fp32 (s; lower is better)',
    runs.sfn.map((p) => p.load_s),
    runs.llama.map((p) => p.load_s),
  );
  row("load to ready, fp32, sfn's first start (building its session cache) (s; lower is better)", [cold.load_s], [median(runs.llama.map((p) => p.load_s))]);
  for (const c of levels) {
    const k = `c${c}`;
    row(
      `serving, concurrency ${c}: aggregate tok/s`,
      serve.sfn.map((s) => s[k].tokens_per_s),
      serve.llama.map((s) => s[k].tokens_per_s),
    );
    row(
      `serving, concurrency ${c}: TTFT p50 (ms; lower is better)`,
      serve.sfn.map((s) => s[k].ttft_ms_p50),
      serve.llama.map((s) => s[k].ttft_ms_p50),
    );
    row(
      `serving, concurrency ${c}: inter-token p99 (ms; lower is better)`,
      serve.sfn.map((s) => s[k].itl_ms_p99),
      serve.llama.map((s) => s[k].itl_ms_p99),
    );
  }
  // What sfn's own steps allow at each concurrency, for the bench's c x (prompt + tokens): c prefills, then one
  // c-row decode step per token (the scheduler interleaves them; the sum is the same), against what its server did.
  const own: string[] = [];
  const stepRuns = runs.sfn.filter((p) => p.steps);
  for (const c of levels) {
    if (!stepRuns.length || !serve.sfn.length) break;
    const T = Number(values['serve-tokens']);
    const prefill = median(stepRuns.map((p) => p.steps!.prefill_s));
    const step = median(stepRuns.map((p) => p.steps!.decode_step_s[`b${c}`]));
    const allowed = (c * T) / (c * prefill + T * step);
    const decodeOnly = c / step;
    const got = median(serve.sfn.map((s) => s[`c${c}`].tokens_per_s));
    own.push(
      `- concurrency ${c}: ${got.toFixed(2)} tok/s delivered; its ${c}-row step (${(step * 1000).toFixed(1)} ms) and ${c} prefills of ${values['serve-prompt']} tokens (${(prefill * 1000).toFixed(0)} ms each) allow ${allowed.toFixed(2)}: **${(got / allowed).toFixed(2)}** of that (decode steps alone: ${decodeOnly.toFixed(2)} tok/s, ${(got / decodeOnly).toFixed(2)})`,
    );
  }
  const streamAll = [...stream.sfn, ...stream.llama];
  const llamaBinding = median(runs.llama.map((p) => p.binding_s ?? 0));
  process.stdout.write(
    [
      `sfn vs llama.cpp (node-llama-cpp 3.21.1), ${preset} (seed 0, bf16 checkpoint; GGUF exported by sfn), ${rounds} interleaved rounds, medians (min-max); ratio = sfn / llama.cpp`,
      '',
      '| measure | sfn | llama.cpp | ratio |',
      '|---|---|---|---|',
      ...rows,
      '',
      ...(streamAll.length
        ? [
            `The machine's streaming read before each fp32 probe (bench/stream-read.c, ${availableParallelism()} threads, 1 GiB in 2 MiB pages): ${median(streamAll).toFixed(1)} GB/s (${spread(streamAll)}). Against its median, fp32 decode reads weights at **${(median(readGbps.sfn) / median(streamAll)).toFixed(2)}** of it in sfn and **${(median(readGbps.llama) / median(streamAll)).toFixed(2)}** in llama.cpp.`,
            '',
          ]
        : []),
      `llama.cpp's load excludes node-llama-cpp's binary check (${llamaBinding.toFixed(2)} s median); its resident memory includes the mmapped GGUF (${gb(median(runs.llama.map((p) => p.rss_file_bytes)))} GB file-backed).`,
      '',
      ...(own.length ? ["sfn's server against its own step times (measured in the fp32 probes):", ...own, ''] : []),
    ].join('\n'),
  );
  process.stderr.write(`${JSON.stringify({ bench: 'peer', preset, cold, runs, serve, stream_read_gbps: stream, token_bytes: tokenBytes })}\n`);
}

await main();

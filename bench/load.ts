/**
 * Load and fault script: the real server as a child process on the built-in tiny model, driven over HTTP.
 * Prints JSON (not a unit test; the numbers depend on the machine):
 *   load        N clients for D seconds mixing backbone / plugin, streaming / not, chat / completions:
 *               status counts (5xx target 0), 429s, network errors, latency p50/p99, RSS after warm-up and
 *               at the end (target: within 5%)
 *   disconnects streams dropped after their first chunk: running and waiting go back to 0 (slots freed)
 *   churn       plugins carrying embed_tokens, more of them than the plugin cache holds, used in turn:
 *               cache bytes stay under the limit, evictions happen, RSS stays bounded
 *
 *   npm run bench:load [-- --clients 64 --duration-s 120 --warmup-s 15 --churn 8]
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadCheckpoint } from '../src/model/checkpoint.ts';
import { fromFloat32 } from '../src/model/dtype.ts';
import { cachedModel } from '../src/model/make-model.ts';
import { parseName } from '../src/model/names.ts';
import { writeSafetensors } from '../src/model/safetensors.ts';
import { Rng } from '../src/util/random.ts';
import { serverProcess } from './server-process.ts';
import { pct as percentile } from './stats.ts';

const { values } = parseArgs({
  options: {
    clients: { type: 'string', default: '64' },
    'duration-s': { type: 'string', default: '120' },
    'warmup-s': { type: 'string', default: '15' },
    churn: { type: 'string', default: '8' },
    'cache-mb': { type: 'string', default: '64' },
  },
});
const CLIENTS = Number(values.clients);
const DURATION_MS = Number(values['duration-s']) * 1000;
const WARMUP_MS = Number(values['warmup-s']) * 1000;
const CHURN = Number(values.churn);
const CACHE_MB = Number(values['cache-mb']);
const ADMIN = 'bench-admin-key';
const log = (s: string) => process.stderr.write(`load: ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Percentiles in whole ms, null for none. */
const pct = (xs: number[], p: number) => (xs.length ? Math.round(percentile(xs, p)) : null);

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

async function main() {
  const tmp = mkdtempSync(join(tmpdir(), 'sfn-load-'));
  const { dir } = cachedModel('tiny', 0);
  const { child, url } = await serverProcess(
    [
      '--model',
      dir,
      '--served-model-name',
      'tiny',
      '--port',
      '0',
      '--data-dir',
      join(tmp, 'data'),
      '--admin-key',
      ADMIN,
      '--plugin-cache-mb',
      String(CACHE_MB),
      '--max-running',
      '16',
      '--max-waiting',
      String(Math.max(64, CLIENTS)),
    ],
    60_000,
  );
  const auth = { authorization: `Bearer ${ADMIN}` };
  const pid = child.pid!;
  const rssCold = rssBytes(pid);

  const metric = async (name: string): Promise<number> => {
    const text = await (await fetch(`${url}/metrics`)).text();
    const m = new RegExp(`^${name.replace(/[:]/g, '\\:')}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : NaN;
  };

  // Plugins: A's modules scaled, so each has its own bytes.
  const base = loadCheckpoint(dir);
  const upload = async (id: string, kinds: string[], k: number) => {
    const tensors = [...base.tensors]
      .filter(([n]) => kinds.includes(parseName(n)!.kind))
      .map(([name, t]) => ({
        name,
        dtype: 'F32' as const,
        shape: t.shape,
        data: fromFloat32(
          t.data.map((x) => x * k),
          'F32',
        ),
      }));
    const file = join(tmp, `${id}.safetensors`);
    writeSafetensors(file, tensors, {});
    const r = await fetch(`${url}/v1/plugins?id=${id}`, { method: 'POST', headers: { ...auth, 'content-type': 'application/octet-stream' }, body: readFileSync(file) });
    if (r.status !== 201) throw new Error(`upload ${id}: ${r.status} ${await r.text()}`);
    rmSync(file);
  };
  const plugins = ['p0', 'p1', 'p2', 'p3'];
  for (const [i, id] of plugins.entries()) await upload(id, ['o_proj', 'input_layernorm', 'post_attention_layernorm', 'norm'], 1 + 0.1 * (i + 1));

  /** One request of a random kind; returns its status (0 for a network error) and latency. */
  async function request(rng: Rng, model: string, signal?: AbortSignal): Promise<{ status: number; ms: number; kind: string }> {
    const stream = rng.next() < 0.5;
    const chat = rng.next() < 0.5;
    const maxTokens = 4 + Math.floor(rng.next() * 20);
    const body = chat
      ? {
          model,
          messages: [{ role: 'user', content: `Question ${Math.floor(rng.next() * 1e6)}: what comes next?` }],
          max_tokens: maxTokens,
          temperature: 0.8,
          seed: Math.floor(rng.next() * 1e6),
          stream,
        }
      : { model, prompt: `Item ${Math.floor(rng.next() * 1e6)} of the list is`, max_tokens: maxTokens, temperature: 0.8, seed: Math.floor(rng.next() * 1e6), stream };
    const kind = `${model.includes(':') ? 'plugin' : 'backbone'}/${stream ? 'stream' : 'whole'}`;
    const t = performance.now();
    try {
      const r = await fetch(`${url}/v1/${chat ? 'chat/completions' : 'completions'}`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(body), signal });
      await r.arrayBuffer(); // to the last byte, streams included
      return { status: r.status, ms: performance.now() - t, kind };
    } catch {
      return { status: 0, ms: performance.now() - t, kind };
    }
  }

  async function drive(ms: number, clients: number) {
    const statuses: Record<string, number> = {};
    const latencies: number[] = [];
    const byKind: Record<string, number> = {};
    const end = Date.now() + ms;
    await Promise.all(
      Array.from({ length: clients }, async (_, c) => {
        const rng = new Rng(1000 + c);
        while (Date.now() < end) {
          const model = rng.next() < 0.5 ? 'tiny' : `tiny:${plugins[Math.floor(rng.next() * plugins.length)]}`;
          const r = await request(rng, model);
          statuses[r.status] = (statuses[r.status] ?? 0) + 1;
          byKind[r.kind] = (byKind[r.kind] ?? 0) + 1;
          if (r.status === 200) latencies.push(r.ms);
          if (r.status === 429) await sleep(100);
        }
      }),
    );
    return { statuses, latencies, byKind };
  }

  log(`warm-up: ${CLIENTS} clients for ${WARMUP_MS / 1000} s`);
  await drive(WARMUP_MS, CLIENTS);
  log(`load: ${CLIENTS} clients for ${DURATION_MS / 1000} s`);
  // RSS sampled every 250 ms: start and end are the medians of the first and last sixth of the run, since a
  // single reading lands anywhere in the garbage collector's cycle (one read 582 MB, the next minute 524).
  const rssSamples: number[] = [];
  const sampler = setInterval(() => rssSamples.push(rssBytes(pid)), 250);
  const tLoad = performance.now();
  const load = await drive(DURATION_MS, CLIENTS);
  const loadS = (performance.now() - tLoad) / 1000;
  clearInterval(sampler);
  const window = Math.max(1, Math.floor(rssSamples.length / 6));
  const medianOf = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  const rssStart = medianOf(rssSamples.slice(0, window));
  const rssEnd = medianOf(rssSamples.slice(-window));
  const total = Object.values(load.statuses).reduce((a, b) => a + b, 0);
  const fiveXX = Object.entries(load.statuses)
    .filter(([s]) => Number(s) >= 500)
    .reduce((a, [, n]) => a + n, 0);

  log('disconnects: streams dropped after their first chunk');
  const drops = 32;
  await Promise.all(
    Array.from({ length: drops }, async (_, i) => {
      const ctrl = new AbortController();
      const body = { model: i % 2 ? 'tiny' : 'tiny:p1', prompt: `Drop ${i}`, max_tokens: 200, ignore_eos: true, stream: true };
      try {
        const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(body), signal: ctrl.signal });
        const reader = r.body!.getReader();
        await reader.read();
        ctrl.abort();
      } catch {
        /* aborted */
      }
    }),
  );
  const tDrop = performance.now();
  let freed = false;
  while (performance.now() - tDrop < 15_000) {
    if ((await metric('vllm:num_requests_running')) === 0 && (await metric('vllm:num_requests_waiting')) === 0) {
      freed = true;
      break;
    }
    await sleep(50);
  }
  const freedMs = Math.round(performance.now() - tDrop);
  const after = await request(new Rng(7), 'tiny');

  log(`churn: ${CHURN} plugins with embed_tokens through a ${CACHE_MB} MiB cache`);
  const rssChurnStart = rssBytes(pid);
  const evictionsBefore = await metric('sfn_plugin_cache_evictions_total');
  let cacheMax = 0;
  let churnErrors = 0;
  for (let i = 0; i < CHURN; i++) await upload(`e${i}`, ['embed_tokens', 'o_proj'], 1 + 0.01 * (i + 1));
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < CHURN; i++) {
      const r = await request(new Rng(round * 100 + i), `tiny:e${i}`);
      if (r.status !== 200) churnErrors++;
      cacheMax = Math.max(cacheMax, await metric('sfn_plugin_cache_bytes'));
    }
  }
  const rssChurnEnd = rssBytes(pid);
  const evictions = (await metric('sfn_plugin_cache_evictions_total')) - evictionsBefore;
  const embedBytes = base.tensors.get('model.embed_tokens.weight')!.data.byteLength;

  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
  rmSync(tmp, { recursive: true, force: true });

  const mb = (b: number) => Math.round(b / 1048576);
  const result = {
    load: {
      clients: CLIENTS,
      seconds: Math.round(loadS),
      requests: total,
      requests_per_s: Math.round((total / loadS) * 10) / 10,
      statuses: load.statuses,
      by_kind: load.byKind,
      '5xx': fiveXX,
      '429': load.statuses[429] ?? 0,
      network_errors: load.statuses[0] ?? 0,
      latency_ms: { p50: pct(load.latencies, 50), p99: pct(load.latencies, 99) },
      rss_mb: { cold: mb(rssCold), first_sixth_median: mb(rssStart), last_sixth_median: mb(rssEnd), min: mb(Math.min(...rssSamples)), max: mb(Math.max(...rssSamples)) },
      rss_change: Math.round(((rssEnd - rssStart) / rssStart) * 1000) / 1000,
    },
    disconnects: { dropped_streams: drops, slots_freed: freed, freed_ms: freedMs, next_request_status: after.status },
    churn: {
      plugins: CHURN,
      plugin_mb: mb(embedBytes),
      cache_limit_mb: CACHE_MB,
      cache_max_mb: Math.round((cacheMax / 1048576) * 10) / 10,
      evictions,
      errors: churnErrors,
      rss_mb: { start: mb(rssChurnStart), end: mb(rssChurnEnd) },
    },
    targets: {
      no_5xx: fiveXX === 0,
      rss_within_5pct: Math.abs(rssEnd - rssStart) <= 0.05 * rssStart,
      slots_freed: freed && after.status === 200,
      cache_bounded: cacheMax <= CACHE_MB * 1048576 && churnErrors === 0,
    },
  };
  console.log(JSON.stringify(result, null, 2));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

/**
 * Fault script (`npm run bench:faults`): the server as a child process on a Qwen2.5-0.5B-shaped checkpoint
 * (`--preset tiny` for a quick run), and, one at a time while `/health` is polled every 50 ms, the work that
 * used to hold its HTTP thread: a 3.9 MB prompt, a 1 MB prompt under the byte bound, a 100,000-message chat, a plugin the size of the embedding
 * (545 MB at 0.5B) validated, and an export of the whole model. Prints each one's status and `/health` latency
 * (p50 / p99 / max) as JSON, with the targets: p99 under 100 ms, max under 500 ms.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { readSpec } from '../src/model/config.ts';
import { cachedModel, PRESETS, type Preset } from '../src/model/make-model.ts';
import { writeSafetensors } from '../src/model/safetensors.ts';
import { serverProcess } from './server-process.ts';
import { pct as percentile } from './stats.ts';

const { values } = parseArgs({ options: { preset: { type: 'string', default: 'qwen2.5-0.5b' } } });
const preset = values.preset as Preset;
if (!(preset in PRESETS)) throw new Error(`--preset: one of ${Object.keys(PRESETS).join(', ')}`);
const ADMIN = 'bench-admin-key';
const log = (s: string) => process.stderr.write(`faults: ${s}\n`);

/** Percentiles in ms to 0.1, null for none. */
const pct = (xs: number[], p: number) => (xs.length ? Math.round(percentile(xs, p) * 10) / 10 : null);

async function main() {
  const tmp = mkdtempSync(join(tmpdir(), 'sfn-faults-'));
  const { dir } = cachedModel(preset, 0);
  const { spec } = readSpec(dir);
  // A valid plugin as large as the embedding (small values, within the magnitude bound), made before the server
  // starts: minutes of idle would let the server close the client's pooled connections under it.
  const [V, H] = [spec.vocabSize, spec.hiddenSize];
  const embed = new Float32Array(V * H);
  for (let i = 0; i < embed.length; i++) embed[i] = ((i % 997) - 498) * 1e-5;
  const pluginPath = join(tmp, 'embed.safetensors');
  writeSafetensors(pluginPath, [{ name: 'model.embed_tokens.weight', dtype: 'F32', shape: [V, H], data: new Uint8Array(embed.buffer) }]);
  const bytes = readFileSync(pluginPath);
  const { child, url, readySeconds } = await serverProcess(
    ['--model', dir, '--served-model-name', 'm', '--port', '0', '--data-dir', join(tmp, 'data'), '--admin-key', ADMIN, '--model-root', dirname(dir), '--max-plugin-mb', '4096'],
    15 * 60_000,
  );
  log(`server ready in ${readySeconds.toFixed(1)} s`);
  // A live server has answered its probes many times before a heavy request comes: the first few /health
  // answers of a fresh process (compiling the route, opening connections) are not what the faults measure.
  for (let i = 0; i < 20; i++) await fetch(`${url}/health`).then((r) => r.arrayBuffer());
  const headers = { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' };

  /**
   * Runs `work` while /health is polled every 50 ms (each poll waits for the previous one). The poller has its own
   * thread: sending a 545 MB body blocks this one, which would otherwise count as the server's latency.
   */
  const underPolling = async (name: string, work: () => Promise<Response>) => {
    const poller = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const latencies = []; let polling = true;
       parentPort.once('message', () => (polling = false));
       (async () => {
         // The thread's own first fetches (compiling undici, opening the connection) are not the server's latency.
         for (let i = 0; i < 5; i++) await fetch(workerData + '/health').then((r) => r.arrayBuffer());
         parentPort.postMessage('ready');
         while (polling) {
           const s = performance.now();
           await fetch(workerData + '/health').then((r) => r.arrayBuffer());
           latencies.push(performance.now() - s);
           await new Promise((r) => setTimeout(r, Math.max(0, 50 - (performance.now() - s))));
         }
         parentPort.postMessage(latencies);
       })();`,
      { eval: true, workerData: url },
    );
    await new Promise((r) => poller.once('message', r));
    const polled = new Promise<number[]>((r) => poller.once('message', r));
    const s = performance.now();
    const r = await work();
    const body = await r.text();
    const seconds = (performance.now() - s) / 1000;
    poller.postMessage('stop');
    const latencies = await polled;
    await poller.terminate();
    const row = {
      fault: name,
      status: r.status,
      code: r.ok ? null : ((JSON.parse(body) as { error?: { code?: string } }).error?.code ?? null),
      seconds: Math.round(seconds * 100) / 100,
      health_ms: { n: latencies.length, p50: pct(latencies, 50), p99: pct(latencies, 99), max: pct(latencies, 100) },
    };
    log(JSON.stringify(row));
    return row;
  };

  const rows: Awaited<ReturnType<typeof underPolling>>[] = [];
  rows.push(
    await underPolling('3.9 MB prompt', () => fetch(`${url}/v1/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'm', prompt: 'word '.repeat(780_000), max_tokens: 1 }) })),
  );
  const prose = 'The quick brown fox jumps over the lazy dog. '.repeat(23_000);
  // Under the byte bound (context x the longest token's 256 bytes = 1 MiB) but ~230,000 tokens: counted in pieces.
  rows.push(await underPolling('1 MB prompt of prose', () => fetch(`${url}/v1/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'm', prompt: prose, max_tokens: 1 }) })));
  // Tokenized whole (/tokenize counts any length, as vLLM's): the tokenizer's thread works ~1 s.
  rows.push(await underPolling('/tokenize of 1 MB prose', () => fetch(`${url}/tokenize`, { method: 'POST', headers, body: JSON.stringify({ model: 'm', prompt: prose }) })));
  const messages = Array.from({ length: 100_000 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: 'hi' }));
  rows.push(
    await underPolling('100k-message chat', () =>
      fetch(`${url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'm', messages: [...messages, { role: 'user', content: 'hi' }], max_tokens: 1 }) }),
    ),
  );
  rows.push(
    await underPolling(`${Math.round(bytes.byteLength / 1e6)} MB plugin upload and validation`, () =>
      fetch(`${url}/v1/plugins?id=big`, { method: 'POST', headers: { authorization: headers.authorization, 'content-type': 'application/octet-stream' }, body: bytes }),
    ),
  );
  /** A greedy stream that runs until `stop` aborts it; resolves to the gaps between its tokens (ms). */
  const stream = (stop: AbortSignal) =>
    (async () => {
      const gaps: number[] = [];
      try {
        const r = await fetch(`${url}/v1/completions`, {
          method: 'POST',
          headers,
          body: JSON.stringify({ model: 'm', prompt: [1000, 2000, 3000], max_tokens: 3000, temperature: 0, ignore_eos: true, stream: true }),
          signal: stop,
        });
        let last = 0;
        for await (const _ of r.body!) {
          const now = performance.now();
          if (last) gaps.push(now - last);
          last = now;
        }
      } catch {
        // aborted: the gaps so far are the measurement
      }
      return gaps;
    })();
  // Generation during an export: the export yields to decode steps between tensors (engine thread), so a stream's
  // inter-token gaps should stay near its gaps without one; measured against a stream alone for as long.
  const alone = new AbortController();
  const baseline = stream(alone.signal);
  await new Promise((r) => setTimeout(r, 8000));
  alone.abort();
  const during = new AbortController();
  const exporting = stream(during.signal);
  await new Promise((r) => setTimeout(r, 1000));
  const exportRow = await underPolling(`${preset} export (bf16), a stream generating`, () =>
    fetch(`${url}/v1/stethoscope/export`, { method: 'POST', headers, body: JSON.stringify({ name: 'faults', model: 'm', dtype: 'bf16' }) }),
  );
  during.abort();
  const [gapsAlone, gapsExport] = [await baseline, await exporting];
  rows.push({
    ...exportRow,
    stream_gap_ms: { alone: { p50: pct(gapsAlone, 50), max: pct(gapsAlone, 100) }, during_export: { p50: pct(gapsExport, 50), max: pct(gapsExport, 100) } },
  } as typeof exportRow);

  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
  rmSync(tmp, { recursive: true, force: true });
  const ok = (r: (typeof rows)[number]) => (r.health_ms.p99 ?? 0) < 100 && (r.health_ms.max ?? 0) < 500;
  console.log(JSON.stringify({ preset, rows, targets: { health_p99_under_100ms_and_max_under_500ms: Object.fromEntries(rows.map((r) => [r.fault, ok(r)])) } }, null, 2));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

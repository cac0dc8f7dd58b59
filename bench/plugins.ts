/**
 * Plugin benchmark on a Qwen2.5-0.5B-shaped random checkpoint with random o_proj + norms plugins (made
 * once, cached outside the repo). Prints JSON:
 * - decode step time, backbone alone vs with a plugin (interleaved; target ratio <= 1.02)
 * - first-use load time of a plugin and MB/s from disk
 * - resident bytes per cached plugin vs its tensor bytes (target <= 1.05)
 * - aggregate tokens/s of 8 concurrent streams over 4 plugins vs 8 on one plugin (target >= 0.9)
 *
 *   npm run bench:plugins [-- --preset qwen2.5-0.5b]
 */
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../src/engine/engine.ts';
import { Rng } from '../src/util/random.ts';
import { Scheduler } from '../src/engine/scheduler.ts';
import { cachedModel, PRESETS, type Preset } from '../src/model/make-model.ts';
import { cacheDir } from '../src/util/cache-dir.ts';
import { expectedParams, parseName } from '../src/model/names.ts';
import { writeSafetensors } from '../src/model/safetensors.ts';
import { OverlayLoader } from '../src/views/overlays.ts';
import type { View } from '../src/engine/view.ts';

const { values } = parseArgs({ options: { preset: { type: 'string', default: 'qwen2.5-0.5b' }, tokens: { type: 'string', default: '16' } } });
const preset = values.preset as Preset;
if (!(preset in PRESETS)) throw new Error(`--preset must be one of ${Object.keys(PRESETS)}`);
const genTokens = Number(values.tokens);
const log = (s: string) => process.stderr.write(`bench: ${s}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const gc = () => (globalThis as { gc?: () => void }).gc?.();

async function main() {
  const { dir } = cachedModel(preset, 0);
  const engine = await Engine.load(dir);
  const spec = engine.spec;

  // Four o_proj + norms plugins: the backbone's tensors plus seeded noise.
  const pdir = join(cacheDir(), 'bench-plugins', `${preset}-${engine.fingerprint}`);
  mkdirSync(pdir, { recursive: true });
  const files = [0, 1, 2, 3].map((k) => join(pdir, `plugin-${k}.safetensors`));
  let tensorBytes = 0;
  for (const [name, shape] of expectedParams(spec)) {
    if (['o_proj', 'input_layernorm', 'post_attention_layernorm', 'norm'].includes(parseName(name)!.kind)) tensorBytes += shape.reduce((a, b) => a * b, 1) * 4;
  }
  files.forEach((file, k) => {
    if (existsSync(file)) return;
    const rng = new Rng(100 + k);
    const tensors = [...expectedParams(spec)]
      .filter(([n]) => ['o_proj', 'input_layernorm', 'post_attention_layernorm', 'norm'].includes(parseName(n)!.kind))
      .map(([name, shape]) => {
        const base = engine.parameter(name).data;
        const data = base.map((x) => x + 0.002 * rng.normal());
        return { name, dtype: 'F32' as const, shape, data: new Uint8Array(data.buffer) };
      });
    writeSafetensors(file, tensors);
  });
  log(`plugins ready in ${pdir}`);

  // First use: load from disk into the cache (converted to graph layout once). A throwaway load first, so
  // that the allocator is in its steady state when the four measured plugins come in.
  new OverlayLoader(engine, 16 * tensorBytes).view({ overlays: [{ type: 'file', id: 'warm-up', path: files[0] }] });
  gc();
  gc();
  const abBefore = process.memoryUsage().arrayBuffers;
  const rssBefore = process.memoryUsage().rss;
  const loader = new OverlayLoader(engine, 16 * tensorBytes);
  const loadTimes: number[] = [];
  const views: View[] = files.map((path, k) => {
    const t0 = performance.now();
    const v = loader.view({ overlays: [{ type: 'file', id: `bench-${k}`, path }] });
    loadTimes.push((performance.now() - t0) / 1000);
    return v;
  });
  gc();
  gc();
  const abAfter = process.memoryUsage().arrayBuffers;
  const rssAfter = process.memoryUsage().rss;
  const fileBytes = statSync(files[0]).size;
  // What a cached plugin keeps alive: the backing stores of its tensors, each counted once (a tensor that
  // were a view into a whole-file buffer, or held in two layouts, would show here).
  const backing = new Set<ArrayBufferLike>();
  for (const v of views) for (const o of v.overlays) if (o.type === 'tensors') for (const t of o.tensors.values()) backing.add(t.data.buffer);
  const backingBytes = [...backing].reduce((a, b) => a + b.byteLength, 0) / views.length;
  log(`load ${median(loadTimes).toFixed(3)} s per plugin`);

  // Decode step: backbone alone vs the same step under a plugin, interleaved.
  const caches = [engine.newCache(1), engine.newCache(1)];
  const prompt = Array.from({ length: 128 }, (_, i) => 1000 + i);
  for (const [i, c] of caches.entries()) await engine.forward(c, [prompt], { view: i ? views[0] : undefined });
  const times: number[][] = [[], []];
  for (let i = 0; i < 2 * genTokens + 4; i++) {
    const which = i % 2;
    const t = performance.now();
    await engine.forward(caches[which], [[2000 + i]], { view: which ? views[0] : undefined });
    if (i >= 4) times[which].push(performance.now() - t);
  }
  const [base, plug] = times.map(median);
  log(`decode step ${base.toFixed(1)} ms backbone, ${plug.toFixed(1)} ms with plugin`);

  // Aggregate throughput: 8 streams on one plugin vs 8 streams over 4 plugins, through the scheduler.
  async function aggregate(viewFor: (i: number) => View): Promise<number> {
    const sched = new Scheduler(engine, null, { maxBatch: 8, maxRunning: 8, maxWaiting: 8, prefillChunk: 512, maxContext: 4096 });
    const t0 = performance.now();
    let tokens = 0;
    await Promise.all(
      Array.from(
        { length: 8 },
        (_, i) =>
          new Promise<void>((resolve, reject) =>
            sched.submit({
              id: `j${i}`,
              promptIds: Array.from({ length: 16 }, (_, k) => 3000 + 97 * i + k),
              params: { maxTokens: genTokens, temperature: 0, ignoreEos: true },
              view: viewFor(i),
              onToken: () => void tokens++,
              onDone: () => resolve(),
              onError: reject,
            }),
          ),
      ),
    );
    return tokens / ((performance.now() - t0) / 1000);
  }
  const one = await aggregate(() => views[0]);
  const four = await aggregate((i) => views[i % 4]);
  const oneAgain = await aggregate(() => views[0]);
  log(`8 streams: ${one.toFixed(1)} / ${oneAgain.toFixed(1)} tok/s on one plugin, ${four.toFixed(1)} over four`);
  await engine.release();

  process.stdout.write(
    JSON.stringify(
      {
        bench: 'plugins',
        preset,
        plugin: { modules: 'o_proj + input_layernorm + post_attention_layernorm + norm', tensor_bytes: tensorBytes, file_bytes: fileBytes },
        decode_step_ms: { backbone: +base.toFixed(2), with_plugin: +plug.toFixed(2), ratio: +(plug / base).toFixed(3), target_max: 1.02 },
        first_use_load: { seconds: +median(loadTimes).toFixed(3), mb_per_s: +(fileBytes / 1e6 / median(loadTimes)).toFixed(1) },
        resident_per_plugin: {
          backing_store_bytes: backingBytes,
          ratio_to_tensor_bytes: +(backingBytes / tensorBytes).toFixed(3),
          target_max: 1.05,
          // Process-level deltas over loading the four plugins (noisy: the GC frees earlier garbage meanwhile).
          array_buffers_delta_bytes: Math.round((abAfter - abBefore) / 4),
          rss_delta_bytes: Math.round((rssAfter - rssBefore) / 4),
        },
        aggregate_tokens_per_s_8_streams: { one_plugin: +((one + oneAgain) / 2).toFixed(2), four_plugins: +four.toFixed(2), ratio: +(four / ((one + oneAgain) / 2)).toFixed(3), target_min: 0.9 },
        peak_rss_bytes: process.resourceUsage().maxRSS * 1024,
      },
      null,
      2,
    ) + '\n',
  );
}

await main();

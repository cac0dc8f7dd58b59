/**
 * Where sfn's load-to-ready goes (`npm run bench:startup [-- --preset qwen2.5-0.5b]`), phase by phase, each timed
 * alone in this process: reading the checkpoint's bytes, hashing them (the view fingerprint), decoding BF16 to
 * float32, then the whole Engine.load; session creation (graph build, onnxruntime's optimisation and prepacking)
 * is what the whole load takes beyond the first three. Then Engine.load with a session cache of its own, twice:
 * building and writing the entry, then mapping it. Prints JSON.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../src/engine/engine.ts';
import { ModelTokenizer } from '../src/engine/tokenizer.ts';
import { Fingerprinter, iterateCheckpointRaw } from '../src/model/checkpoint.ts';
import { readSpec } from '../src/model/config.ts';
import { toFloat32 } from '../src/model/dtype.ts';
import { cachedModel, PRESETS, type Preset } from '../src/model/make-model.ts';

const { values } = parseArgs({ options: { preset: { type: 'string', default: 'qwen2.5-0.5b' } } });
const preset = values.preset as Preset;
if (!(preset in PRESETS)) throw new Error(`--preset: one of ${Object.keys(PRESETS).join(', ')}`);
const { dir } = cachedModel(preset, 0);
const { spec, raw } = readSpec(dir);
const time = (f: () => void) => {
  const t = performance.now();
  f();
  return +((performance.now() - t) / 1000).toFixed(2);
};
const read = time(() => {
  for (const _ of iterateCheckpointRaw(dir, spec));
});
const hash = time(() => {
  const fp = new Fingerprinter(raw);
  for (const t of iterateCheckpointRaw(dir, spec)) fp.addRaw(t.name, t.dtype, t.bytes);
  fp.digest();
});
const decode = time(() => {
  for (const t of iterateCheckpointRaw(dir, spec)) toFloat32(t.bytes, t.dtype);
});
const tokenizer = time(() => ModelTokenizer.fromDir(dir));
const timedLoad = async (options: Parameters<typeof Engine.load>[1] = {}) => {
  const t = performance.now();
  const engine = await Engine.load(dir, options);
  const seconds = +((performance.now() - t) / 1000).toFixed(2);
  const from = engine.servingFrom;
  await engine.release();
  return { seconds, from };
};
const load = (await timedLoad()).seconds;
// With a session cache of its own: the first load builds and writes the entry, the second maps it.
const cacheDirectory = mkdtempSync(join(tmpdir(), 'sfn-startup-'));
let cached: { build: number; map: number };
try {
  const sessionCache = { dir: cacheDirectory, maxBytes: 1024 ** 4 };
  const first = await timedLoad({ sessionCache });
  const second = await timedLoad({ sessionCache });
  if (first.from !== 'cached' || second.from !== 'cache') throw new Error(`session cache: ${first.from}, then ${second.from}`);
  cached = { build: first.seconds, map: second.seconds };
} finally {
  rmSync(cacheDirectory, { recursive: true, force: true });
}
const heap = process.memoryUsage();
console.log(
  JSON.stringify(
    {
      bench: 'startup',
      preset,
      seconds: {
        read,
        hash: +(hash - read).toFixed(2),
        decode_bf16: +(decode - read).toFixed(2),
        engine_load: load,
        sessions: +(load - hash - decode + read).toFixed(2),
        tokenizer,
        engine_load_building_session_cache: cached.build,
        engine_load_from_session_cache: cached.map,
      },
      rss_bytes: heap.rss,
    },
    null,
    2,
  ),
);

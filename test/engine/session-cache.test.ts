/**
 * The session cache, through its real interface: entries on disk that a later Engine.load maps. A load from the
 * cache gives the logits of a load that builds the session, every view included (o_proj plugins on the serving
 * session, q_proj merges on the research one, which reads the frozen weights back from the checkpoint); a broken
 * entry is rebuilt; the budget removes the least recently used.
 */
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdtempSync, openSync, closeSync, readdirSync, readFileSync, readSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Engine } from '../../src/engine/engine.ts';
import { tensorOverlay, type Tensor } from '../../src/engine/view.ts';
import type { EngineOptions } from '../../src/engine/session.ts';
import { SessionCache } from '../../src/engine/session-cache.ts';
import { MEMO_DIR } from '../../src/engine/checkpoint-memo.ts';
import { loadCheckpoint } from '../../src/model/checkpoint.ts';
import { maxAbsStored } from '../../src/model/dtype.ts';
import { fixtureDir, oracle } from '../helpers/fixtures.ts';
import { maxAbsDiff } from '../helpers/reference.ts';

const work = mkdtempSync(join(tmpdir(), 'sfn-session-cache-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** Loads, runs `f`, releases; returns f's result, where the session came from and the warnings printed. */
async function withEngine<T>(dir: string, options: EngineOptions, f: (e: Engine) => Promise<T>): Promise<{ out: T; from: string; warnings: string[]; held: number }> {
  const warnings: string[] = [];
  const e = await Engine.load(dir, { threads: 1, warn: (m) => warnings.push(m), ...options });
  try {
    return { out: await f(e), from: e.servingFrom, warnings, held: e.heldWeightBytes };
  } finally {
    await e.release();
  }
}

const entries = (dir: string) => (existsSync(dir) ? readdirSync(dir).filter((n) => !n.startsWith('.') && n !== MEMO_DIR) : []);

function overlay(dir: string, pred: (name: string) => boolean): Map<string, Tensor> {
  const { tensors } = loadCheckpoint(dir);
  return new Map([...tensors].filter(([n]) => pred(n)).map(([n, t]) => [n, { shape: t.shape, data: t.data }]));
}

for (const fixture of ['A', 'L_llama3_tied'] as const) {
  describe(`session cache on fixture ${fixture}`, () => {
    const dir = fixtureDir(fixture);
    const o = oracle(fixture);
    const donor = fixture === 'A' ? fixtureDir('B') : dir;
    const oProj = overlay(donor, (n) => n.includes('o_proj'));
    // Scaled so that the tied fixture's merge changes something too.
    const qProj = new Map([...overlay(donor, (n) => n.includes('q_proj.weight'))].map(([n, t]) => [n, { shape: t.shape, data: t.data.map((x) => x * 0.5) }]));
    /** Logits of the backbone, an o_proj view (serving session) and a q_proj view (research session). */
    const run = async (e: Engine) => [await e.logits(o.ids), await e.logits(o.ids, e.baseView.with(tensorOverlay(oProj))), await e.logits(o.ids, e.baseView.with(tensorOverlay(qProj)))];

    it('writes an entry on the first load and maps it on the next, with the same logits and weights read back as needed', async () => {
      const cacheDir = join(work, `${fixture}-basic`);
      const sessionCache = { dir: cacheDir, maxBytes: 1024 ** 3 };
      const plain = await withEngine(dir, {}, run);
      const first = await withEngine(dir, { sessionCache }, run);
      assert.equal(first.from, 'cached');
      assert.deepEqual(first.warnings, []);
      const [key] = entries(cacheDir);
      assert.ok(key, 'an entry was written');
      const entry = JSON.parse(readFileSync(join(cacheDir, key, 'entry.json'), 'utf8'));
      assert.deepEqual(Object.keys(entry.files).sort(), ['model.onnx', 'weights.data']);
      assert.equal(entry.made.fingerprint.length, 32);
      const second = await withEngine(dir, { sessionCache }, run);
      assert.equal(second.from, 'cache');
      assert.deepEqual(entries(cacheDir), [key], 'the same entry, not a second one');
      assert.equal(second.held, plain.held, 'JS holds what a load that builds the session keeps (o_proj and the norms)');
      for (const got of [first, second]) {
        got.out.forEach((logits, v) => {
          logits.forEach((l, t) => assert.ok(maxAbsDiff(l, plain.out[v][t]) <= 1e-5, `view ${v}, position ${t}`));
        });
      }
      // The backbone's logits still match the independent oracle, and each view changed them.
      second.out[0].forEach((l, t) => assert.ok(maxAbsDiff(l, Float32Array.from(o.logits[t])) < 1e-4, `oracle, position ${t}`));
      assert.ok(maxAbsDiff(second.out[2].at(-1)!, second.out[0].at(-1)!) > 1e-3, 'the q_proj merge changed the logits');
      if (fixture === 'A') assert.ok(maxAbsDiff(second.out[1].at(-1)!, second.out[0].at(-1)!) > 1e-3, 'the o_proj plugin changed the logits');
    });

    it('keys int4 apart from fp32, and an int4 entry gives what building it gives', async () => {
      const cacheDir = join(work, `${fixture}-int4`);
      const sessionCache = { dir: cacheDir, maxBytes: 1024 ** 3 };
      const built = await withEngine(dir, { quantize: 'int4' }, (e) => e.logits(o.ids));
      await withEngine(dir, { sessionCache }, async () => {});
      const miss = await withEngine(dir, { sessionCache, quantize: 'int4' }, (e) => e.logits(o.ids));
      const hit = await withEngine(dir, { sessionCache, quantize: 'int4' }, (e) => e.logits(o.ids));
      assert.deepEqual([miss.from, hit.from], ['cached', 'cache']);
      assert.equal(entries(cacheDir).length, 2);
      hit.out.forEach((l, t) => assert.ok(maxAbsDiff(l, built.out[t]) <= 1e-5, `position ${t}`));
    });
  });
}

describe('session cache upkeep', () => {
  const dir = fixtureDir('A');
  const o = oracle('A');

  it('rebuilds an entry whose data file was cut short, or whose model file is not a model', async () => {
    const cacheDir = join(work, 'broken');
    const sessionCache = { dir: cacheDir, maxBytes: 1024 ** 3 };
    const good = await withEngine(dir, { sessionCache }, (e) => e.logits(o.ids));
    const [key] = entries(cacheDir);
    const data = join(cacheDir, key, 'weights.data');
    truncateSync(data, 4096);
    const cut = await withEngine(dir, { sessionCache }, (e) => e.logits(o.ids));
    assert.equal(cut.from, 'cached', 'rebuilt and written again');
    assert.match(cut.warnings.join('\n'), /unusable \(weights\.data has 4096 bytes/);
    cut.out.forEach((l, t) => assert.ok(maxAbsDiff(l, good.out[t]) <= 1e-5));
    // Same size, not a model: onnxruntime refuses it, and the load goes on without it.
    const model = join(cacheDir, key, 'model.onnx');
    writeFileSync(model, Buffer.alloc(readFileSync(model).length, 0x5a));
    const garbage = await withEngine(dir, { sessionCache }, (e) => e.logits(o.ids));
    assert.equal(garbage.from, 'cached');
    assert.match(garbage.warnings.join('\n'), /unusable/);
    garbage.out.forEach((l, t) => assert.ok(maxAbsDiff(l, good.out[t]) <= 1e-5));
    assert.equal((await withEngine(dir, { sessionCache }, async () => {})).from, 'cache');
  });

  it('rebuilds a directory that lost its entry.json, leaving no temporaries behind', async () => {
    const cacheDir = join(work, 'partial');
    const sessionCache = { dir: cacheDir, maxBytes: 1024 ** 3 };
    await withEngine(dir, { sessionCache }, async () => {});
    const [key] = entries(cacheDir);
    rmSync(join(cacheDir, key, 'entry.json'));
    const again = await withEngine(dir, { sessionCache }, async () => {});
    assert.equal(again.from, 'cached');
    assert.ok(existsSync(join(cacheDir, key, 'entry.json')));
    assert.deepEqual(
      readdirSync(cacheDir).filter((n) => n.startsWith('.')),
      [],
      'no temporaries left behind',
    );
  });

  it('keeps to its budget, least recently used out first, never the entry just written', async () => {
    const cacheDir = join(work, 'budget');
    // A copy of A with another config is another backbone (another fingerprint).
    const other = join(work, 'A-copy');
    cpSync(dir, other, { recursive: true });
    const config = JSON.parse(readFileSync(join(other, 'config.json'), 'utf8'));
    writeFileSync(join(other, 'config.json'), JSON.stringify({ ...config, _name_or_path: 'another' }));
    await withEngine(dir, { sessionCache: { dir: cacheDir, maxBytes: 1024 ** 3 } }, async () => {});
    const [first] = entries(cacheDir);
    const one = new SessionCache({ dir: cacheDir, maxBytes: 0 }, () => {}).entries()[0].bytes;
    // Room for one entry: the second load's entry pushes the first out.
    const r = await withEngine(other, { sessionCache: { dir: cacheDir, maxBytes: one } }, async () => {});
    assert.equal(r.from, 'cached');
    const left = entries(cacheDir);
    assert.equal(left.length, 1);
    assert.notEqual(left[0], first);
    // A budget of 0 still keeps the entry just written.
    const zero = await withEngine(dir, { sessionCache: { dir: cacheDir, maxBytes: 0 } }, async () => {});
    assert.equal(zero.from, 'cached');
    assert.deepEqual(entries(cacheDir), [first]);
  });

  it('serves without caching, with a warning, when the directory cannot be made', async () => {
    const file = join(work, 'not-a-dir');
    writeFileSync(file, 'x');
    const r = await withEngine(dir, { sessionCache: { dir: join(file, 'sessions'), maxBytes: 1024 ** 3 } }, (e) => e.logits(o.ids));
    assert.equal(r.from, 'built');
    assert.match(r.warnings.join('\n'), /not caching the optimised session/);
    r.out.forEach((l, t) => assert.ok(maxAbsDiff(l, Float32Array.from(o.logits[t])) < 1e-4));
  });

  it('takes each pluggable weight’s largest |value| as the load reads it, as a scan of the decoded weights finds', async () => {
    const cacheDir = join(work, 'maxabs');
    const plain = await withEngine(dir, {}, async (e) => e.pluggableMaxAbs());
    const cached = await withEngine(dir, { sessionCache: { dir: cacheDir, maxBytes: 1024 ** 3 } }, async (e) => e.pluggableMaxAbs());
    const { tensors } = loadCheckpoint(dir);
    assert.deepEqual([...cached.out.keys()].sort(), [...plain.out.keys()].sort());
    for (const [name, m] of cached.out) {
      let want = 0;
      for (const x of tensors.get(name)!.data) if (Math.abs(x) > want) want = Math.abs(x);
      assert.equal(m, want, name);
      assert.equal(plain.out.get(name), want, name);
    }
  });
});

describe('checkpoint memo', () => {
  const o = oracle('A');
  const memoFile = (cacheDir: string) => {
    const files = readdirSync(join(cacheDir, MEMO_DIR)).filter((f) => f.endsWith('.json'));
    assert.equal(files.length, 1);
    return join(cacheDir, MEMO_DIR, files[0]);
  };

  it('records what a whole read found, and a later load of the same files takes it from there without hashing', async () => {
    const cacheDir = join(work, 'memo');
    const sessionCache = { dir: cacheDir, maxBytes: 1024 ** 3 };
    const plain = await withEngine(fixtureDir('A'), {}, async (e) => ({ fp: e.fingerprint, maxAbs: e.pluggableMaxAbs() }));
    await withEngine(fixtureDir('A'), { sessionCache }, async () => {});
    const memo = JSON.parse(readFileSync(memoFile(cacheDir), 'utf8'));
    assert.equal(memo.fingerprint, plain.out.fp);
    assert.deepEqual(new Map(Object.entries(memo.maxAbs)), plain.out.maxAbs);
    // Proof that the next load believes the memo rather than hashing: a fingerprint no hash gives comes back.
    writeFileSync(memoFile(cacheDir), JSON.stringify({ ...memo, fingerprint: 'f'.repeat(32) }));
    const r = await withEngine(fixtureDir('A'), { sessionCache }, async (e) => ({ fp: e.fingerprint, logits: await e.logits(o.ids) }));
    assert.equal(r.out.fp, 'f'.repeat(32));
    // (That fingerprint keys another session entry, which this load built.)
    assert.equal(r.from, 'cached');
    r.out.logits.forEach((l, t) => assert.ok(maxAbsDiff(l, Float32Array.from(o.logits[t])) < 1e-4));
  });

  it('is not believed once a file changed, even rewritten in place with its old size and mtime', async () => {
    const cacheDir = join(work, 'memo-changed');
    const sessionCache = { dir: cacheDir, maxBytes: 1024 ** 3 };
    const dir = join(work, 'A-rewritten');
    cpSync(fixtureDir('A'), dir, { recursive: true });
    const file = join(dir, 'model.safetensors');
    // A whole second, which utimes sets exactly (a Date would round the nanoseconds the memo compares).
    const stamp = 1_700_000_000;
    utimesSync(file, stamp, stamp);
    const first = await withEngine(dir, { sessionCache }, async (e) => e.fingerprint);
    const { size } = statSync(file);
    // Flip one bit of the last tensor's data in place, then put the mtime back: only the ctime tells.
    const fd = openSync(file, 'r+');
    const last = Buffer.alloc(1);
    try {
      readSync(fd, last, 0, 1, size - 2);
      writeSync(fd, Buffer.from([last[0] ^ 0x01]), 0, 1, size - 2);
    } finally {
      closeSync(fd);
    }
    utimesSync(file, stamp, stamp);
    assert.equal(statSync(file, { bigint: true }).mtimeNs, BigInt(stamp) * 1_000_000_000n);
    assert.equal(statSync(file).size, size);
    const second = await withEngine(dir, { sessionCache }, async (e) => e.fingerprint);
    const plain = await withEngine(dir, {}, async (e) => e.fingerprint);
    assert.notEqual(second.out, first.out);
    assert.equal(second.out, plain.out, 'hashed again: the fingerprint of the bytes now there');
    assert.equal(JSON.parse(readFileSync(memoFile(cacheDir), 'utf8')).fingerprint, plain.out, 'and recorded anew');
  });

  it('reads the checkpoint again when the memo is garbage, and writes a good one', async () => {
    const cacheDir = join(work, 'memo-garbage');
    const sessionCache = { dir: cacheDir, maxBytes: 1024 ** 3 };
    const first = await withEngine(fixtureDir('A'), { sessionCache }, async (e) => e.fingerprint);
    writeFileSync(memoFile(cacheDir), '{"format": 1, "dir": ');
    const again = await withEngine(fixtureDir('A'), { sessionCache }, async (e) => e.fingerprint);
    assert.equal(again.out, first.out);
    assert.equal(again.from, 'cache');
    assert.deepEqual(again.warnings, []);
    assert.equal(JSON.parse(readFileSync(memoFile(cacheDir), 'utf8')).fingerprint, first.out);
  });
});

describe('maxAbsStored', () => {
  it('finds the largest magnitude of bf16, f16 and f32 bytes, negatives and infinities included, NaN ignored', () => {
    const f32 = Float32Array.from([0.5, -3.25, 2, Number.NaN, -0]);
    assert.equal(maxAbsStored(new Uint8Array(f32.buffer), 'F32'), 3.25);
    assert.equal(maxAbsStored(new Uint8Array(Float32Array.from([1, Number.NEGATIVE_INFINITY]).buffer), 'F32'), Number.POSITIVE_INFINITY);
    // bf16: the high halves of f32 values (-3.25 = 0xc050, 2 = 0x4000, NaN = 0x7fc0).
    assert.equal(maxAbsStored(new Uint8Array(Uint16Array.from([0x4000, 0xc050, 0x7fc0, 0x3f00]).buffer), 'BF16'), 3.25);
    // f16: 1.5 = 0x3e00, -65504 = 0xfbff, NaN = 0x7e00.
    assert.equal(maxAbsStored(new Uint8Array(Uint16Array.from([0x3e00, 0xfbff, 0x7e00]).buffer), 'F16'), 65504);
    assert.equal(maxAbsStored(new Uint8Array(0), 'BF16'), 0);
  });
});

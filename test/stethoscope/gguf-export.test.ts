/**
 * `sfn export --format gguf` checked by llama.cpp itself (node-llama-cpp's prebuilt binaries, a dev dependency):
 * each file loads, and its next-token distributions over the whole vocabulary match sfn's for the same view
 * (log-probabilities within 1e-3; llama.cpp's KV cache set to f32, as sfn's is), and llama.cpp tokenizes text
 * as sfn does. Covers Llama (q/k permuted, SentencePiece vocabulary), Qwen2 (biases, byte-level BPE) through a
 * merge, and Llama 3 RoPE smoothing (rope_freqs) with tied embeddings; quantised files load and agree.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { getLlama, type Llama, LlamaLogLevel, type Token } from 'node-llama-cpp';
import { ModelTokenizer } from '../../src/engine/tokenizer.ts';
import { fixtureDir, ROOT } from '../helpers/fixtures.ts';
import { readGguf } from '../helpers/gguf-reader.ts';

const run = promisify(execFile);
const BUILTIN = join(ROOT, 'models/stories260K');
const TEXT = 'Once upon a time, there was a little girl named Lily. She loved to play outside!';

describe('sfn export --format gguf, loaded by llama.cpp', { timeout: 300_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'sfn-gguf-export-'));
  let llama: Llama;
  before(async () => {
    llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  });
  after(async () => {
    await llama.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Exports a view with the CLI, and gives sfn's logits for `ids` on that view. */
  async function exportAndLogits(model: string, ids: number[], dtype: string, extra: string[] = []) {
    const out = join(dir, `${model.split('/').at(-1)}-${dtype}-${extra.length}.gguf`);
    await run(process.execPath, ['bin/sfn.js', 'export', '--model', model, '--format', 'gguf', '--dtype', dtype, '--out', out, ...extra], { cwd: ROOT });
    const { stdout } = await run(process.execPath, ['bin/sfn.js', 'logits', '--model', model, '--ids', ids.join(','), ...extra], { cwd: ROOT, maxBuffer: 256 << 20 });
    return { out, logits: (JSON.parse(stdout) as { logits: number[][] }).logits };
  }

  /** llama.cpp's next-token log-probabilities after each of `ids` (the whole vocabulary, no sampling filters). */
  async function llamaLogprobs(path: string, ids: number[]) {
    const model = await llama.loadModel({ modelPath: path });
    const context = await model.createContext({ contextSize: 256, batchSize: 256, flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
    try {
      const out = await context.getSequence().controlledEvaluate(ids.map((t) => [t as Token, { generateNext: { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } } }]));
      return { model, rows: out.map((o) => o!.next.probabilities!) };
    } finally {
      await context.dispose();
    }
  }

  const logSoftmax = (row: number[]) => {
    const m = Math.max(...row);
    const z = m + Math.log(row.reduce((a, x) => a + Math.exp(x - m), 0));
    return row.map((x) => x - z);
  };

  /** The largest |log p| difference over every position and token; tokens llama.cpp leaves out must be negligible. */
  function maxDiff(sfn: number[][], ours: Map<number, number>[]) {
    let worst = 0;
    sfn.forEach((row, i) => {
      logSoftmax(row).forEach((lp, t) => {
        const p = ours[i].get(t);
        worst = Math.max(worst, p === undefined ? (lp > -30 ? Infinity : 0) : Math.abs(Math.log(p) - lp));
      });
    });
    return worst;
  }

  const cases: { name: string; model: string; extra?: string[]; arch: string }[] = [
    { name: 'Llama (the built-in stories260K: q/k permuted, SentencePiece vocabulary)', model: BUILTIN, arch: 'llama' },
    { name: "Qwen2 with biases, through a merge (A with B's o_proj)", model: fixtureDir('A'), extra: ['--merge', JSON.stringify([{ modules: ['o_proj'], from: fixtureDir('B') }])], arch: 'qwen2' },
    { name: 'Llama 3 RoPE smoothing (rope_freqs) with tied embeddings', model: fixtureDir('L_llama3_tied'), arch: 'llama' },
  ];
  for (const c of cases) {
    it(`f32: ${c.name} gives sfn's distributions and tokens`, async () => {
      const tok = ModelTokenizer.fromDir(c.model);
      const ids = tok.encodePrompt(TEXT).slice(0, 24);
      const { out, logits } = await exportAndLogits(c.model, ids, 'f32', c.extra);
      const f = readGguf(out);
      assert.equal(f.metadata.get('general.architecture'), c.arch);
      assert.equal(f.metadata.get('general.file_type'), 0);
      const { model, rows } = await llamaLogprobs(out, ids);
      const diff = maxDiff(logits, rows);
      assert.ok(diff < 1e-3, `max |log p difference| ${diff}`);
      assert.deepEqual(Array.from(model.tokenize(TEXT, true)), tok.encode(TEXT), 'llama.cpp tokenizes as sfn does');
      await model.dispose();
    });
  }

  it('q8_0, q4_0 and f16 files load, are smaller, and keep the greedy tokens of most positions', async () => {
    const tok = ModelTokenizer.fromDir(BUILTIN);
    const ids = tok.encodePrompt(TEXT);
    const sizes: Record<string, number> = {};
    for (const [dtype, minAgreement] of [
      ['f16', 1],
      ['q8_0', 0.95],
      ['q4_0', 0.8],
    ] as const) {
      const { out, logits } = await exportAndLogits(BUILTIN, ids, dtype);
      const f = readGguf(out);
      sizes[dtype] = f.bytes.length;
      const { model, rows } = await llamaLogprobs(out, ids);
      const argmax = (m: Map<number, number>) => [...m].reduce((a, b) => (b[1] > a[1] ? b : a))[0];
      const agree = logits.filter((row, i) => row.indexOf(Math.max(...row)) === argmax(rows[i])).length / logits.length;
      assert.ok(agree >= minAgreement, `${dtype}: greedy agreement ${agree}`);
      await model.dispose();
    }
    assert.ok(sizes.q4_0 < sizes.q8_0 && sizes.q8_0 < sizes.f16, JSON.stringify(sizes));
  });

  it('refuses bf16 and block quantisation where they do not apply, writing nothing', async () => {
    const out = join(dir, 'refused.gguf');
    await assert.rejects(
      run(process.execPath, ['bin/sfn.js', 'export', '--format', 'gguf', '--dtype', 'bf16', '--out', out], { cwd: ROOT }),
      (e: { code: number; stderr: string }) => e.code === 2 && /bf16/.test(e.stderr),
    );
    await assert.rejects(
      run(process.execPath, ['bin/sfn.js', 'export', '--dtype', 'q4_0', '--out', join(dir, 'refused-dir')], { cwd: ROOT }),
      (e: { code: number; stderr: string }) => e.code === 2 && /--format gguf/.test(e.stderr),
    );
    assert.deepEqual(
      (await import('node:fs')).readdirSync(dir).filter((f) => f.startsWith('refused') || f.startsWith('.refused')),
      [],
    );
  });
});

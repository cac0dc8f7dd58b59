/** The scheduler's prompt groups: a request's n choices of one prompt prefill it once and fork its cache. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Engine } from '../../src/engine/engine.ts';
import type { Finish, GeneratedToken, JobParams } from '../../src/engine/generate.ts';
import { type PromptLogprob, Scheduler } from '../../src/engine/scheduler.ts';
import { ModelTokenizer } from '../../src/engine/tokenizer.ts';
import { fixtureDir, oracle } from '../helpers/fixtures.ts';

interface Out {
  ids: number[];
  logprobs: (number | null)[];
  prompt: PromptLogprob[] | null;
  finish: Finish;
}

describe('prompt groups', () => {
  let engine: Engine;
  let tok: ModelTokenizer;
  /** Prompt tokens fed to the engine (prefill rows), counted by wrapping its forward. */
  let prefilled = 0;
  const o = oracle('A');
  const prompt = [...o.ids, ...o.ids, ...o.ids];
  before(async () => {
    engine = await Engine.load(fixtureDir('A'), { threads: 1 });
    tok = ModelTokenizer.fromDir(fixtureDir('A'));
    const forward = engine.forward.bind(engine);
    engine.forward = ((cache, rows, opts) => {
      for (const r of rows) if (r.length > 1 || opts?.logits === 'all') prefilled += r.length;
      return forward(cache, rows, opts);
    }) as typeof engine.forward;
  });
  after(() => engine.release());

  /** Runs jobs (seeds) on one scheduler at once; `group` puts them in one prompt group. */
  async function run(seeds: number[], group: boolean, extra: Partial<JobParams> = {}, promptLogprobs?: number, prefillChunk = 64): Promise<Out[]> {
    const s = new Scheduler(engine, tok, { maxBatch: 4, maxRunning: 8, maxWaiting: 8, prefillChunk, maxContext: 256 });
    return Promise.all(
      seeds.map(
        (seed, i) =>
          new Promise<Out>((resolve, reject) => {
            const out: Out = { ids: [], logprobs: [], prompt: null, finish: { reason: 'abort', tokens: 0 } };
            s.submit({
              id: `j${i}`,
              promptIds: prompt,
              params: { maxTokens: 6, temperature: 1, seed, ignoreEos: true, logprobs: 2, ...extra },
              view: engine.baseView,
              promptLogprobs,
              promptGroup: group ? 'g' : undefined,
              onPromptLogprobs: (lp) => (out.prompt = lp),
              onToken: (t: GeneratedToken) => {
                out.ids.push(t.id);
                out.logprobs.push(t.logprob ?? null);
              },
              onDone: (f) => resolve({ ...out, finish: f }),
              onError: reject,
            });
          }),
      ),
    );
  }

  it('prefills the prompt once for the group, and each choice samples as it would alone', async () => {
    const seeds = [1, 2, 3];
    prefilled = 0;
    const alone = await run(seeds, false);
    assert.equal(prefilled, 3 * prompt.length, 'ungrouped: one prefill per choice');
    prefilled = 0;
    const grouped = await run(seeds, true);
    assert.equal(prefilled, prompt.length, 'grouped: one prefill');
    for (let i = 0; i < seeds.length; i++) {
      assert.deepEqual(grouped[i].ids, alone[i].ids, `choice ${i}`);
      grouped[i].logprobs.forEach((lp, t) => assert.ok(Math.abs(lp! - alone[i].logprobs[t]!) < 1e-5, `choice ${i} token ${t}`));
    }
    assert.notDeepEqual(grouped[0].ids, grouped[1].ids, 'different seeds sample differently');
  });

  it('forks across prefill chunks and hands every choice the prompt logprobs (echo)', async () => {
    prefilled = 0;
    const grouped = await run([5, 6], true, {}, 1, 4);
    assert.equal(prefilled, prompt.length);
    const alone = await run([5, 6], false, {}, 1, 4);
    for (let i = 0; i < 2; i++) {
      assert.deepEqual(grouped[i].ids, alone[i].ids);
      assert.equal(grouped[i].prompt!.length, prompt.length);
      assert.deepEqual(
        grouped[i].prompt!.map((p) => p.id),
        prompt,
      );
    }
  });

  it('a group of max_tokens 0 (prompt scoring) finishes every choice', async () => {
    const outs = await run([1, 2], true, { maxTokens: 0 }, 1);
    for (const o of outs) {
      assert.equal(o.ids.length, 0);
      assert.equal(o.prompt!.length, prompt.length);
    }
  });
});

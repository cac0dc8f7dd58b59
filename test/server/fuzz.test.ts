/**
 * Random JSON bodies against every endpoint that takes one (fast-check): the server answers 4xx or 2xx,
 * never 5xx, and keeps serving. Bounded in count; loopback only.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { fixtureDir, ORACLE_DIR } from '../helpers/fixtures.ts';

const ENDPOINTS = [
  '/v1/completions',
  '/v1/chat/completions',
  '/v1/plugins/extract',
  '/v1/stethoscope/merge',
  '/v1/stethoscope/destruction',
  '/v1/stethoscope/export',
  '/v1/stethoscope/delta',
  '/v1/stethoscope/eval',
  '/v1/stethoscope/checkpoints',
];

/** Bodies near the real shapes (so validation is exercised past the first field) and arbitrary JSON. */
const nearValid = fc.record(
  {
    model: fc.oneof(fc.constant('A'), fc.constant('A:x'), fc.string()),
    prompt: fc.oneof(fc.string(), fc.array(fc.integer({ min: -5, max: 500 }), { maxLength: 8 }), fc.array(fc.string(), { maxLength: 3 })),
    messages: fc.array(fc.record({ role: fc.constantFrom('user', 'system', 'assistant', 'bogus'), content: fc.oneof(fc.string(), fc.constant(null)) }), { maxLength: 3 }),
    max_tokens: fc.oneof(fc.integer({ min: -2, max: 4 }), fc.double(), fc.constant(null)),
    temperature: fc.oneof(fc.double({ min: -1, max: 3, noNaN: true }), fc.constant(null)),
    n: fc.integer({ min: -1, max: 3 }),
    stop: fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 3 })),
    logprobs: fc.oneof(fc.boolean(), fc.integer({ min: -1, max: 25 })),
    echo: fc.boolean(),
    logit_bias: fc.dictionary(fc.oneof(fc.constant('280'), fc.string()), fc.double({ min: -200, max: 200, noNaN: true }), { maxKeys: 2 }),
    mode: fc.constantFrom('chat', 'reasoning', 'other'),
    min_thinking_tokens: fc.integer({ min: -1, max: 3 }),
    merge: fc.array(
      fc.record({
        modules: fc.array(fc.constantFrom('o_proj', 'M2', 'wings'), { maxLength: 2 }),
        layers: fc.constantFrom('0', '1-2', 'all', '9', 'x'),
        from: fc.constantFrom('B', 'nope'),
        alpha: fc.double({ min: -1, max: 2, noNaN: true }),
      }),
      { maxLength: 2 },
    ),
    destroy: fc.array(
      fc.record({
        method: fc.constantFrom('zero', 'reinit', 'remove', 'burn'),
        modules: fc.array(fc.constantFrom('o_proj', 'M3', 'norm'), { maxLength: 2 }),
        layers: fc.constantFrom('0', '2-3', '0-9', ''),
      }),
      { maxLength: 2 },
    ),
    prompts: fc.array(fc.record({ prompt: fc.string() }), { maxLength: 2 }),
    name: fc.oneof(fc.string(), fc.constant('../x')),
    base: fc.constantFrom('A', '../..', '/'),
    tuned: fc.constantFrom('B', 'nope'),
    b: fc.constantFrom('B', '..', 'nope'),
    items: fc.array(fc.record({ id: fc.string(), prompt: fc.string(), answer: fc.string() }), { maxLength: 2 }),
  },
  { requiredKeys: [] },
);

describe('random bodies (fast-check)', () => {
  let srv: RunningServer;
  before(async () => {
    srv = await startServer(
      parseServerConfig(['--model', fixtureDir('A'), '--port', '0', '--data-dir', mkdtempSync(join(tmpdir(), 'sfn-fuzz-')), '--model-root', ORACLE_DIR, '--max-context', '64'], {}),
      () => {},
    );
    await srv.host.ready;
  });
  after(() => srv.close());

  for (const path of ENDPOINTS) {
    it(`${path}: never a 5xx`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.oneof(nearValid, fc.jsonValue()), async (body) => {
          const r = await fetch(`${srv.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
          const text = await r.text();
          if (r.status >= 500) throw new Error(`${r.status} for ${JSON.stringify(body)}: ${text}`);
          if (r.status >= 400) assert.ok(JSON.parse(text).error?.message, `an OpenAI-style error body: ${text}`);
        }),
        { numRuns: 60, endOnFailure: true },
      );
      // Still serving.
      assert.equal((await fetch(`${srv.url}/health`)).status, 200);
    });
  }
});

/**
 * openapi/openapi.json under Redocly's `recommended` ruleset, warnings included, and with a typed schema for
 * every JSON response (an empty schema documents nothing).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { createConfig, lint } from '@redocly/openapi-core';
import { ROOT } from '../helpers/fixtures.ts';

const DOC = `${ROOT}/openapi/openapi.json`;

/**
 * The probes answer every well-formed GET (liveness, readiness, the scrape, the version): they have no 4xx to
 * document, so `operation-4xx-response` is waived for these four operations only.
 */
const WAIVED = new Set(['/health', '/ready', '/metrics', '/version'].map((p) => `operation-4xx-response #/paths/${p.replaceAll('/', '~1')}/get/responses`));

describe('the OpenAPI document', () => {
  it("passes Redocly's recommended rules", async () => {
    const problems = await lint({ ref: DOC, config: await createConfig({ extends: ['recommended'] }) });
    const key = (p: (typeof problems)[number]) => `${p.ruleId} ${p.location?.[0]?.pointer ?? ''}`;
    const left = problems.filter((p) => !WAIVED.has(key(p)));
    assert.deepEqual(left.map(key), [], left.map((p) => `${p.severity} ${p.ruleId}: ${p.message}`).join('\n'));
  });

  it('gives every JSON response a schema', () => {
    const doc = JSON.parse(readFileSync(DOC, 'utf8')) as { paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema?: object }> }> }>> };
    const empty: string[] = [];
    for (const [path, item] of Object.entries(doc.paths))
      for (const [method, op] of Object.entries(item))
        for (const [status, r] of Object.entries(op.responses))
          for (const [type, c] of Object.entries(r.content ?? {})) if (!c.schema || Object.keys(c.schema).length === 0) empty.push(`${method.toUpperCase()} ${path} ${status} ${type}`);
    assert.deepEqual(empty, []);
  });
});

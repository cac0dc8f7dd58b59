/** Server settings: a bad one is named as the user wrote it (flag and variable), never by an internal field. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseServerConfig } from '../../src/server/config.ts';

describe('server settings', () => {
  it('names a bad setting by its flag and variable', () => {
    assert.throws(() => parseServerConfig(['--api-key', 'short'], {}), /^Error: invalid setting --api-key \/ SFN_API_KEYS \(item 1\): API keys need at least 8 characters$/);
    assert.throws(() => parseServerConfig([], { SFN_ADMIN_KEYS: 'long-enough-key,tiny' }), /--admin-key \/ SFN_ADMIN_KEYS \(item 2\)/);
    assert.throws(() => parseServerConfig(['--max-batch', '0'], {}), /invalid setting --max-batch \/ SFN_MAX_BATCH:/);
    assert.throws(() => parseServerConfig(['--cors-origin', 'not an origin'], {}), /--cors-origin \/ SFN_CORS_ORIGINS \(item 1\)/);
  });
  it('reads flags over variables', () => {
    const c = parseServerConfig(['--port', '9000'], { SFN_PORT: '8001', SFN_REASONING_FORMAT: 's1', SFN_CORS_ORIGINS: 'https://a.example,https://b.example' });
    assert.equal(c.port, 9000);
    assert.equal(c.reasoningFormat, 's1');
    assert.deepEqual(c.corsOrigins, ['https://a.example', 'https://b.example']);
  });
});

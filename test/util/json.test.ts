/** JSON helpers: parse errors in our words, and the object count that bounds a body before it is parsed. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { countJsonObjects, jsonFault } from '../../src/util/json.ts';

describe('countJsonObjects', () => {
  it('counts objects, not braces inside strings (escaped quotes and backslashes included)', () => {
    assert.equal(countJsonObjects('{"a": {"b": [{}, {}]}, "s": "{{ not \\" {objects} \\\\"}'), 4);
    assert.equal(countJsonObjects('[1, 2, "{"]'), 0);
  });
  it('agrees with a parse on any JSON value', () => {
    const objects = (v: unknown): number =>
      Array.isArray(v) ? v.reduce((a: number, x) => a + objects(x), 0) : v && typeof v === 'object' ? 1 + Object.values(v).reduce((a: number, x) => a + objects(x), 0) : 0;
    fc.assert(fc.property(fc.jsonValue(), (v) => countJsonObjects(JSON.stringify(v)) === objects(v)));
  });
  it('stops once past the bound', () => assert.equal(countJsonObjects('[{},{},{},{},{}]', 2), 3));
});

describe('jsonFault', () => {
  it('gives the position V8 reports, never the input', () => {
    const fault = (text: string) => {
      try {
        JSON.parse(text);
      } catch (e) {
        return jsonFault(e);
      }
      return 'parsed';
    };
    assert.equal(fault('{"secret" 1}'), 'invalid JSON at character 11');
    assert.equal(fault('{"a": '), 'invalid JSON: it ends early');
  });
});

import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseHeader, SafetensorsError, SafetensorsFile, writeSafetensors } from '../../src/model/safetensors.ts';

const dir = mkdtempSync(join(tmpdir(), 'sfn-st-'));

/** A file from a header object (or raw header text) and a data section. */
function file(header: unknown, data: Uint8Array | number = 0, headerLenOverride?: bigint): Uint8Array {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const h = Buffer.from(text, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLenOverride ?? BigInt(h.length));
  const body = typeof data === 'number' ? new Uint8Array(data) : data;
  return Buffer.concat([len, h, body]);
}

function rule(bytes: Uint8Array): string {
  try {
    parseHeader(bytes, bytes.length);
  } catch (e) {
    assert.ok(e instanceof SafetensorsError, `expected SafetensorsError, got ${e}`);
    return e.rule;
  }
  return 'ok';
}

const f32 = (name: string, shape: number[], begin: number) => ({ [name]: { dtype: 'F32', shape, data_offsets: [begin, begin + 4 * shape.reduce((a, b) => a * b, 1)] } });

describe('safetensors reader', () => {
  it('accepts a well-formed file with metadata and reads tensors by position', () => {
    const data = new Float32Array([1, 2, 3, 4, 5, 6]);
    const bytes = file({ __metadata__: { format: 'pt' }, ...f32('a', [2, 2], 0), ...f32('b', [2], 16) }, new Uint8Array(data.buffer));
    const p = join(dir, 'ok.safetensors');
    writeFileSync(p, bytes);
    const st = SafetensorsFile.open(p);
    assert.deepEqual(st.header.metadata, { format: 'pt' });
    assert.deepEqual(st.names.sort(), ['a', 'b']);
    assert.deepEqual(Array.from(new Float32Array(st.readBytes('b').buffer)), [5, 6]);
    st.close();
  });
  it('accepts zero-sized tensors', () => assert.equal(rule(file({ e: { dtype: 'F32', shape: [0, 3], data_offsets: [0, 0] } })), 'ok'));
  it('refuses a file shorter than the length prefix', () => assert.equal(rule(new Uint8Array(5)), 'too_small'));
  it('refuses an empty file', () => assert.equal(rule(new Uint8Array(0)), 'too_small'));
  it('refuses an oversized header length before reading it', () => assert.equal(rule(file({}, 0, 200_000_000n)), 'header_too_large'));
  it('refuses a header length past the end of the file', () => assert.equal(rule(file({}, 0, 1000n)), 'header_truncated'));
  it('refuses a header that is not JSON', () => assert.equal(rule(file('{"a": ')), 'header_json'));
  it("says where a header's JSON breaks without quoting the header or V8's wording back", () => {
    for (const [header, message] of [
      ['{"secret-name" 1}', /^header: invalid JSON at character 16$/],
      ['{"secret-name": oops}', /^header: invalid JSON$/],
    ] as const) {
      const bytes = file(header);
      assert.throws(
        () => parseHeader(bytes, bytes.length),
        (e: Error) => message.test(e.message.replace(/^.*?header:/, 'header:')) && !e.message.includes('secret'),
      );
    }
  });
  it('refuses a header that is not an object', () => assert.equal(rule(file([1, 2])), 'header_object'));
  it('refuses invalid UTF-8 in the header', () => {
    const b = file('{"x":1}');
    b[10] = 0xff;
    assert.equal(rule(b), 'header_utf8');
  });
  it('refuses duplicate tensor names (which JSON.parse would collapse)', () => {
    const text = `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`;
    assert.equal(rule(file(text, 8)), 'duplicate_name');
  });
  it('refuses an unknown dtype', () => assert.equal(rule(file({ a: { dtype: 'F12', shape: [1], data_offsets: [0, 4] } }, 4)), 'dtype'));
  it('refuses a shape whose size disagrees with the offsets', () => assert.equal(rule(file({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8)), 'size'));
  it('refuses negative or fractional dims', () => assert.equal(rule(file({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4)), 'shape'));
  it('refuses offsets that end before they begin', () => assert.equal(rule(file({ a: { dtype: 'U8', shape: [0], data_offsets: [4, 0] } }, 4)), 'offsets'));
  it('refuses overlapping offsets', () => assert.equal(rule(file({ ...f32('a', [2], 0), ...f32('b', [2], 4) }, 12)), 'overlap'));
  it('refuses a gap between tensors', () => assert.equal(rule(file({ ...f32('a', [1], 0), ...f32('b', [1], 8) }, 12)), 'gap'));
  it('refuses a data section that does not start at offset 0', () => assert.equal(rule(file({ ...f32('a', [1], 4) }, 8)), 'gap'));
  it('refuses trailing bytes after the last tensor', () => assert.equal(rule(file({ ...f32('a', [1], 0) }, 8)), 'trailing_bytes'));
  it('refuses a truncated data section', () => assert.equal(rule(file({ ...f32('a', [4], 0) }, 8)), 'truncated'));
  it('refuses non-string metadata values', () => assert.equal(rule(file({ __metadata__: { a: 1 } })), 'metadata'));
  it('refuses unknown fields in an entry', () => assert.equal(rule(file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4], extra: 1 } }, 4)), 'entry'));
  it('names the offending tensor in the message', () => {
    const b = file({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8);
    assert.throws(
      () => parseHeader(b, b.length),
      (e: SafetensorsError) => e.tensor === 'w' && /"w"/.test(e.message),
    );
  });
  it('refuses a file that is not safetensors at all', () => {
    const b = Buffer.from('PK\x03\x04 this is a zip file, not safetensors at all');
    assert.notEqual(rule(b), 'ok');
  });
});

describe('safetensors writer', () => {
  it('round-trips tensors and metadata, 8-byte aligned, leaving no temporary file', () => {
    const p = join(dir, 'rt.safetensors');
    const a = new Float32Array([1.5, -2, 3]);
    const b = new Uint8Array([1, 2, 3, 4]);
    writeSafetensors(
      p,
      [
        { name: 'a', dtype: 'F32', shape: [3], data: new Uint8Array(a.buffer) },
        { name: 'b', dtype: 'U8', shape: [2, 2], data: b },
      ],
      { k: 'v' },
    );
    const raw = readFileSync(p);
    assert.equal(Number(raw.readBigUInt64LE(0)) % 8, 0);
    const st = SafetensorsFile.open(p);
    assert.deepEqual(st.header.metadata, { k: 'v' });
    assert.deepEqual(Array.from(new Float32Array(st.readBytes('a').buffer)), [1.5, -2, 3]);
    assert.deepEqual(Array.from(st.readBytes('b')), [1, 2, 3, 4]);
    st.close();
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.endsWith('.tmp')),
      [],
    );
  });
  it('refuses duplicate names and wrong sizes without writing anything', () => {
    const p = join(dir, 'bad.safetensors');
    const d = new Uint8Array(4);
    assert.throws(
      () =>
        writeSafetensors(p, [
          { name: 'x', dtype: 'F32', shape: [1], data: d },
          { name: 'x', dtype: 'F32', shape: [1], data: d },
        ]),
      /duplicate/,
    );
    assert.throws(() => writeSafetensors(p, [{ name: 'x', dtype: 'F32', shape: [2], data: d }]), /bytes/);
    assert.ok(!readdirSync(dir).includes('bad.safetensors'));
  });
});

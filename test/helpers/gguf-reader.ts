/** A minimal GGUF reader for tests: metadata, tensor infos and the data offset (spec: ggml's docs/gguf.md). */
import { readFileSync } from 'node:fs';

export interface GgufFile {
  version: number;
  metadata: Map<string, unknown>;
  tensors: { name: string; ne: number[]; type: number; offset: number }[];
  dataStart: number;
  bytes: Buffer;
}

export function readGguf(path: string): GgufFile {
  const b = readFileSync(path);
  let p = 0;
  const u32 = () => ((p += 4), b.readUInt32LE(p - 4));
  const u64 = () => ((p += 8), Number(b.readBigUInt64LE(p - 8)));
  const str = () => {
    const n = u64();
    p += n;
    return b.toString('utf8', p - n, p);
  };
  const value = (type: number): unknown => {
    switch (type) {
      case 4:
        return u32();
      case 5:
        return ((p += 4), b.readInt32LE(p - 4));
      case 6:
        return ((p += 4), b.readFloatLE(p - 4));
      case 7:
        return b[p++] !== 0;
      case 8:
        return str();
      case 9: {
        const t = u32();
        const n = u64();
        return Array.from({ length: n }, () => value(t));
      }
      default:
        throw new Error(`value type ${type} not read here`);
    }
  };
  if (b.toString('latin1', 0, 4) !== 'GGUF') throw new Error('not GGUF');
  p = 4;
  const version = u32();
  const nTensors = u64();
  const nKv = u64();
  const metadata = new Map<string, unknown>();
  for (let i = 0; i < nKv; i++) {
    const k = str();
    metadata.set(k, value(u32()));
  }
  const tensors = Array.from({ length: nTensors }, () => {
    const name = str();
    const nd = u32();
    const ne = Array.from({ length: nd }, u64);
    return { name, ne, type: u32(), offset: u64() };
  });
  const align = (metadata.get('general.alignment') as number) ?? 32;
  return { version, metadata, tensors, dataStart: Math.ceil(p / align) * align, bytes: b };
}

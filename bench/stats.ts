/** The statistics the benches print: nearest-rank percentiles, the median, and the bytes a decode step reads. */
import type { ModelSpec } from '../src/model/config.ts';
import { expectedParams } from '../src/model/names.ts';

/** float32 bytes one batch-1 decode step must read: every weight once, but an untied embedding (a row is gathered). */
export function decodeWeightBytes(spec: ModelSpec): number {
  let bytes = 0;
  for (const [name, shape] of expectedParams(spec)) {
    if (name === 'model.embed_tokens.weight' && !spec.tieWordEmbeddings) continue;
    bytes += shape.reduce((a, b) => a * b, 1) * 4;
  }
  return bytes;
}

/** The nearest-rank p-th percentile (p in 0..100) of `xs`; NaN for none. */
export function pct(xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

/** The median, the mean of the middle two for an even count. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Token arrival times of a streamed completion (each SSE event's `logprobs.tokens`), from the request's start. */
export async function streamTokenTimes(url: string, body: Record<string, unknown>): Promise<{ start: number; times: number[] }> {
  const start = performance.now();
  const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true, logprobs: 0 }) });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const times: number[] = [];
  let buf = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body!) {
    buf += decoder.decode(chunk as Uint8Array, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const data = buf.slice(0, i).replace(/^data: /, '');
      buf = buf.slice(i + 2);
      if (data === '[DONE]') continue;
      const n = (JSON.parse(data).choices?.[0]?.logprobs?.tokens ?? []).length;
      for (let k = 0; k < n; k++) times.push(performance.now());
    }
  }
  return { start, times };
}

/**
 * Serving benchmark: the real server (in this process, engine in its worker) on a Qwen2.5-0.5B-shaped
 * random checkpoint, driven over HTTP with streaming completions at concurrency 1, 4 and 8. Prints JSON:
 * time to first token p50/p99, aggregate generated tokens/s, and the ratio of tokens/s at 8 to 1.
 *
 *   npm run bench:serve [-- --preset qwen2.5-0.5b --tokens 32 --rounds 2]
 */
import { parseArgs } from 'node:util';
import { cachedModel, PRESETS, type Preset } from '../src/model/make-model.ts';
import { parseServerConfig } from '../src/server/config.ts';
import { startServer } from '../src/server/serve.ts';
import { pct, streamTokenTimes } from './stats.ts';

const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'qwen2.5-0.5b' },
    tokens: { type: 'string', default: '32' },
    prompt: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '2' },
    concurrency: { type: 'string', default: '1,4,8' },
  },
});
const preset = values.preset as Preset;
if (!(preset in PRESETS)) throw new Error(`--preset must be one of ${Object.keys(PRESETS)}`);
const maxTokens = Number(values.tokens);
const promptLen = Number(values.prompt);
const rounds = Number(values.rounds);
const levels = values.concurrency!.split(',').map(Number);
const log = (s: string) => process.stderr.write(`bench: ${s}\n`);

async function main() {
  const { dir } = cachedModel(preset, 0);
  const config = parseServerConfig(['--model', dir, '--port', '0', '--max-batch', String(Math.max(...levels)), '--max-running', String(Math.max(...levels))], {});
  const srv = await startServer(config, log);
  await srv.host.ready;

  /** One streaming request; returns its time to first token and tokens received. */
  async function request(seed: number): Promise<{ ttft: number; tokens: number }> {
    // Distinct token-id prompts so that no two requests are alike.
    const prompt = Array.from({ length: promptLen }, (_, i) => 1000 + ((seed * 7919 + i * 104729) % 100000));
    const { start, times } = await streamTokenTimes(srv.url, { model: srv.modelName, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true });
    return { ttft: times.length ? times[0] - start : 0, tokens: times.length };
  }

  // Warm-up: the first runs pay for lazy allocations.
  await request(0);
  const results: Record<string, { ttft_ms_p50: number; ttft_ms_p99: number; tokens_per_s: number; requests: number; tokens: number; seconds: number }> = {};
  let seed = 1;
  for (const c of levels) {
    const ttfts: number[] = [];
    let tokens = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: c }, async () => {
        for (let r = 0; r < rounds; r++) {
          const res = await request(seed++);
          ttfts.push(res.ttft);
          tokens += res.tokens;
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    results[`c${c}`] = {
      ttft_ms_p50: +pct(ttfts, 50).toFixed(1),
      ttft_ms_p99: +pct(ttfts, 99).toFixed(1),
      tokens_per_s: +(tokens / seconds).toFixed(2),
      requests: ttfts.length,
      tokens,
      seconds: +seconds.toFixed(2),
    };
    log(`concurrency ${c}: ${results[`c${c}`].tokens_per_s} tok/s, TTFT p50 ${results[`c${c}`].ttft_ms_p50} ms`);
  }
  await srv.close();
  const lo = results[`c${levels[0]}`];
  const hi = results[`c${levels[levels.length - 1]}`];
  process.stdout.write(
    JSON.stringify(
      {
        bench: 'serve',
        preset,
        prompt_tokens: promptLen,
        max_tokens: maxTokens,
        rounds_per_client: rounds,
        concurrency: results,
        [`ratio_tokens_per_s_c${levels[levels.length - 1]}_vs_c${levels[0]}`]: +(hi.tokens_per_s / lo.tokens_per_s).toFixed(2),
        peak_rss_bytes: process.resourceUsage().maxRSS * 1024,
      },
      null,
      2,
    ) + '\n',
  );
}

await main();

/**
 * Generation: a `Sequence` turns logits into tokens and text (sampling, stop ids, stop strings, max tokens,
 * incremental detokenization) and `generate` drives one through the engine as an async iterator. The
 * batching scheduler drives many Sequences through one forward per step; both share this logic.
 */
import type { Engine } from './engine.ts';
import type { KvCache } from './kv-cache.ts';
import { Rng, randomSeed } from '../util/random.ts';
import { logprobs, sample, type SamplingParams, type TokenLogprob } from './sampler.ts';
import type { ModelTokenizer } from './tokenizer.ts';
import type { View } from './view.ts';

export type FinishReason = 'stop' | 'length' | 'abort';

/** Generation parameters that can cross a thread boundary (no signal, view or callback). */
export type JobParams = Omit<GenerateParams, 'signal' | 'view' | 'logitsProcessor'>;

export interface GenerateParams extends Partial<SamplingParams> {
  maxTokens: number;
  seed?: number;
  /** Strings that end generation; they are not part of the output. */
  stop?: string[];
  /** Token ids that end generation, besides the tokenizer's EOS ids. */
  stopIds?: number[];
  /** Keep going past EOS (benchmarks, oracle checks). */
  ignoreEos?: boolean;
  /** Also report the log-probability of each chosen token and of this many alternatives. */
  logprobs?: number;
  signal?: AbortSignal;
  view?: View;
  /** Added to the logits before sampling (OpenAI's logit_bias), by token id. */
  logitBias?: Record<number, number>;
  /** Edits logits in place before sampling. */
  logitsProcessor?: (logits: Float32Array, generated: readonly number[]) => void;
  /** Reasoning generation with budget forcing (s1): the sequence starts inside a thinking block. */
  reasoning?: ReasoningParams;
}

/**
 * Budget forcing as in s1 (Muennighoff et al., 2025). While fewer than `minTokens` thinking tokens exist,
 * an attempt to end thinking (the first token of `endIds`, or EOS) is replaced by `waitIds` ("Wait"), at most
 * `wait` times, and suppressed after that; at `maxTokens` thinking tokens the block is closed by force. Once
 * thinking may end, the first token of `endIds` is followed by the rest of the delimiter (s1's
 * `<|im_start|>answer\n`), and an EOS is replaced by the whole delimiter: the answer is still generated.
 */
export interface ReasoningParams {
  /** The tokens that close thinking and open the answer: `</think>`, or s1's `<|im_start|>answer\n`. */
  endIds: number[];
  waitIds: number[];
  minTokens: number;
  maxTokens: number | null;
  wait: number;
}

export type Channel = 'reasoning' | 'content';

export interface GeneratedToken {
  id: number;
  /** Which part of the reply the token belongs to (reasoning mode), else 'content'. */
  channel: Channel;
  /** Set when budget forcing put this token in place of the model's choice. */
  forced?: boolean;
  /** A token of the end-of-thinking delimiter: it closes the reasoning part and belongs to neither text. */
  closesReasoning?: boolean;
  /** Text released by this token (may be empty while a multi-byte character or a stop string is pending). */
  text: string;
  logprob?: number;
  top?: TokenLogprob[];
}

export interface Finish {
  reason: FinishReason;
  /** The stop string or id that ended generation, if one did. */
  matched?: string | number;
  tokens: number;
}

/**
 * Incremental detokenization as vLLM does it: decode a short window of recent ids and release only the
 * text past what the window already produced, holding back an incomplete UTF-8 character.
 */
export class Detokenizer {
  private ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;

  private readonly tok: ModelTokenizer;
  /** Special tokens release no text (generation); false renders them (echoed prompts). */
  private readonly skipSpecial: boolean;
  constructor(tok: ModelTokenizer, skipSpecial: boolean = true) {
    this.tok = tok;
    this.skipSpecial = skipSpecial;
  }

  push(id: number): string {
    this.ids.push(id);
    const prefix = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.skipSpecial);
    const full = this.tok.decode(this.ids.slice(this.prefixOffset), this.skipSpecial);
    if (full.length > prefix.length && !full.endsWith('\uFFFD')) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return full.slice(prefix.length);
    }
    return '';
  }
}

/** One sequence's sampling and stopping state. */
export class Sequence {
  readonly generated: number[] = [];
  readonly rng: Rng;
  private readonly sampling: SamplingParams;
  private readonly tokenizer: ModelTokenizer | null;
  private readonly stopIds: Set<number>;
  /** Text released so far, and text held back because it may begin a stop string. */
  text = '';
  reasoningText = '';
  private pending = '';
  finish: Finish | null = null;
  phase: Channel;
  thinkingTokens = 0;
  waitsUsed = 0;
  private forced: number[] = [];
  /** Delimiter tokens still to come before the answer begins. */
  private closing = 0;
  private detok: Detokenizer | null;

  readonly params: GenerateParams;
  constructor(params: GenerateParams, tokenizer: ModelTokenizer | null) {
    this.params = params;
    this.rng = new Rng(params.seed ?? randomSeed());
    this.sampling = { temperature: params.temperature ?? 1, topP: params.topP ?? 1, topK: params.topK ?? 0 };
    this.tokenizer = tokenizer;
    this.detok = tokenizer ? new Detokenizer(tokenizer) : null;
    this.phase = params.reasoning ? 'reasoning' : 'content';
    this.stopIds = new Set([...(params.stopIds ?? []), ...(params.ignoreEos || !tokenizer ? [] : tokenizer.eosIds)]);
    if (params.maxTokens <= 0) this.finish = { reason: 'length', tokens: 0 };
  }

  /** Chooses the next token from the model's logits; sets `finish` when generation ends. */
  accept(logits: Float32Array): GeneratedToken {
    if (this.finish) throw new Error('sequence already finished');
    // Logprobs are of the model's own distribution: copied first only where something below changes the logits in
    // place (a bias, a processor, reasoning's masks), as the copy is 0.25 ms a row and token at a 152k vocabulary.
    const changes = this.params.logitBias || this.params.logitsProcessor || this.params.reasoning;
    const raw = this.params.logprobs !== undefined && changes ? logits.slice() : logits;
    if (this.forced.length) return this.acceptId(this.forced.shift()!, raw, true);
    if (this.params.logitBias) for (const [id, b] of Object.entries(this.params.logitBias)) logits[Number(id)] += b;
    if (this.params.logitsProcessor) this.params.logitsProcessor(logits, this.generated);
    let id = sample(logits, this.sampling, this.rng);
    const r = this.params.reasoning;
    if (r && this.phase === 'reasoning') {
      const endId = r.endIds[0];
      if (r.maxTokens !== null && this.thinkingTokens >= r.maxTokens) return this.close(raw, true);
      let ending = id === endId || this.stopIds.has(id);
      if (ending && this.thinkingTokens < r.minTokens) {
        if (this.waitsUsed < r.wait && r.waitIds.length) {
          this.waitsUsed++;
          this.forced.push(...r.waitIds);
          return this.acceptId(this.forced.shift()!, raw, true);
        }
        logits[endId] = -Infinity;
        for (const s of this.stopIds) logits[s] = -Infinity;
        id = sample(logits, this.sampling, this.rng);
        ending = false;
      }
      // The delimiter follows a sampled end token; an EOS inside thinking ends thinking, not the reply, so the
      // delimiter takes its place.
      if (ending) return this.close(raw, id !== endId);
    }
    return this.acceptId(id, raw);
  }

  /** Starts the end-of-thinking delimiter in place of the model's choice. */
  private close(raw: Float32Array, forced: boolean): GeneratedToken {
    const ids = this.params.reasoning!.endIds;
    this.forced.push(...ids.slice(1));
    this.closing = ids.length;
    return this.acceptId(ids[0], raw, forced);
  }

  /** Takes a chosen token (from `accept`, or forced by the caller). */
  acceptId(id: number, rawLogits?: Float32Array, forced = false): GeneratedToken {
    this.generated.push(id);
    const out: GeneratedToken = { id, text: '', channel: this.phase };
    if (forced) out.forced = true;
    if (rawLogits && this.params.logprobs !== undefined) Object.assign(out, logprobs(rawLogits, id, this.params.logprobs));
    if (this.phase === 'reasoning') {
      if (this.closing > 0) {
        // A delimiter token; after its last one the answer is detokenized afresh, so no text straddles the two.
        out.closesReasoning = true;
        if (--this.closing === 0) {
          this.phase = 'content';
          this.detok = this.tokenizer ? new Detokenizer(this.tokenizer) : null;
        }
      } else if (!this.stopIds.has(id)) {
        this.thinkingTokens++;
        out.text = this.detok ? this.detok.push(id) : '';
        this.reasoningText += out.text;
      }
      if (!this.stopIds.has(id) || out.closesReasoning) {
        if (this.generated.length >= this.params.maxTokens) this.finish = { reason: 'length', tokens: this.generated.length };
        return out;
      }
    }
    if (this.stopIds.has(id)) {
      out.text = this.flush();
      this.finish = { reason: 'stop', matched: id, tokens: this.generated.length };
      return out;
    }
    out.text = this.release(this.detok ? this.detok.push(id) : '');
    if (!this.finish && this.generated.length >= this.params.maxTokens) {
      out.text += this.flush();
      this.finish = { reason: 'length', tokens: this.generated.length };
    }
    return out;
  }

  abort(): void {
    this.finish ??= { reason: 'abort', tokens: this.generated.length };
  }

  private flush(): string {
    const t = this.pending;
    this.pending = '';
    this.text += t;
    return t;
  }

  /** Adds new text, cutting at a stop string and holding back a suffix that may begin one. */
  private release(delta: string): string {
    const stops = this.params.stop ?? [];
    const buf = this.pending + delta;
    if (stops.length === 0) {
      this.pending = '';
      this.text += buf;
      return buf;
    }
    // A stop string may start inside text already released only up to its length - 1 chars back, which
    // were held in `pending`; search the buffer.
    let cut = -1;
    let matched = '';
    for (const s of stops) {
      if (!s) continue;
      const i = buf.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) (cut = i), (matched = s);
    }
    if (cut >= 0) {
      const out = buf.slice(0, cut);
      this.pending = '';
      this.text += out;
      this.finish = { reason: 'stop', matched, tokens: this.generated.length };
      return out;
    }
    let hold = 0;
    for (const s of stops) {
      for (let k = Math.min(s.length - 1, buf.length); k > hold; k--) {
        if (buf.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    const out = buf.slice(0, buf.length - hold);
    this.pending = buf.slice(buf.length - hold);
    this.text += out;
    return out;
  }
}

/**
 * Generates from prompt ids, yielding each token as it is chosen; returns how it finished. The prompt is
 * prefilled in one run (only the last position's logits come back), then one token per run.
 */
export async function* generate(
  engine: Engine,
  tokenizer: ModelTokenizer | null,
  promptIds: number[],
  params: GenerateParams,
  cache: KvCache = engine.newCache(1),
): AsyncGenerator<GeneratedToken, Finish> {
  if (promptIds.length === 0) throw new RangeError('the prompt must have at least one token');
  const seq = new Sequence(params, tokenizer);
  let next = promptIds;
  while (!seq.finish) {
    if (params.signal?.aborted) {
      seq.abort();
      break;
    }
    const [[logits]] = await engine.forward(cache, [next], { view: params.view });
    if (params.signal?.aborted) {
      seq.abort();
      break;
    }
    const tok = seq.accept(logits);
    yield tok;
    next = [tok.id];
  }
  return seq.finish!;
}

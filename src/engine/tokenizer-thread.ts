/**
 * Prompts encoded (and long id lists decoded) off the HTTP thread when they are large: a 1 MiB text takes ~1 s to tokenize, and a prompt that
 * fits a 32k context ~100 ms, which on the HTTP thread would hold /health and every other request. Inputs under
 * `offThreadChars` are encoded in place (a few ms); larger ones go to one persistent worker thread with its own
 * copy of the tokenizer (started on first use, restarted after a crash), whose ids come back transferred.
 */
import { isMainThread, parentPort, type Worker, workerData } from 'node:worker_threads';
import { tsWorker } from '../util/ts-worker.ts';
import { chatPrompt, PromptError, type ReasoningOptions, type TemplateOptions } from './prompt.ts';
import type { ReasoningParams } from './generate.ts';
import { type ChatMessage, ModelTokenizer } from './tokenizer.ts';

/** A text (or the texts of one prompt) with more tokens than the context holds, known from a count in pieces. */
export class ContextOverflow extends Error {
  override name = 'ContextOverflow';
  readonly atLeast: number;
  /** Which of the texts overflowed (a completions request's prompt list). */
  readonly index: number;
  constructor(atLeast: number, index: number) {
    super(`more than ${atLeast} tokens`);
    this.atLeast = atLeast;
    this.index = index;
  }
}

export interface ChatPrompt {
  ids: number[];
  reasoning?: ReasoningParams;
  format?: 'think' | 's1';
}

/** Texts longer than this are counted in pieces before the whole is tokenized. */
const PIECE = 32 * 1024;

/**
 * Throws ContextOverflow when the texts together certainly have more than `limit` tokens, without tokenizing
 * megabytes whole: texts past 64 KiB are tokenized in 32 KiB pieces cut at whitespace, stopping once the count
 * passes the limit. Merges never cross a cut, so a cut changes the count only around it (a leading-space marker,
 * a split word): the pieces' counts less two each bound the text's tokens from below.
 */
export function checkTokens(tok: ModelTokenizer, texts: string[], limit: number, index = 0): void {
  if (texts.reduce((a, t) => a + t.length, 0) <= 2 * PIECE) return;
  let atLeast = 0;
  for (const text of texts) {
    for (let at = 0; at < text.length; ) {
      // Cut at whitespace, or mid-word where there is none within 1 KiB (a text without spaces must be cut too).
      let end = Math.min(text.length, at + PIECE);
      const stop = Math.min(text.length, end + 1024);
      while (end < stop && !/\s/.test(text[end])) end++;
      atLeast += Math.max(0, tok.encode(text.slice(at, end)).length - 2);
      at = end;
      if (atLeast > limit) throw new ContextOverflow(atLeast, index);
    }
  }
}

/** Plain-text prompts, each as transformers' `tokenizer(text)` (`special`) or bare; refused past `limit`. */
export function encodeTexts(tok: ModelTokenizer, texts: string[], special: boolean, limit: number | null): number[][] {
  if (limit !== null) texts.forEach((t, i) => checkTokens(tok, [t], limit, i));
  return texts.map((t) => (special ? tok.encodePrompt(t) : tok.encode(t)));
}

/** A chat's prompt (see chatPrompt); refused past `limit` from its contents alone, before templating. */
export function encodeChat(tok: ModelTokenizer, messages: ChatMessage[], reasoning: ReasoningOptions | undefined, opts: TemplateOptions, limit: number | null): ChatPrompt {
  // The template only adds text around the contents: their tokens bound the prompt's from below.
  if (limit !== null)
    checkTokens(
      tok,
      messages.map((m) => m.content),
      limit,
    );
  return chatPrompt(tok, messages, reasoning, opts);
}

type Request =
  | { id: number; op: 'texts'; texts: string[]; special: boolean; limit: number | null }
  | { id: number; op: 'decode'; ids: Int32Array; skipSpecial: boolean }
  | { id: number; op: 'chat'; messages: ChatMessage[]; reasoning?: ReasoningOptions; opts: TemplateOptions; limit: number | null };
type Reply =
  | { id: number; ok: true; ids: Int32Array[]; text?: string; reasoning?: ReasoningParams; format?: 'think' | 's1' }
  | { id: number; ok: false; name: string; message: string; param?: string; atLeast?: number; index?: number };

interface Pending {
  resolve: (r: Reply & { ok: true }) => void;
  reject: (e: Error) => void;
  /** The thread asked: a dead thread fails its own callers, not those of the one that replaced it. */
  thread: Worker;
}

/** Templating costs per message as well as per character (~50 us for a short one): each counts as this many. */
const MESSAGE_CHARS = 256;

export class PromptEncoder {
  readonly tok: ModelTokenizer;
  private readonly dir: string;
  private readonly offThreadChars: number;
  private thread: Worker | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  /** Requests the thread has answered (for tests and the curious). */
  offThread = 0;

  /** `dir` is the model directory `tok` came from: the thread loads its own copy from it. */
  constructor(tok: ModelTokenizer, dir: string, offThreadChars = 64 * 1024) {
    this.tok = tok;
    this.dir = dir;
    this.offThreadChars = offThreadChars;
  }

  async encodeTexts(texts: string[], special: boolean, limit: number | null): Promise<number[][]> {
    if (texts.reduce((a, t) => a + t.length, 0) < this.offThreadChars) return encodeTexts(this.tok, texts, special, limit);
    const r = await this.ask({ id: 0, op: 'texts', texts, special, limit });
    return r.ids.map((a) => Array.from(a));
  }

  async chatPrompt(messages: ChatMessage[], reasoning: ReasoningOptions | undefined, opts: TemplateOptions, limit: number | null): Promise<ChatPrompt> {
    if (messages.reduce((a, m) => a + m.content.length + MESSAGE_CHARS, 0) < this.offThreadChars) return encodeChat(this.tok, messages, reasoning, opts, limit);
    const r = await this.ask({ id: 0, op: 'chat', messages, reasoning, opts, limit });
    return { ids: Array.from(r.ids[0]), reasoning: r.reasoning, format: r.format };
  }

  /** The text of token ids (vLLM's /detokenize): a million ids take ~1.5 s, so long lists go to the thread. */
  async decode(ids: number[], skipSpecial: boolean): Promise<string> {
    // Ids decode at roughly 1.5 us each: 16k of them in ~25 ms.
    if (ids.length < this.offThreadChars / 4) return this.tok.decode(ids, skipSpecial);
    const packed = Int32Array.from(ids);
    const r = await this.ask({ id: 0, op: 'decode', ids: packed, skipSpecial }, [packed.buffer]);
    return r.text!;
  }

  /** Stops the thread (a later large input starts a new one). */
  async close(): Promise<void> {
    const t = this.thread;
    this.thread = null;
    await t?.terminate();
  }

  private ask(req: Request, transfer: ArrayBuffer[] = []): Promise<Reply & { ok: true }> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const thread = this.worker();
      this.pending.set(id, { resolve, reject, thread });
      thread.postMessage({ ...req, id }, transfer);
    });
  }

  private worker(): Worker {
    if (this.thread) return this.thread;
    const t = tsWorker(new URL(import.meta.url), { tokenizerThread: { dir: this.dir } });
    t.unref(); // an idle tokenizer never keeps the process alive
    const fail = (e: Error) => {
      if (this.thread === t) this.thread = null;
      for (const [id, p] of this.pending) {
        if (p.thread !== t) continue;
        this.pending.delete(id);
        p.reject(e);
      }
    };
    t.on('message', (r: Reply) => {
      const p = this.pending.get(r.id);
      if (!p) return;
      this.pending.delete(r.id);
      this.offThread++;
      if (r.ok) p.resolve(r);
      else p.reject(rebuild(r));
    });
    t.on('error', fail);
    t.on('exit', (code) => fail(new Error(`the tokenizer thread exited (code ${code})`)));
    this.thread = t;
    return t;
  }
}

/** The error a thread's reply carries, as the class the caller catches. */
function rebuild(r: Reply & { ok: false }): Error {
  if (r.name === 'ContextOverflow') return new ContextOverflow(r.atLeast!, r.index!);
  if (r.name === 'PromptError') return new PromptError(r.message, r.param!);
  const e = new Error(r.message);
  e.name = r.name;
  return e;
}

if (!isMainThread && (workerData as { tokenizerThread?: unknown } | undefined)?.tokenizerThread) {
  const tok = ModelTokenizer.fromDir((workerData as { tokenizerThread: { dir: string } }).tokenizerThread.dir);
  const port = parentPort!;
  port.on('message', (req: Request) => {
    try {
      if (req.op === 'decode') {
        port.postMessage({ id: req.id, ok: true, ids: [], text: tok.decode(Array.from(req.ids), req.skipSpecial) } satisfies Reply);
      } else if (req.op === 'texts') {
        const ids = encodeTexts(tok, req.texts, req.special, req.limit).map((a) => Int32Array.from(a));
        port.postMessage(
          { id: req.id, ok: true, ids } satisfies Reply,
          ids.map((a) => a.buffer),
        );
      } else {
        const p = encodeChat(tok, req.messages, req.reasoning, req.opts, req.limit);
        const ids = Int32Array.from(p.ids);
        port.postMessage({ id: req.id, ok: true, ids: [ids], reasoning: p.reasoning, format: p.format } satisfies Reply, [ids.buffer]);
      }
    } catch (e) {
      const err = e as Error & { param?: string; atLeast?: number; index?: number };
      port.postMessage({
        id: req.id,
        ok: false,
        name: err instanceof PromptError ? 'PromptError' : err.name,
        message: err.message,
        param: err.param,
        atLeast: err.atLeast,
        index: err.index,
      } satisfies Reply);
    }
  });
}

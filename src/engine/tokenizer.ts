/**
 * Tokenizer and chat template from a model directory's `tokenizer.json` / `tokenizer_config.json`
 * (@huggingface/tokenizers, @huggingface/jinja), with stop ids from `generation_config.json` and `config.json`,
 * as transformers' `generate` collects them.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';

export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

export class ChatTemplateError extends Error {
  override name = 'ChatTemplateError';
}

export class ModelTokenizer {
  private readonly tok: Tokenizer;
  private readonly template: Template | null;
  /** The chat template's source ('' when there is none), for format detection (ChatML or not). */
  readonly chatTemplateSource: string;
  readonly eosIds: number[];
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  private readonly specialIds: Set<number>;
  /** tokenizer_config.json's add_bos_token / add_eos_token when set: Llama-family tokenizers in transformers honour them over tokenizer.json. */
  private readonly addBos: boolean | null;
  private readonly addEos: boolean | null;

  constructor(tokenizerJson: object, tokenizerConfig: Record<string, unknown>, eosIds: number[]) {
    this.tok = new Tokenizer(tokenizerJson, tokenizerConfig);
    const tpl = tokenizerConfig.chat_template;
    const source = typeof tpl === 'string' ? tpl : Array.isArray(tpl) ? (tpl.find((t) => t?.name === 'default')?.template as string | undefined) : undefined;
    this.template = source ? new Template(source) : null;
    this.chatTemplateSource = source ?? '';
    this.bosToken = tokenText(tokenizerConfig.bos_token);
    this.eosToken = tokenText(tokenizerConfig.eos_token);
    const ids = new Set(eosIds);
    if (this.eosToken) {
      const id = this.tok.token_to_id(this.eosToken);
      if (id !== undefined) ids.add(id);
    }
    this.eosIds = [...ids];
    this.addBos = typeof tokenizerConfig.add_bos_token === 'boolean' ? tokenizerConfig.add_bos_token : null;
    this.addEos = typeof tokenizerConfig.add_eos_token === 'boolean' ? tokenizerConfig.add_eos_token : null;
    this.specialIds = new Set([...this.tok.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id));
  }

  static fromDir(dir: string): ModelTokenizer {
    const json = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
    const cfgPath = join(dir, 'tokenizer_config.json');
    const cfg = existsSync(cfgPath) ? JSON.parse(readFileSync(cfgPath, 'utf8')) : {};
    return new ModelTokenizer(json, cfg, stopIds(dir));
  }

  private longest: number | null = null;

  /**
   * An upper bound on the UTF-8 bytes one token covers (the longest vocabulary entry, counted generously): a text
   * of more than `n` times this many bytes has more than `n` tokens, known without tokenizing it.
   */
  get maxTokenBytes(): number {
    if (this.longest === null) {
      let max = 1;
      for (const t of this.tok.get_vocab(true).keys()) max = Math.max(max, Buffer.byteLength(t, 'utf8'));
      this.longest = max;
    }
    return this.longest;
  }

  get hasChatTemplate(): boolean {
    return this.template !== null;
  }

  encode(text: string, addSpecialTokens = false): number[] {
    return this.tok.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /**
   * A plain-text prompt as transformers' `tokenizer(text)` encodes it by default: tokenizer.json's post-processor
   * (BOS for Llama-family tokenizers), with add_bos_token / add_eos_token from tokenizer_config.json taking
   * precedence where they are set. Chat-template output is encoded with `encode` instead (the template writes
   * its own special tokens, and transformers' apply_chat_template adds none).
   */
  encodePrompt(text: string): number[] {
    const ids = this.encode(text, true);
    const bos = this.bosToken === null ? undefined : this.tok.token_to_id(this.bosToken);
    const eos = this.eosToken === null ? undefined : this.tok.token_to_id(this.eosToken);
    if (bos !== undefined && this.addBos !== null) {
      const has = ids[0] === bos && this.encode(text)[0] !== bos;
      if (this.addBos && !has) ids.unshift(bos);
      if (!this.addBos && has) ids.shift();
    }
    if (eos !== undefined && this.addEos !== null) {
      const has = ids.length > 0 && ids[ids.length - 1] === eos && this.encode(text).at(-1) !== eos;
      if (this.addEos && !has) ids.push(eos);
      if (!this.addEos && has) ids.pop();
    }
    return ids;
  }

  decode(ids: number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return ''; // the library throws on an empty list
    return this.tok.decode(ids, { skip_special_tokens: skipSpecialTokens });
  }

  tokenId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Renders the chat template (`add_generation_prompt` as transformers' apply_chat_template). */
  applyChatTemplate(messages: ChatMessage[], options: { addGenerationPrompt?: boolean; extra?: Record<string, unknown> } = {}): string {
    if (!this.template) throw new ChatTemplateError('this model has no chat_template in tokenizer_config.json');
    try {
      return this.template.render({
        messages,
        add_generation_prompt: options.addGenerationPrompt ?? true,
        bos_token: this.bosToken ?? '',
        eos_token: this.eosToken ?? '',
        ...options.extra,
      });
    } catch (e) {
      throw new ChatTemplateError(`chat template failed: ${(e as Error).message}`);
    }
  }
}

function tokenText(t: unknown): string | null {
  if (typeof t === 'string') return t;
  if (t && typeof t === 'object' && typeof (t as { content?: unknown }).content === 'string') return (t as { content: string }).content;
  return null;
}

/** EOS ids: generation_config.json's eos_token_id (int or list), else config.json's. */
export function stopIds(dir: string): number[] {
  for (const f of ['generation_config.json', 'config.json']) {
    const p = join(dir, f);
    if (!existsSync(p)) continue;
    const eos = JSON.parse(readFileSync(p, 'utf8')).eos_token_id;
    if (typeof eos === 'number') return [eos];
    if (Array.isArray(eos)) return eos.filter((x) => typeof x === 'number');
  }
  return [];
}

/**
 * Chat prompts as both the chat endpoint and evaluation jobs build them: the model's chat template, and in
 * reasoning mode an opened thinking block with the budget-forcing parameters, in one of two formats:
 *
 *   think  `<think>` ... `</think>` answer                          (DeepSeek-R1 distills, Qwen3, QwQ)
 *   s1     `<|im_start|>think\n` ... `<|im_start|>answer\n` answer  (s1's format on ChatML models, which need
 *          no special tokens: the paper's Qwen2.5-Math base and every Qwen2.5 Instruct model can think this way)
 *
 * `auto` picks `think` when both tags are single tokens of the vocabulary, else `s1` on a ChatML template.
 */
import type { ChatMessage, ModelTokenizer } from './tokenizer.ts';
import type { ReasoningParams } from './generate.ts';

export const REASONING_FORMATS = ['auto', 'think', 's1'] as const;
export type ReasoningFormat = (typeof REASONING_FORMATS)[number];

export interface ReasoningOptions {
  minThinkingTokens?: number | null;
  maxThinkingTokens?: number | null;
  wait?: number | null;
  format?: ReasoningFormat | null;
}

export class PromptError extends Error {
  readonly param: string;
  constructor(message: string, param: string) {
    super(message);
    this.param = param;
  }
}

const IM_START = '<|im_start|>';

/** The concrete format `requested` means for this tokenizer; a PromptError naming `reasoning_format` if none fits. */
export function reasoningFormat(tok: ModelTokenizer, requested: ReasoningFormat = 'auto'): 'think' | 's1' {
  const think = tok.tokenId('<think>') !== undefined && tok.tokenId('</think>') !== undefined;
  const chatml = tok.tokenId(IM_START) !== undefined && tok.chatTemplateSource.includes(IM_START);
  if (requested === 'think' && !think) throw new PromptError('reasoning_format "think" needs <think> and </think> as single tokens; this tokenizer has neither pair.', 'reasoning_format');
  if (requested === 's1' && !chatml) throw new PromptError(`reasoning_format "s1" needs a ChatML chat template (${IM_START} ... as a single token); this model has none.`, 'reasoning_format');
  if (requested !== 'auto') return requested;
  if (think) return 'think';
  if (chatml) return 's1';
  throw new PromptError(
    `reasoning mode is unavailable for this model: reasoning_format "auto" needs <think> / </think> tokens (format "think") or a ChatML chat template (format "s1"), and this model has neither.`,
    'reasoning_format',
  );
}

/** vLLM's chat extensions: how the template is rendered. */
export interface TemplateOptions {
  /** End with the assistant's header (default true). */
  addGenerationPrompt?: boolean;
  /** Leave the final (assistant) message open, so that generation continues it. */
  continueFinalMessage?: boolean;
  /** Extra variables for the template (e.g. Qwen3's `enable_thinking`). */
  kwargs?: Record<string, unknown>;
}

export function chatPrompt(
  tok: ModelTokenizer,
  messages: ChatMessage[],
  reasoning?: ReasoningOptions,
  opts: TemplateOptions = {},
): { ids: number[]; reasoning?: ReasoningParams; format?: 'think' | 's1' } {
  let text: string;
  try {
    text = tok.applyChatTemplate(messages, { addGenerationPrompt: opts.continueFinalMessage ? false : (opts.addGenerationPrompt ?? true), extra: opts.kwargs });
  } catch (e) {
    throw new PromptError((e as Error).message, 'messages');
  }
  if (opts.continueFinalMessage) {
    // As vLLM does: the rendered conversation is cut right after the final message's content.
    const last = messages.at(-1)!;
    const at = text.lastIndexOf(last.content);
    if (last.role !== 'assistant' || !last.content || at < 0)
      throw new PromptError('continue_final_message needs a final assistant message with content, which the chat template renders', 'continue_final_message');
    text = text.slice(0, at + last.content.length);
  }
  if (!reasoning) return { ids: tok.encode(text) };
  const format = reasoningFormat(tok, reasoning.format ?? 'auto');
  let endIds: number[];
  if (format === 'think') {
    endIds = [tok.tokenId('</think>')!];
    // Open the thinking block unless the template already did.
    if (!text.trimEnd().endsWith('<think>')) text += '<think>\n';
  } else {
    // s1 opens thinking right after the assistant header; the answer delimiter is a header of its own.
    endIds = tok.encode(`${IM_START}answer\n`);
    text += `${IM_START}think\n`;
  }
  return {
    ids: tok.encode(text),
    format,
    reasoning: { endIds, waitIds: tok.encode('Wait'), minTokens: reasoning.minThinkingTokens ?? 0, maxTokens: reasoning.maxThinkingTokens ?? null, wait: reasoning.wait ?? 1 },
  };
}

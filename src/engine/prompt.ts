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
  constructor(
    message: string,
    readonly param: string,
  ) {
    super(message);
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

export function chatPrompt(tok: ModelTokenizer, messages: ChatMessage[], reasoning?: ReasoningOptions): { ids: number[]; reasoning?: ReasoningParams; format?: 'think' | 's1' } {
  let text: string;
  try {
    text = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
  } catch (e) {
    throw new PromptError((e as Error).message, 'messages');
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

/**
 * Chat prompts as both the chat endpoint and evaluation jobs build them: the model's chat template, and in
 * reasoning mode an opened thinking block with the budget-forcing parameters.
 */
import type { ChatMessage, ModelTokenizer } from './tokenizer.ts';
import type { ReasoningParams } from './generate.ts';

export interface ReasoningOptions {
  minThinkingTokens?: number | null;
  maxThinkingTokens?: number | null;
  wait?: number | null;
}

export class PromptError extends Error {
  constructor(
    message: string,
    readonly param: string,
  ) {
    super(message);
  }
}

export function chatPrompt(tok: ModelTokenizer, messages: ChatMessage[], reasoning?: ReasoningOptions): { ids: number[]; reasoning?: ReasoningParams } {
  let text: string;
  try {
    text = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
  } catch (e) {
    throw new PromptError((e as Error).message, 'messages');
  }
  if (!reasoning) return { ids: tok.encode(text) };
  const endId = tok.tokenId('</think>');
  if (endId === undefined || tok.tokenId('<think>') === undefined) throw new PromptError("This model's tokenizer has no <think> / </think> tokens; reasoning mode is unavailable.", 'mode');
  // Open the thinking block unless the template already did.
  if (!text.trimEnd().endsWith('<think>')) text += '<think>\n';
  return {
    ids: tok.encode(text),
    reasoning: { endId, waitIds: tok.encode('Wait'), minTokens: reasoning.minThinkingTokens ?? 0, maxTokens: reasoning.maxThinkingTokens ?? null, wait: reasoning.wait ?? 1 },
  };
}

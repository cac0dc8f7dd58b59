/**
 * Evaluation: a JSONL set (`{id, prompt | messages, answer}` per line) run under a view with generation
 * settings (greedy by default; reasoning mode with budget forcing optional). Answers are extracted
 * (`\boxed{}`, "final answer is", last number) and normalised; the summary has the columns of the paper's
 * Table 1 (accuracy, average generated tokens), and each item its output, extracted answer and, if asked,
 * its level. The same code runs behind the server's job endpoint and `sfn eval`; only the backend differs.
 */
import { z } from 'zod';
import { mapLimit, type EngineClient } from './engine-client.ts';
import { chatPrompt, type ReasoningOptions } from '../engine/prompt.ts';
import type { ModelTokenizer } from '../engine/tokenizer.ts';
import { judge } from './judge.ts';
import { answerMatches, DEFAULT_THRESHOLDS, type Level, type LevelThresholds } from './levels.ts';
import { jsonFault } from '../util/json.ts';

export const EvalItem = z.object({
  id: z.union([z.string(), z.number()]).transform(String),
  prompt: z.string().optional(),
  messages: z.array(z.object({ role: z.enum(['system', 'user', 'assistant']), content: z.string() })).optional(),
  answer: z.union([z.string(), z.number()]).transform(String),
});
export type EvalItem = z.infer<typeof EvalItem>;

export class EvalDataError extends Error {}

/** Parses a JSONL set; an error names the line. */
export function parseJsonl(text: string): EvalItem[] {
  const items: EvalItem[] = [];
  const ids = new Set<string>();
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch (e) {
      throw new EvalDataError(`line ${i + 1}: ${jsonFault(e)}`);
    }
    items.push(checkItem(raw, `line ${i + 1}`, ids));
  });
  if (!items.length) throw new EvalDataError('the set has no items');
  return items;
}

export function checkItem(raw: unknown, where: string, ids: Set<string>): EvalItem {
  const r = EvalItem.safeParse(raw);
  if (!r.success) throw new EvalDataError(`${where}: ${r.error.issues[0].path.join('.') || 'item'}: ${r.error.issues[0].message}`);
  if ((r.data.prompt === undefined) === (r.data.messages === undefined)) throw new EvalDataError(`${where}: give exactly one of "prompt" and "messages"`);
  if (ids.has(r.data.id)) throw new EvalDataError(`${where}: duplicate id "${r.data.id}"`);
  ids.add(r.data.id);
  return r.data;
}

export interface EvalSettings {
  maxTokens: number;
  temperature: number;
  seed?: number;
  /** Render prompts with the chat template (default) or feed `prompt` as plain text. */
  chat: boolean;
  reasoning?: ReasoningOptions;
  /** Also score each output's level under the intact backbone (two scoring passes per item). */
  levels: boolean;
  thresholds?: LevelThresholds;
  /** Items generated at once (they batch together). */
  concurrency: number;
}

export interface ItemResult {
  id: string;
  answer: string;
  output: string;
  reasoning: string | null;
  extracted: string | null;
  correct: boolean;
  tokens: number;
  finish_reason: string;
  level?: { level: Level; reason: string; metrics: unknown };
}

export interface EvalSummary {
  items: number;
  accuracy: number;
  avg_generated_tokens: number;
  avg_reasoning_chars: number | null;
  levels: Record<Level, number> | null;
}

/** Runs a set on `views.run`; levels are scored on `views.scorer` (the intact backbone, or the view itself). */
export async function runEval<V>(
  items: EvalItem[],
  tok: ModelTokenizer,
  client: EngineClient<V>,
  views: { run: V; scorer: V },
  s: EvalSettings,
  progress: (done: number, total: number, last: ItemResult) => void = () => {},
): Promise<{ summary: EvalSummary; results: ItemResult[] }> {
  let done = 0;
  // `concurrency` items at a time: they batch together in the scheduler.
  const results = await mapLimit(items, s.concurrency, async (item) => {
    const messages = item.messages ?? [{ role: 'user', content: item.prompt! }];
    const { ids, reasoning } = s.chat || s.reasoning ? chatPrompt(tok, messages, s.reasoning) : { ids: tok.encodePrompt(item.prompt!), reasoning: undefined };
    const g = await client.generate(views.run, ids, { maxTokens: s.maxTokens, temperature: s.temperature, seed: s.seed, reasoning });
    const m = answerMatches(g.content, item.answer);
    const r: ItemResult = {
      id: item.id,
      answer: item.answer,
      output: g.content,
      reasoning: s.reasoning ? g.reasoning : null,
      extracted: m.extracted,
      correct: m.matched,
      tokens: g.ids.length,
      finish_reason: g.finish,
    };
    if (s.levels) r.level = await judge(tok, (c, a) => client.score(views.scorer, c, a), ids, { ids: g.contentIds, text: g.content }, item.answer, s.thresholds ?? DEFAULT_THRESHOLDS);
    progress(++done, items.length, r);
    return r;
  });
  const levels = s.levels ? (Object.fromEntries((['I', 'II', 'III', 'IV'] as Level[]).map((l) => [l, results.filter((r) => r.level!.level === l).length])) as Record<Level, number>) : null;
  return {
    summary: {
      items: results.length,
      accuracy: results.filter((r) => r.correct).length / results.length,
      avg_generated_tokens: results.reduce((a, r) => a + r.tokens, 0) / results.length,
      avg_reasoning_chars: s.reasoning ? results.reduce((a, r) => a + (r.reasoning?.length ?? 0), 0) / results.length : null,
      levels,
    },
    results,
  };
}

export function resultsJsonl(results: ItemResult[]): string {
  return results.map((r) => JSON.stringify(r)).join('\n') + '\n';
}

/**
 * Probes: prompts run greedily through an intact and an altered view (a merge, a destruction), each output
 * judged with levels I-IV. The prompts' encoding is the one every stethoscope uses: a chat template for
 * `messages`, transformers' `tokenizer(text)` (BOS included where the tokenizer adds one) for `prompt`.
 */
import { z } from 'zod';
import { chatPrompt } from '../engine/prompt.ts';
import type { ModelTokenizer } from '../engine/tokenizer.ts';
import { judge } from './judge.ts';
import { mapLimit, type EngineClient } from './engine-client.ts';
import type { Level, LevelThresholds } from './levels.ts';

/** Prompts judged at once by one request: enough to fill a decode batch, few enough for the queue's bound. */
const PROBE_CONCURRENCY = 8;

export const ProbePrompt = z.strictObject({
  prompt: z.string().optional(),
  messages: z.array(z.strictObject({ role: z.enum(['system', 'user', 'assistant']), content: z.string() })).optional(),
  answer: z.string().optional().describe('The expected answer: level IV needs it matched.'),
});
export type ProbePrompt = z.infer<typeof ProbePrompt>;

/** Which model scores an output's NLL and PMI: the intact backbone (default), or the view that produced it. */
export const SCORERS = ['backbone', 'view'] as const;
export type ScorerChoice = (typeof SCORERS)[number];

export class ProbeError extends Error {
  readonly param: string;
  constructor(message: string, param: string) {
    super(message);
    this.param = param;
  }
}

export function probeIds(tok: ModelTokenizer, p: ProbePrompt, where: string): number[] {
  if ((p.prompt === undefined) === (p.messages === undefined)) throw new ProbeError(`${where}: give exactly one of "prompt" and "messages"`, where);
  return p.messages ? chatPrompt(tok, p.messages).ids : tok.encodePrompt(p.prompt!);
}

export interface JudgedOutput {
  text: string;
  finish_reason: string;
  level: Level;
  reason: string;
  metrics: unknown;
}

/** One greedy output of `view`, judged on `scorer`. */
export async function probeOne<V>(
  client: EngineClient<V>,
  tok: ModelTokenizer,
  view: V,
  scorer: V,
  promptIds: number[],
  answer: string | undefined,
  maxTokens: number,
  thresholds: LevelThresholds,
): Promise<JudgedOutput> {
  const g = await client.generate(view, promptIds, { maxTokens, temperature: 0 });
  const v = await judge(tok, (c, a) => client.score(scorer, c, a), promptIds, { ids: g.contentIds, text: g.content }, answer, thresholds);
  return { text: g.content, finish_reason: g.finish, level: v.level, reason: v.reason, metrics: v.metrics };
}

/** Each prompt through the intact and the altered view, both outputs judged; `label` names the altered side. */
export async function compareViews<V>(
  client: EngineClient<V>,
  tok: ModelTokenizer,
  views: { intact: V; altered: V },
  prompts: ProbePrompt[],
  opts: { maxTokens: number; thresholds: LevelThresholds; scorer: ScorerChoice; label: string },
): Promise<Record<string, unknown>[]> {
  const ids = prompts.map((p, i) => probeIds(tok, p, `prompts.${i}`));
  return mapLimit(prompts, PROBE_CONCURRENCY, async (p, i) => {
    const [a, b] = await Promise.all([
      probeOne(client, tok, views.intact, views.intact, ids[i], p.answer, opts.maxTokens, opts.thresholds),
      probeOne(client, tok, views.altered, opts.scorer === 'view' ? views.altered : views.intact, ids[i], p.answer, opts.maxTokens, opts.thresholds),
    ]);
    return { index: i, intact: a, [opts.label]: b };
  });
}

/** A text to judge: the prompt it answers, the output, and optionally the expected answer. */
export const LevelItem = ProbePrompt.extend({ output: z.string() });
export type LevelItem = z.infer<typeof LevelItem>;

/** A level item with a human's verdict, for calibration. */
export const LabelledItem = LevelItem.extend({ label: z.enum(['I', 'II', 'III', 'IV']), source: z.string().optional() });

/** Judges given outputs (produced anywhere) exactly as probes and evaluations judge their own, on `scorer`. */
export async function judgeItems<V>(
  client: EngineClient<V>,
  tok: ModelTokenizer,
  scorer: V,
  items: LevelItem[],
  thresholds: LevelThresholds,
): Promise<{ level: Level; reason: string; metrics: unknown }[]> {
  const ids = items.map((it, i) => probeIds(tok, it, `items.${i}`));
  return mapLimit(items, PROBE_CONCURRENCY, async (it, i) => {
    const v = await judge(tok, (c, a) => client.score(scorer, c, a), ids[i], { ids: tok.encode(it.output), text: it.output }, it.answer, thresholds);
    return { level: v.level, reason: v.reason, metrics: v.metrics };
  });
}

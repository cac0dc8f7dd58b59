/**
 * Judging one output with levels I-IV: the metrics of `levels.ts` computed for a prompt and its output under a
 * scoring model. Probes, evaluation jobs, table jobs and the levels endpoint all judge through `judge`, so an
 * output gets the same level whichever of them produced or received it.
 */
import type { ModelTokenizer } from '../engine/tokenizer.ts';
import { answerMatches, DEFAULT_THRESHOLDS, level, nllAndPmi, repetition, type LevelThresholds, type LevelVerdict } from './levels.ts';

/** Log-probabilities of `continuation` after `context` under the scoring model, one per continuation token. */
export type Scorer = (context: number[], continuation: number[]) => Promise<number[]>;

/**
 * The context PMI compares against: the model's document start (BOS) where it has one, else its EOS, i.e.
 * "no prompt" as the model saw documents begin in training.
 */
export function neutralContext(tok: ModelTokenizer): number[] {
  const bos = tok.bosToken === null ? undefined : tok.tokenId(tok.bosToken);
  return [bos ?? tok.eosIds[0] ?? 0];
}

export interface Judged {
  /** The output's token ids (the answer channel only, in reasoning mode). */
  ids: number[];
  text: string;
}

export async function judge(
  tok: ModelTokenizer,
  score: Scorer,
  promptIds: number[],
  output: Judged,
  answer: string | null | undefined,
  thresholds: LevelThresholds = DEFAULT_THRESHOLDS,
): Promise<LevelVerdict> {
  const [withPrompt, without] = output.ids.length ? await Promise.all([score(promptIds, output.ids), score(neutralContext(tok), output.ids)]) : [[], []];
  const { nll, pmi } = nllAndPmi(withPrompt, without);
  const match = answer == null ? { matched: null, extracted: null } : answerMatches(output.text, answer);
  return level({ tokens: output.ids.length, chars: output.text.length, repetition: repetition(output.ids), nll, pmi, ...match }, thresholds);
}

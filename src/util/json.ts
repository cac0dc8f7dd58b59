/**
 * JSON parse errors in our own words: V8's messages quote the input back ("Unexpected token 'o', "{"a": oo..."
 * is not valid JSON") and change between Node versions, so only the position, where V8 gives one, is kept.
 */
export function jsonFault(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  const at = /at position (\d+)/.exec(message);
  if (at) return `invalid JSON at character ${Number(at[1]) + 1}`;
  if (/end of JSON input|Unterminated/i.test(message)) return 'invalid JSON: it ends early';
  return 'invalid JSON';
}

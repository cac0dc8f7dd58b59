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

/**
 * Counts the objects (`{`) of a JSON text outside its strings, stopping once past `stopAt`: a few milliseconds for
 * megabytes, against hundreds for parsing and validating the same text into objects.
 */
export function countJsonObjects(text: string, stopAt = Number.POSITIVE_INFINITY): number {
  let n = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92)
        i++; // a backslash escapes the next character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 123 && ++n > stopAt) return n;
  }
  return n;
}

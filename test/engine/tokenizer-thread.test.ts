import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { chatPrompt, PromptError } from '../../src/engine/prompt.ts';
import { ModelTokenizer } from '../../src/engine/tokenizer.ts';
import { ContextOverflow, PromptEncoder } from '../../src/engine/tokenizer-thread.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

describe('PromptEncoder: large inputs tokenized in a thread of their own', () => {
  const dir = fixtureDir('A');
  const tok = ModelTokenizer.fromDir(dir);
  // Everything of 100 characters or more goes to the thread.
  const encoder = new PromptEncoder(tok, dir, 100);
  after(() => encoder.close());
  const text = 'The quick brown fox jumps over the lazy dog, and then it rests. '.repeat(20);
  const messages = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: text },
  ];

  it('gives the ids the tokenizer gives in place, for prompts and chats', async () => {
    const before = encoder.offThread;
    assert.deepEqual(await encoder.encodeTexts([text, `${text}!`], true, null), [tok.encodePrompt(text), tok.encodePrompt(`${text}!`)]);
    assert.deepEqual(await encoder.encodeTexts([text], false, 4096), [tok.encode(text)]);
    const chat = await encoder.chatPrompt(messages, undefined, {}, 4096);
    assert.deepEqual(chat.ids, chatPrompt(tok, messages).ids);
    const thinking = await encoder.chatPrompt(messages, { format: 's1', maxThinkingTokens: 8 }, {}, null);
    const inPlace = chatPrompt(tok, messages, { format: 's1', maxThinkingTokens: 8 });
    assert.deepEqual([thinking.ids, thinking.reasoning, thinking.format], [inPlace.ids, inPlace.reasoning, inPlace.format]);
    assert.equal(encoder.offThread - before, 4, 'each of the four went through the thread');
  });

  it('decodes long id lists in the thread, as the tokenizer does in place', async () => {
    const ids = tok.encode(text);
    const before = encoder.offThread;
    assert.equal(await encoder.decode(ids, false), tok.decode(ids, false));
    assert.equal(await encoder.decode([...ids, ...tok.encode('<|im_end|>')], true), tok.decode([...ids, ...tok.encode('<|im_end|>')], true));
    assert.equal(encoder.offThread - before, 2);
    assert.equal(await encoder.decode(ids.slice(0, 3), false), tok.decode(ids.slice(0, 3), false), 'a short list in place');
    assert.equal(encoder.offThread - before, 2);
  });

  it('encodes small inputs in place', async () => {
    const before = encoder.offThread;
    assert.deepEqual(await encoder.encodeTexts(['Hello'], true, null), [tok.encodePrompt('Hello')]);
    assert.equal(encoder.offThread, before);
  });

  it("brings the thread's errors back as the classes the routes catch", async () => {
    // A 70 KB text of ~15,000 tokens against a context of 1000: refused from a count in pieces.
    const long = 'The quick brown fox jumps over the lazy dog. '.repeat(1600);
    await assert.rejects(encoder.encodeTexts(['short enough to fit', long], true, 1000), (e) => e instanceof ContextOverflow && e.index === 1 && e.atLeast > 1000);
    await assert.rejects(encoder.chatPrompt([{ role: 'user', content: long }], undefined, {}, 1000), ContextOverflow);
    const open = [{ role: 'user', content: text }];
    await assert.rejects(encoder.chatPrompt(open, undefined, { continueFinalMessage: true }, null), (e) => e instanceof PromptError && e.param === 'continue_final_message');
  });

  it('fails the waiting callers when the thread dies, and starts a new one for the next input', async () => {
    const pending = encoder.encodeTexts([text.repeat(200)], true, null);
    const closing = encoder.close();
    // Asked before the old thread has exited: it goes to a new thread, and the old one's end does not fail it.
    const next = encoder.encodeTexts([text], true, null);
    await closing;
    await assert.rejects(pending, /tokenizer thread exited/);
    assert.deepEqual(await next, [tok.encodePrompt(text)]);
  });

  it('templates a chat of many short messages in the thread too (templating costs per message)', async () => {
    const standard = new PromptEncoder(tok, dir);
    try {
      const many = Array.from({ length: 300 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: 'hi' }));
      assert.deepEqual((await standard.chatPrompt(many, undefined, {}, null)).ids, chatPrompt(tok, many).ids);
      assert.equal(standard.offThread, 1, '300 messages of 2 characters: off the HTTP thread');
      await standard.chatPrompt(many.slice(0, 10), undefined, {}, null);
      assert.equal(standard.offThread, 1, 'ten: in place');
    } finally {
      await standard.close();
    }
  });
});

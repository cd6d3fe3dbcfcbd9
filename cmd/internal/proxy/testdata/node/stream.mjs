// The official Node openai client, its own retries off, streaming one chat
// through llmretry's proxy; continuation_test.go runs it and checks the text
// it accumulated.
import OpenAI from 'openai';

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], stream: true });
let text = '', roles = 0, finishes = 0;
for await (const chunk of stream) {
  const c = chunk.choices[0];
  if (c?.delta?.role) roles++;
  if (c?.finish_reason) finishes++;
  text += c?.delta?.content ?? '';
}
console.log(JSON.stringify({ text, roles, finishes }));

// The official Node openai client, its own retries off, through llmretry's
// proxy: a completion, a stream, and a call with a token the proxy does not
// know. node_test.go runs it and checks what it prints.
import OpenAI from 'openai';

const [baseURL, token, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: token, maxRetries: 0 });
const messages = [{ role: 'user', content: 'hi' }];
const out = {};

const completion = await client.chat.completions.create({ model, messages }).withResponse();
out.complete = {
  text: completion.data.choices[0].message.content,
  model: completion.data.model,
  target: completion.response.headers.get('x-llmretry-target'),
  attempts: completion.response.headers.get('x-llmretry-attempts'),
};

const streamed = await client.chat.completions.create({ model, messages, stream: true }).withResponse();
let text = '';
for await (const chunk of streamed.data) {
  text += chunk.choices[0]?.delta?.content ?? '';
}
out.stream = { text, target: streamed.response.headers.get('x-llmretry-target') };

try {
  await new OpenAI({ baseURL, apiKey: 'not-a-known-client-token', maxRetries: 0 }).chat.completions.create({ model, messages });
  out.unknownClient = 200;
} catch (e) {
  out.unknownClient = e.status ?? String(e);
}

console.log(JSON.stringify(out));

// Playground: streams a chat answer from /v1/chat/completions (SSE) with an
// API key typed here or the key just created on the keys page. The key is
// sent in the request's Authorization header only; it is not stored.

import { api, rememberedKey } from './api.js';
import { h, clear, errorBox, fmt } from './dom.js';

// The `data:` payloads of complete SSE events in `buffer`; the rest waits
// for the next chunk.
function takeEvents(buffer) {
  const events = [];
  let at;
  while ((at = buffer.indexOf('\n\n')) >= 0) {
    const block = buffer.slice(0, at);
    buffer = buffer.slice(at + 2);
    for (const line of block.split('\n')) {
      if (line.startsWith('data: ')) events.push(line.slice(6));
    }
  }
  return { events, rest: buffer };
}

export async function render(main) {
  let models = [];
  try {
    const stats = await api('GET', '/admin/stats?window=60');
    models = stats.models.map((m) => m.id);
  } catch (_) {
    models = [];
  }
  const key = h('input', { id: 'pg-key', type: 'password', placeholder: 'sk-sl-… (empty on an open server)', autocomplete: 'off' });
  if (rememberedKey()) key.value = rememberedKey();
  const model = h('input', { id: 'pg-model', list: 'pg-models', value: models[0] || '' });
  const system = h('textarea', { id: 'pg-system', rows: 2 }, 'You are a concise assistant.');
  const prompt = h('textarea', { id: 'pg-prompt', rows: 4 }, 'Write two sentences about rivers.');
  const maxTokens = h('input', { id: 'pg-max-tokens', type: 'number', min: 1, max: 4096, value: 64 });
  const temperature = h('input', { id: 'pg-temperature', type: 'number', min: 0, max: 2, step: 0.1, value: 0.7 });
  const send = h('button', { id: 'pg-send', type: 'submit' }, 'Send');
  const stopButton = h('button', { id: 'pg-stop', type: 'button', class: 'secondary', disabled: true }, 'Stop');
  const answer = h('div', { id: 'pg-answer', class: 'answer', 'data-state': 'idle', 'data-chunks': '0' });
  const statsLine = h('div', { class: 'stream-stats', id: 'pg-stats' });
  const problem = h('div', { id: 'pg-error' });
  let controller = null;

  const form = h('form', { id: 'pg-form' },
    h('div', { class: 'field' }, h('label', { for: 'pg-key' }, 'API key'), key,
      rememberedKey() ? h('small', {}, 'the key created on the keys page') : null),
    h('div', { class: 'field' }, h('label', { for: 'pg-model' }, 'Model'), model,
      h('datalist', { id: 'pg-models' }, models.map((m) => h('option', { value: m })))),
    h('div', { class: 'field' }, h('label', { for: 'pg-system' }, 'System'), system),
    h('div', { class: 'field' }, h('label', { for: 'pg-prompt' }, 'Message'), prompt),
    h('div', { class: 'grid2' },
      h('div', { class: 'field' }, h('label', { for: 'pg-max-tokens' }, 'Max tokens'), maxTokens),
      h('div', { class: 'field' }, h('label', { for: 'pg-temperature' }, 'Temperature'), temperature)),
    h('div', { class: 'toolbar' }, send, stopButton));

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(problem);
    clear(answer);
    clear(statsLine);
    answer.dataset.state = 'waiting';
    answer.dataset.chunks = '0';
    const text = document.createTextNode('');
    const cursor = h('span', { class: 'cursor' });
    answer.append(text, cursor);
    controller = new AbortController();
    send.disabled = true;
    stopButton.disabled = false;
    const started = performance.now();
    let first = null;
    let chunks = 0;
    let usage = null;
    let finish = null;
    try {
      const headers = { 'content-type': 'application/json' };
      if (key.value.trim()) headers.authorization = `Bearer ${key.value.trim()}`;
      const r = await fetch('/v1/chat/completions', {
        method: 'POST',
        headers,
        signal: controller.signal,
        credentials: 'omit',
        body: JSON.stringify({
          model: model.value.trim(),
          messages: [
            ...(system.value.trim() ? [{ role: 'system', content: system.value }] : []),
            { role: 'user', content: prompt.value },
          ],
          max_tokens: Number(maxTokens.value),
          temperature: Number(temperature.value),
          stream: true,
          stream_options: { include_usage: true },
        }),
      });
      if (!r.ok) {
        const body = await r.json().catch(() => null);
        throw new Error(body && body.error ? `${r.status}: ${body.error.message}` : `${r.status}`);
      }
      answer.dataset.state = 'streaming';
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const taken = takeEvents(buffer + decoder.decode(value, { stream: true }));
        buffer = taken.rest;
        for (const data of taken.events) {
          if (data === '[DONE]') continue;
          const event = JSON.parse(data);
          if (event.error) throw new Error(event.error.message);
          if (event.usage) usage = event.usage;
          const choice = event.choices && event.choices[0];
          if (!choice) continue;
          if (choice.finish_reason) finish = choice.finish_reason;
          const delta = choice.delta && choice.delta.content;
          if (delta) {
            if (first === null) first = performance.now();
            chunks += 1;
            text.appendData(delta);
            answer.dataset.chunks = String(chunks);
          }
        }
      }
      answer.dataset.state = 'done';
    } catch (err) {
      answer.dataset.state = err.name === 'AbortError' ? 'stopped' : 'failed';
      if (err.name !== 'AbortError') problem.append(errorBox(err));
    } finally {
      cursor.remove();
      send.disabled = false;
      stopButton.disabled = true;
      controller = null;
      const total = performance.now() - started;
      clear(statsLine,
        h('span', {}, `first token ${first === null ? '—' : fmt.ms(first - started)}`),
        h('span', {}, `total ${fmt.ms(total)}`),
        h('span', {}, `${chunks} chunks`),
        usage ? h('span', {}, `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`) : null,
        finish ? h('span', {}, `finish: ${finish}`) : null);
    }
  });
  stopButton.addEventListener('click', () => controller && controller.abort());

  main.append(
    h('h1', {}, 'Playground'),
    h('div', { class: 'playground' },
      h('div', { class: 'panel' }, form),
      h('div', { class: 'panel' }, h('h2', {}, 'Answer (streamed)'), answer, statsLine, problem)));
}

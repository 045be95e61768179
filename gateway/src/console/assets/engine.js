// Models and engine state: each local model's KV-cache blocks, running
// (batch) and waiting (queue) sequences, engine steps; and the encoders.
// Refreshes every 2 s.

import { api } from './api.js';
import { h, clear, table, fmt, errorBox } from './dom.js';

function meter(used, total) {
  if (!total) return '—';
  const fill = h('span', {});
  fill.style.width = `${Math.min(100, (100 * used) / total).toFixed(1)}%`;
  return h('div', {}, h('div', { class: 'meter', title: `${used} of ${total} blocks` }, fill),
    h('small', {}, `${fmt.int(used)} / ${fmt.int(total)} blocks (${fmt.pct(used / total)})`));
}

export async function render(main) {
  const body = h('div', { id: 'engine' });
  main.append(h('h1', {}, 'Models & engine'), body);
  async function refresh() {
    try {
      const stats = await api('GET', '/admin/stats?window=60');
      clear(body,
        h('div', { class: 'panel' },
          h('h2', {}, 'Local models'),
          table([
            { label: 'Model', cell: (m) => h('code', {}, m.id) },
            { label: 'State', cell: (m) => h('span', { class: `badge ${m.state === 'ready' ? 'good' : 'warn'}` }, m.state) },
            { label: 'KV cache', cell: (m) => meter(m.kv_blocks_used, m.kv_blocks_total) },
            { label: 'Batch (running)', num: true, cell: (m) => (m.running ?? '—') },
            { label: 'Queue (waiting)', num: true, cell: (m) => (m.waiting ?? '—') },
            { label: 'Max length', num: true, cell: (m) => (m.max_model_len ? fmt.int(m.max_model_len) : '—') },
            { label: 'Steps', num: true, cell: (m) => (m.engine_steps !== undefined ? fmt.int(m.engine_steps) : `${m.layers_loaded ?? 0}/${m.layers_total ?? '?'} layers`) },
            { label: 'Restarts', num: true, cell: (m) => (m.engine_restarts ?? '—') },
          ], stats.models, { id: 'engine-models' })),
        h('div', { class: 'panel' },
          h('h2', {}, 'Encoders (embeddings, guard)'),
          table([
            { label: 'Encoder', cell: (e) => h('code', {}, e.id) },
            { label: 'Kind', cell: (e) => e.kind },
            { label: 'State', cell: (e) => e.state },
            { label: 'Queued', num: true, cell: (e) => (e.queued ?? '—') },
          ], stats.encoders)),
        h('div', { class: 'panel' },
          h('h2', {}, 'Last minute'),
          h('p', {}, `${fmt.int(stats.recent.requests)} requests · ${fmt.rate(stats.recent.per_second)} req/s · p50 ${fmt.ms(stats.recent.latency_ms && stats.recent.latency_ms.p50)}`)));
    } catch (err) {
      clear(body, errorBox(err));
    }
  }
  await refresh();
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}

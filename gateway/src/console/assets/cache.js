// Cache and guard statistics: the cache's settings and its share of each
// model's requests today, and today's guard, defence, PII, stream-stop,
// limit and budget decisions from the audit log.

import { api } from './api.js';
import { h, clear, card, table, fmt, errorBox } from './dom.js';
import { barChart } from './charts.js';

export async function render(main) {
  const body = h('div', { id: 'cache-guard' });
  main.append(h('h1', {}, 'Cache & guard'), body);
  try {
    const stats = await api('GET', '/admin/stats?window=3600');
    const c = stats.cache;
    const today = stats.today.traffic;
    const decisions = stats.decisions_today;
    clear(body,
      h('div', { class: 'cards' },
        card('Cache', c.enabled ? 'on' : 'off', c.enabled ? `${c.semantic ? 'exact + semantic' : 'exact'} · ${c.backend}` : 'enable it in [cache]', 'cache-mode'),
        card('Hit rate today', fmt.pct(today.cache_hit_rate), `${fmt.int(today.cache_hits)} of ${fmt.int(today.requests)} requests`, 'cache-rate'),
        card('Cached prompt tokens', fmt.int(today.cached_tokens), 'prefix reuse reported by engines'),
        card('Entries in process', fmt.int(c.entries_in_process), `${fmt.num(c.bytes_in_process / 1024)} KiB`),
        card('Guard', stats.guard.enabled ? 'on' : 'off', 'local classifier')),
      h('div', { class: 'grid2' },
        h('div', { class: 'panel' },
          h('h2', {}, 'Cache by model, today'),
          table([
            { label: 'Model', cell: (r) => h('code', {}, r.model) },
            { label: 'Requests', num: true, cell: (r) => fmt.int(r.requests) },
            { label: 'Hits', num: true, cell: (r) => fmt.int(r.cache_hits) },
            { label: 'Hit rate', num: true, cell: (r) => fmt.pct(r.requests ? r.cache_hits / r.requests : 0) },
            { label: 'Saved', num: true, cell: (r) => fmt.money(r.saved) },
          ], c.by_model_today, { id: 'cache-models' })),
        h('div', { class: 'panel' },
          h('h2', {}, 'Decisions today'),
          decisions === null
            ? h('p', { class: 'muted' }, 'The audit log is read by admins and auditors only.')
            : h('div', {},
              decisions.length ? barChart({
                data: decisions.map((d) => ({ label: `${d.action.split('.')[0]} ${d.outcome}`, value: d.count })),
                height: 180,
                yFormat: (v) => fmt.num(v),
                title: 'Decisions by layer and outcome',
                alt: true,
              }) : null,
              table([
                { label: 'Layer', cell: (d) => h('code', {}, d.action) },
                { label: 'Outcome', cell: (d) => d.outcome },
                { label: 'Count', num: true, cell: (d) => fmt.int(d.count) },
              ], decisions, { id: 'guard-decisions' })))));
  } catch (err) {
    clear(body, errorBox(err));
  }
}

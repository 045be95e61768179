// Overview: traffic over the last five minutes, spend today, guard blocks
// today, and requests per minute over the last hour. Refreshes every 5 s.

import { api } from './api.js';
import { h, clear, card, fmt, errorBox } from './dom.js';
import { barChart, fillBuckets } from './charts.js';

const BLOCKING = ['guard.decision', 'defence.decision', 'pii.decision'];

export async function render(main) {
  const body = h('div', { id: 'overview' });
  main.append(h('h1', {}, 'Overview'), body);
  async function refresh() {
    try {
      const stats = await api('GET', '/admin/stats?window=300');
      draw(body, stats);
    } catch (err) {
      clear(body, errorBox(err));
    }
  }
  await refresh();
  const timer = setInterval(refresh, 5000);
  return () => clearInterval(timer);
}

function draw(body, stats) {
  const r = stats.recent;
  const today = stats.today.traffic;
  const lat = r.latency_ms;
  const blocks = (stats.decisions_today || [])
    .filter((d) => BLOCKING.includes(d.action) && d.outcome === 'denied')
    .reduce((sum, d) => sum + d.count, 0);
  const refused = (stats.decisions_today || [])
    .filter((d) => d.action === 'limit.refused' || d.action === 'budget.refused')
    .reduce((sum, d) => sum + d.count, 0);
  const now = stats.now;
  const minutes = fillBuckets(stats.per_minute, now - 3600 * 1000, now, 60000);
  clear(body,
    h('div', { class: 'cards' },
      card('Requests / s', fmt.rate(r.per_second), `${fmt.int(r.requests)} in the last 5 min`, 'card-rps'),
      card('Latency p50', fmt.ms(lat && lat.p50), lat ? `p90 ${fmt.ms(lat.p90)} · p99 ${fmt.ms(lat.p99)}` : 'no requests', 'card-latency'),
      card('Cache hit rate', fmt.pct(r.cache_hit_rate), `${fmt.int(r.cache_hits)} hits in 5 min`, 'card-cache'),
      card('Guard blocks today', stats.decisions_today ? fmt.int(blocks) : '—',
        stats.decisions_today ? `${fmt.int(refused)} limit / budget refusals` : 'admins and auditors only', 'card-guard'),
      card('Spend today (UTC)', fmt.money(today.cost), `reference ${fmt.money(today.reference_cost)} · ${fmt.int(today.requests)} requests`, 'card-spend'),
      card('Errors (5 min)', fmt.int(r.errors), `${fmt.int(today.tokens_out)} tokens generated today`, 'card-errors')),
    h('div', { class: 'panel' },
      h('h2', {}, 'Requests per minute, last hour'),
      barChart({
        width: 1200,
        height: 240,
        data: minutes.map((b) => ({ label: fmt.hourMinute(b.start_ms), value: b.requests })),
        yFormat: (v) => fmt.num(v),
        labelEvery: 10,
        title: 'Requests per minute',
      })),
    h('div', { class: 'panel' },
      h('h2', {}, 'Models'),
      h('p', {}, stats.models.map((m) => h('span', { class: `badge ${m.state === 'ready' ? 'good' : 'warn'}` }, `${m.id}: ${m.state}`)))));
}

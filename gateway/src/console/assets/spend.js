// Spend and savings: what was spent against what it would have cost at the
// reference cloud price (cache hits and local models are the savings), as
// cards, a chart over time, and totals per key, team, model or deployment.

import { api } from './api.js';
import { h, clear, card, table, fmt, errorBox } from './dom.js';
import { lineChart, barChart, legend, fillBuckets } from './charts.js';

const RANGES = {
  today: { label: 'Today (UTC)', bucket: 'hour', ms: 86400000, fromMidnight: true },
  '7d': { label: 'Last 7 days', bucket: 'day', ms: 7 * 86400000 },
  '30d': { label: 'Last 30 days', bucket: 'day', ms: 30 * 86400000 },
};
const BUCKET_MS = { hour: 3600000, day: 86400000 };

export async function render(main) {
  const range = h('select', { id: 'spend-range' }, Object.entries(RANGES).map(([v, r]) => h('option', { value: v }, r.label)));
  range.value = '7d';
  const groupBy = h('select', { id: 'spend-group' }, ['model', 'key', 'team', 'deployment'].map((g) => h('option', { value: g }, g)));
  const body = h('div', { id: 'spend' });
  main.append(
    h('h1', {}, 'Spend & savings'),
    h('div', { class: 'toolbar' },
      h('div', { class: 'field' }, h('label', { for: 'spend-range' }, 'Range'), range),
      h('div', { class: 'field' }, h('label', { for: 'spend-group' }, 'Group by'), groupBy),
      h('button', { class: 'secondary', id: 'spend-refresh', onclick: () => load() }, 'Refresh')),
    body);

  async function load() {
    const r = RANGES[range.value];
    const now = Date.now();
    const from = r.fromMidnight ? now - (now % 86400000) : now - r.ms;
    const q = `from=${from}&to=${now}`;
    try {
      const [savings, groups, series] = await Promise.all([
        api('GET', `/admin/spend/savings?${q}`),
        api('GET', `/admin/spend?group_by=${groupBy.value}&${q}`),
        api('GET', `/admin/spend/series?bucket=${r.bucket}&${q}`),
      ]);
      const buckets = fillBuckets(series.data, from, now, BUCKET_MS[r.bucket]);
      const label = r.bucket === 'hour' ? fmt.hourMinute : fmt.day;
      clear(body,
        h('div', { class: 'cards' },
          card('Requests', fmt.int(savings.requests), `${fmt.int(savings.cache_hits.requests)} cache hits · ${fmt.int(savings.local.requests)} local`, 'spend-requests'),
          card('Spent', fmt.money(savings.spent), 'at the serving deployments\u2019 prices', 'spend-spent'),
          card('At the reference price', fmt.money(savings.reference_cost), 'every request sent to the cloud', 'spend-reference'),
          card('Saved', fmt.money(savings.saved), `${fmt.num(savings.saved_pct)}% by cache hits and local models`, 'spend-saved')),
        h('div', { class: 'grid2' },
          h('div', { class: 'panel' },
            h('h2', {}, 'Cost over time'),
            lineChart({
              xs: buckets.map((b) => b.start_ms),
              series: [
                { name: 'spent', values: buckets.map((b) => b.cost) },
                { name: 'reference', values: buckets.map((b) => b.reference_cost), alt: true },
              ],
              xFormat: label,
              yFormat: (v) => fmt.num(v),
              title: 'Spent and reference cost per bucket',
            }),
            legend([{ name: 'spent' }, { name: 'at the reference price', alt: true }])),
          h('div', { class: 'panel' },
            h('h2', {}, 'Requests over time'),
            barChart({
              data: buckets.map((b) => ({ label: label(b.start_ms), value: b.requests })),
              yFormat: (v) => fmt.num(v),
              labelEvery: Math.max(1, Math.ceil(buckets.length / 8)),
              title: 'Requests per bucket',
            }))),
        h('div', { class: 'panel' },
          h('h2', {}, `By ${groupBy.value}`),
          table([
            { label: groupBy.value, cell: (g) => (g.group === null ? h('span', { class: 'muted' }, '(none)') : h('code', {}, g.group)) },
            { label: 'Requests', num: true, cell: (g) => fmt.int(g.requests) },
            { label: 'Tokens in', num: true, cell: (g) => fmt.int(g.tokens_in) },
            { label: 'Tokens out', num: true, cell: (g) => fmt.int(g.tokens_out) },
            { label: 'Cost', num: true, cell: (g) => fmt.money(g.cost) },
          ], groups.data, { id: 'spend-groups' })));
    } catch (err) {
      clear(body, errorBox(err));
    }
  }
  range.addEventListener('change', load);
  groupBy.addEventListener('change', load);
  await load();
}

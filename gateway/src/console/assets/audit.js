// The audit log: newest first, filtered by action family, actor, outcome
// and time, a page at a time.

import { api } from './api.js';
import { h, clear, table, fmt, errorBox } from './dom.js';

const FAMILIES = [
  ['', 'every action'], ['auth.', 'logins and failed keys'], ['key.', 'key changes'],
  ['team.', 'team changes'], ['budget.', 'budgets'], ['limit.', 'limit refusals'],
  ['guard.', 'guard'], ['defence.', 'input defence'], ['pii.', 'PII'], ['stream.', 'stream stops'],
  ['admin.', 'admin refusals'], ['config.', 'config reloads'], ['data.', 'erasures'],
];

function outcomeBadge(outcome) {
  const cls = outcome === 'success' ? 'good' : outcome === 'denied' ? 'warn' : 'bad';
  return h('span', { class: `badge ${cls}` }, outcome);
}

export async function render(main) {
  const action = h('select', { id: 'audit-action', name: 'action' }, FAMILIES.map(([v, l]) => h('option', { value: v }, l)));
  const actor = h('input', { id: 'audit-actor', name: 'actor', placeholder: 'key:abc123, tenant:admin' });
  const outcome = h('select', { id: 'audit-outcome', name: 'outcome' }, ['', 'success', 'denied', 'failure'].map((v) => h('option', { value: v }, v || 'any')));
  const since = h('input', { id: 'audit-from', name: 'from', type: 'date' });
  const form = h('form', { class: 'inline', id: 'audit-filters' },
    h('div', { class: 'field' }, h('label', { for: 'audit-action' }, 'Action'), action),
    h('div', { class: 'field' }, h('label', { for: 'audit-actor' }, 'Actor'), actor),
    h('div', { class: 'field' }, h('label', { for: 'audit-outcome' }, 'Outcome'), outcome),
    h('div', { class: 'field' }, h('label', { for: 'audit-from' }, 'Since (UTC day)'), since),
    h('button', { type: 'submit', id: 'audit-apply' }, 'Filter'));
  const rowsBox = h('div', { id: 'audit-rows' });
  const more = h('button', { class: 'secondary', id: 'audit-more', hidden: true }, 'Older records');
  let records = [];
  let next = null;

  function query(before) {
    const p = new URLSearchParams({ limit: '50' });
    if (action.value) p.set('action', action.value);
    if (actor.value.trim()) p.set('actor', actor.value.trim());
    if (outcome.value) p.set('outcome', outcome.value);
    if (since.value) p.set('from', `${since.value}T00:00:00Z`);
    if (before) p.set('before', String(before));
    return `/admin/audit?${p}`;
  }

  async function load(append) {
    try {
      const page = await api('GET', query(append ? next : null));
      records = append ? records.concat(page.data) : page.data;
      next = page.next_before;
      more.hidden = !next;
      clear(rowsBox, table([
        { label: 'Time (UTC)', cell: (r) => h('span', { class: 'mono' }, fmt.time(r.at_ms)) },
        { label: 'Action', cell: (r) => h('code', {}, r.action) },
        { label: 'Actor', cell: (r) => r.actor },
        { label: 'Target', cell: (r) => r.target || '' },
        { label: 'Outcome', cell: (r) => outcomeBadge(r.outcome) },
        { label: 'Detail', cell: (r) => r.detail || '' },
        { label: 'Source', cell: (r) => r.source || '' },
        { label: '#', num: true, cell: (r) => r.seq },
      ], records, { id: 'audit-table' }));
    } catch (err) {
      clear(rowsBox, errorBox(err));
    }
  }
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    load(false);
  });
  more.addEventListener('click', () => load(true));
  main.append(h('h1', {}, 'Audit log'), h('div', { class: 'panel' }, form), h('div', { class: 'panel' }, rowsBox, more));
  await load(false);
}

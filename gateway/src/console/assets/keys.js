// Keys and budgets: list virtual keys, create one (its secret shown once),
// rotate and revoke; list budgets with what is spent, set one. Changing
// buttons appear only for admins and team admins; the server checks the
// role again on every call.

import { api, currentSession, rememberKey } from './api.js';
import { h, clear, table, fmt, errorBox } from './dom.js';

function keyState(k) {
  const now = Date.now();
  if (k.blocked) return h('span', { class: 'badge bad' }, 'blocked');
  if (k.revoke_at && k.revoke_at <= now) return h('span', { class: 'badge bad' }, 'revoked');
  if (k.expires_at && k.expires_at <= now) return h('span', { class: 'badge bad' }, 'expired');
  if (k.revoke_at) return h('span', { class: 'badge warn' }, `ends ${fmt.time(k.revoke_at)}`);
  return h('span', { class: 'badge good' }, 'active');
}

function numberOrNull(value) {
  const v = String(value).trim();
  return v === '' ? null : Number(v);
}

export async function render(main) {
  const session = currentSession();
  const canChange = session && session.can_change_keys;
  const notice = h('div', { id: 'key-notice' });
  const keysBox = h('div', { id: 'keys-table' });
  const budgetsBox = h('div', { id: 'budgets-table' });

  async function loadKeys() {
    try {
      const list = await api('GET', '/admin/keys');
      const active = list.data.filter((k) => !(k.revoke_at && k.revoke_at <= Date.now()));
      clear(keysBox, table([
        { label: 'Prefix', cell: (k) => h('code', {}, k.prefix) },
        { label: 'Name', cell: (k) => k.name || '' },
        { label: 'Tenant / team', cell: (k) => `${k.tenant}${k.team ? ` / ${k.team}` : ''}` },
        { label: 'Roles', cell: (k) => k.roles.map((r) => h('span', { class: 'badge' }, r)) },
        { label: 'Models', cell: (k) => (k.allowed_models ? k.allowed_models.join(', ') : 'all') },
        { label: 'RPM / TPM', cell: (k) => `${k.rpm ?? '∞'} / ${k.tpm ?? '∞'}` },
        { label: 'State', cell: keyState },
        { label: 'Created', cell: (k) => fmt.time(k.created_at) },
        { label: '', cell: (k) => (canChange && !(k.revoke_at && k.revoke_at <= Date.now()) ? h('span', {},
          h('button', { class: 'secondary', 'data-action': 'rotate', 'data-prefix': k.prefix, onclick: () => rotate(k) }, 'Rotate'), ' ',
          h('button', { class: 'danger', 'data-action': 'revoke', 'data-prefix': k.prefix, onclick: () => revoke(k) }, 'Revoke')) : '') },
      ], list.data.map((k) => ({ ...k, attrs: { 'data-prefix': k.prefix } })), { id: 'keys' }),
      h('p', { class: 'muted' }, `${active.length} active of ${list.data.length} keys.`));
    } catch (err) {
      clear(keysBox, errorBox(err));
    }
  }

  async function loadBudgets() {
    try {
      const list = await api('GET', '/admin/budgets');
      clear(budgetsBox, table([
        { label: 'Budget', cell: (b) => h('code', {}, b.id) },
        { label: 'Period', cell: (b) => b.period },
        { label: 'Amount', num: true, cell: (b) => `${fmt.money(b.amount)} ${b.currency}` },
        { label: 'Spent', num: true, cell: (b) => fmt.money(b.spent) },
        { label: 'Reserved', num: true, cell: (b) => fmt.money(b.reserved) },
        { label: 'Used', cell: (b) => h('div', { class: 'meter', title: fmt.pct(b.spent / b.amount) },
          h('span', { class: 'fill', 'data-pct': Math.min(100, (100 * b.spent) / b.amount).toFixed(1) })) },
      ], list.data));
      for (const fill of budgetsBox.querySelectorAll('.meter .fill')) fill.style.width = `${fill.dataset.pct}%`;
    } catch (err) {
      clear(budgetsBox, errorBox(err));
    }
  }

  function showSecret(title, key) {
    rememberKey(key);
    clear(notice, h('div', { class: 'secret', id: 'new-secret' },
      h('strong', {}, title),
      h('span', { class: 'muted' }, ' — shown once: copy it now. The store keeps only its digest.'),
      h('code', { id: 'new-secret-value' }, key),
      h('button', { class: 'secondary', onclick: () => navigator.clipboard && navigator.clipboard.writeText(key) }, 'Copy'), ' ',
      h('a', { href: '#playground' }, 'Try it in the playground')));
  }

  async function rotate(k) {
    if (!confirm(`Rotate ${k.prefix}? The old key stops working after the grace period.`)) return;
    try {
      const rotated = await api('POST', `/admin/keys/${encodeURIComponent(k.prefix)}/rotate`, { grace_seconds: 3600 });
      showSecret(`New key for ${k.name || k.prefix} (the old one works for one more hour)`, rotated.key);
      await loadKeys();
    } catch (err) {
      clear(notice, errorBox(err));
    }
  }

  async function revoke(k) {
    if (!confirm(`Revoke ${k.prefix} now?`)) return;
    try {
      await api('DELETE', `/admin/keys/${encodeURIComponent(k.prefix)}`);
      clear(notice, h('p', { class: 'notice' }, `Revoked ${k.prefix}.`));
      await loadKeys();
    } catch (err) {
      clear(notice, errorBox(err));
    }
  }

  const form = h('form', { class: 'inline', id: 'create-key' },
    h('div', { class: 'field' }, h('label', { for: 'key-name' }, 'Name'), h('input', { id: 'key-name', name: 'name', placeholder: 'e.g. billing-service' })),
    h('div', { class: 'field' }, h('label', { for: 'key-team' }, 'Team'), h('input', { id: 'key-team', name: 'team', value: session && session.team && !session.roles.includes('admin') ? session.team : '' })),
    h('div', { class: 'field' }, h('label', { for: 'key-role' }, 'Role'), h('select', { id: 'key-role', name: 'role' },
      ['user', 'service', 'team_admin', 'auditor', 'admin'].map((r) => h('option', { value: r }, r)))),
    h('div', { class: 'field' }, h('label', { for: 'key-models' }, 'Models (comma-separated, empty: all)'), h('input', { id: 'key-models', name: 'models' })),
    h('div', { class: 'field' }, h('label', { for: 'key-rpm' }, 'RPM'), h('input', { id: 'key-rpm', name: 'rpm', type: 'number', min: 1, size: 6 })),
    h('div', { class: 'field' }, h('label', { for: 'key-tpm' }, 'TPM'), h('input', { id: 'key-tpm', name: 'tpm', type: 'number', min: 1, size: 8 })),
    h('button', { type: 'submit', id: 'create-key-button' }, 'Create key'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const models = String(data.get('models')).split(',').map((m) => m.trim()).filter(Boolean);
    const body = {
      name: String(data.get('name')).trim() || null,
      team: String(data.get('team')).trim() || null,
      roles: [String(data.get('role'))],
      allowed_models: models.length ? models : null,
      rpm: numberOrNull(data.get('rpm')),
      tpm: numberOrNull(data.get('tpm')),
    };
    try {
      const created = await api('POST', '/admin/keys', body);
      showSecret(`Key ${created.prefix} created`, created.key);
      form.reset();
      await loadKeys();
    } catch (err) {
      clear(notice, errorBox(err));
    }
  });

  const budgetForm = h('form', { class: 'inline', id: 'set-budget' },
    h('div', { class: 'field' }, h('label', { for: 'budget-scope' }, 'Scope'), h('select', { id: 'budget-scope', name: 'scope' },
      ['key', 'team', 'tenant'].map((v) => h('option', { value: v }, v)))),
    h('div', { class: 'field' }, h('label', { for: 'budget-target' }, 'Key prefix, team or tenant'), h('input', { id: 'budget-target', name: 'target', required: true })),
    h('div', { class: 'field' }, h('label', { for: 'budget-amount' }, 'Amount'), h('input', { id: 'budget-amount', name: 'amount', type: 'number', min: 0.01, step: 0.01, required: true })),
    h('div', { class: 'field' }, h('label', { for: 'budget-period' }, 'Period'), h('select', { id: 'budget-period', name: 'period' },
      ['day', 'month', 'calendar_month'].map((v) => h('option', { value: v }, v)))),
    h('button', { type: 'submit' }, 'Set budget'));
  budgetForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = new FormData(budgetForm);
    try {
      await api('POST', '/admin/budgets', {
        scope: data.get('scope'), target: String(data.get('target')).trim(),
        amount: Number(data.get('amount')), period: data.get('period'),
      });
      budgetForm.reset();
      await loadBudgets();
    } catch (err) {
      clear(notice, errorBox(err));
    }
  });

  main.append(
    h('h1', {}, 'Keys & budgets'),
    notice,
    canChange ? h('div', { class: 'panel' }, h('h2', {}, 'New virtual key'), form) : h('p', { class: 'notice' }, 'Your role reads keys and budgets; it cannot change them.'),
    h('div', { class: 'panel' }, h('h2', {}, 'Virtual keys'), keysBox),
    h('div', { class: 'panel' }, h('h2', {}, 'Budgets'), canChange ? budgetForm : null, h('div', { class: 'spacer' }), budgetsBox));
  await Promise.all([loadKeys(), loadBudgets()]);
}

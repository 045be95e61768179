// Small DOM helpers: elements are built with textContent, never innerHTML,
// so text from the server (key names, audit details) is never markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function card(label, value, sub, id) {
  return h('div', { class: 'card', id },
    h('div', { class: 'label' }, label),
    h('div', { class: 'value' }, value),
    sub ? h('div', { class: 'sub' }, sub) : null);
}

export function table(columns, rows, attrs = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', attrs,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.num ? 'num' : null }, c.label)))),
      h('tbody', {}, rows.length === 0
        ? h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, 'Nothing yet.'))
        : rows.map((row) => h('tr', row.attrs || {},
          columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.cell(row))))))));
}

export function errorBox(err) {
  return h('p', { class: 'error', role: 'alert' }, err && err.message ? err.message : String(err));
}

const integer = new Intl.NumberFormat('en', { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat('en', { maximumFractionDigits: 2 });
const money = new Intl.NumberFormat('en', { minimumFractionDigits: 2, maximumFractionDigits: 4 });
const small = new Intl.NumberFormat('en', { maximumSignificantDigits: 2 });

export const fmt = {
  int: (n) => integer.format(n || 0),
  num: (n) => decimal.format(n || 0),
  // A rate below 1 keeps two significant digits (1 request in 5 min is 0.0033/s, not 0).
  rate: (n) => (n > 0 && n < 1 ? small.format(n) : decimal.format(n || 0)),
  money: (n) => money.format(n || 0),
  pct: (x) => `${decimal.format((x || 0) * 100)}%`,
  ms: (n) => (n === null || n === undefined ? '—' : `${integer.format(n)} ms`),
  time: (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : '—'),
  day: (ms) => new Date(ms).toISOString().slice(5, 10),
  hourMinute: (ms) => new Date(ms).toISOString().slice(11, 16),
};

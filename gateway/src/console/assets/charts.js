// Charts as SVG, drawn here: a bar chart and a line chart with a y axis,
// grid lines and x labels. Colours come from classes in console.css.

const SVG_NS = 'http://www.w3.org/2000/svg';

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// The smallest 1, 2 or 5 times a power of ten at or above x.
function niceCeil(x) {
  if (!(x > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

function frame({ width, height, max, yFormat, title }) {
  const m = { left: 62, right: 12, top: 14, bottom: 26 };
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img' });
  if (title) svg.append(s('title', {}, title));
  const plotH = height - m.top - m.bottom;
  const y = (v) => m.top + plotH - (v / max) * plotH;
  for (let i = 0; i <= 4; i += 1) {
    const v = (max * i) / 4;
    svg.append(s('line', { class: i === 0 ? 'axis' : 'grid', x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }));
    svg.append(s('text', { x: m.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, yFormat(v)));
  }
  return { svg, m, y, plotW: width - m.left - m.right };
}

// data: [{label, value}]; alt: draw with the second colour.
export function barChart({ data, width = 640, height = 220, yFormat = String, title, alt = false, labelEvery = 1 }) {
  const max = niceCeil(Math.max(0, ...data.map((d) => d.value)));
  const { svg, m, y, plotW } = frame({ width, height, max, yFormat, title });
  const step = plotW / Math.max(1, data.length);
  const barW = Math.max(1, step * 0.7);
  data.forEach((d, i) => {
    const x = m.left + i * step + (step - barW) / 2;
    const top = y(d.value);
    const bar = s('rect', { class: alt ? 'bar alt' : 'bar', x, y: top, width: barW, height: Math.max(0, y(0) - top), rx: 2 });
    bar.append(s('title', {}, `${d.label}: ${yFormat(d.value)}`));
    svg.append(bar);
    if (i % labelEvery === 0) {
      svg.append(s('text', { x: x + barW / 2, y: height - 8, 'text-anchor': 'middle' }, d.label));
    }
  });
  return svg;
}

// xs: bucket starts; series: [{name, values, alt}].
export function lineChart({ xs, series, width = 640, height = 240, yFormat = String, xFormat = String, title, labels = 6 }) {
  const all = series.flatMap((se) => se.values);
  const max = niceCeil(Math.max(0, ...all));
  const { svg, m, y, plotW } = frame({ width, height, max, yFormat, title });
  const n = xs.length;
  const x = (i) => m.left + (n <= 1 ? plotW / 2 : (i / (n - 1)) * plotW);
  const every = Math.max(1, Math.ceil(n / labels));
  xs.forEach((v, i) => {
    if (i % every === 0) svg.append(s('text', { x: x(i), y: height - 8, 'text-anchor': 'middle' }, xFormat(v)));
  });
  for (const se of series) {
    const cls = se.alt ? ' alt' : '';
    const points = se.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    svg.append(s('polyline', { class: `line${cls}`, points }));
    se.values.forEach((v, i) => {
      const dot = s('circle', { class: `dot${cls}`, cx: x(i), cy: y(v), r: n > 40 ? 1.5 : 3 });
      dot.append(s('title', {}, `${se.name} ${xFormat(xs[i])}: ${yFormat(v)}`));
      svg.append(dot);
    });
  }
  return svg;
}

export function legend(items) {
  const el = document.createElement('div');
  el.className = 'legend';
  for (const item of items) {
    const span = document.createElement('span');
    const swatch = document.createElement('i');
    if (item.alt) swatch.className = 'alt';
    span.append(swatch, item.name);
    el.append(span);
  }
  return el;
}

// Fills the buckets the server left out (no requests) with zeros.
export function fillBuckets(data, from, to, bucketMs) {
  const byStart = new Map(data.map((b) => [b.start_ms, b]));
  const out = [];
  for (let t = Math.floor(from / bucketMs) * bucketMs; t < to; t += bucketMs) {
    out.push(byStart.get(t) || { start_ms: t, requests: 0, cache_hits: 0, tokens_in: 0, tokens_out: 0, cost: 0, reference_cost: 0 });
  }
  return out;
}

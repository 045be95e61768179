// The console's shell: loads the session, shows who is logged in, and
// renders the page named by the URL's hash. Each page is a module with
// `render(main)`, which may return a function that stops its refresh.

import { loadSession } from './api.js';
import { clear, errorBox } from './dom.js';
import * as overview from './overview.js';
import * as keys from './keys.js';
import * as spend from './spend.js';
import * as audit from './audit.js';
import * as cache from './cache.js';
import * as engine from './engine.js';
import * as playground from './playground.js';

const pages = { overview, keys, spend, audit, cache, engine, playground };
let stop = null;

async function show() {
  const name = location.hash.slice(1) || 'overview';
  const page = pages[name] || overview;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.page === name);
  }
  if (stop) stop();
  stop = null;
  const main = document.getElementById('main');
  clear(main);
  main.dataset.page = name;
  main.dataset.ready = 'false';
  try {
    stop = (await page.render(main)) || null;
  } catch (err) {
    main.append(errorBox(err));
  }
  // The browser tests wait for this before they look.
  main.dataset.ready = 'true';
}

async function start() {
  try {
    const session = await loadSession();
    document.getElementById('who').textContent = `${session.actor} · ${session.roles.join(', ')}`;
  } catch (err) {
    return;
  }
  window.addEventListener('hashchange', show);
  await show();
}

start();

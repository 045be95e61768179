// The admin API through the session cookie. The page never sees the admin
// key; changes carry the session's CSRF token.

let session = null;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function loadSession() {
  const r = await fetch('/ui/session', { credentials: 'same-origin' });
  if (r.status === 401) {
    location.assign('/ui/login');
    throw new ApiError(401, 'Not logged in.');
  }
  session = await r.json();
  return session;
}

export function currentSession() {
  return session;
}

export async function api(method, path, body) {
  const headers = {};
  if (method !== 'GET' && session) headers['x-sluice-csrf'] = session.csrf;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (r.status === 401) location.assign('/ui/login');
  if (!r.ok) {
    const message = data && data.error && data.error.message ? data.error.message : `${r.status} ${text}`;
    throw new ApiError(r.status, message);
  }
  return data;
}

// A key minted in this page (shown once), offered to the playground. Kept
// in this module's memory only: never in storage, gone on reload.
let lastKey = null;
export function rememberKey(key) {
  lastKey = key;
}
export function rememberedKey() {
  return lastKey;
}

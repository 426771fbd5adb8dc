/* The console's JSON API client (GET only; the session cookie goes along same-origin). */
/* global location */

export class ApiError extends Error {
  /** `body`: the error answer as sent (some carry more than `error`, e.g. the fleet's 503). */
  constructor(status, message, body = {}) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** GET /-/api/<path>?<params>; empty values are left out. */
export async function get(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const qs = q.toString();
  const res = await fetch(`/-/api/${path}${qs ? `?${qs}` : ''}`, { headers: { accept: 'application/json' } });
  if (res.status === 401) {
    // The session ended (token rotated, cookie cleared): the page itself shows the sign-in form.
    location.reload();
    throw new ApiError(401, 'not signed in');
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, body.error ?? `HTTP ${res.status}`, body);
  return body;
}

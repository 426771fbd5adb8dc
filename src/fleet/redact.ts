/**
 * The fleet Postgres URL carries a password (issue 14: "password never logged"). Every place that
 * prints the URL, or an error that may quote it, goes through these.
 */

/** `postgres://user:secret@host/db` → `postgres://user:***@host/db`; unparsable → `postgres://***`. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    // A password may also ride in the query string (`?password=`).
    if (u.searchParams.has('password')) u.searchParams.set('password', '***');
    return u.toString();
  } catch {
    return 'postgres://***';
  }
}

/** Removes the URL's password (raw and URL-decoded) from any text, e.g. a driver's error message. */
export function redactSecret(text: string, url: string): string {
  let password: string;
  try {
    const u = new URL(url);
    password = u.password !== '' ? u.password : (u.searchParams.get('password') ?? '');
  } catch {
    return text.split(url).join('postgres://***');
  }
  let out = text.split(url).join(redactUrl(url));
  if (password === '') return out;
  for (const p of new Set([password, safeDecode(password)])) if (p !== '') out = out.split(p).join('***');
  return out;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

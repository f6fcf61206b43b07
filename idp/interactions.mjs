// Approvers' sign-in: the authorization-code flow's interaction pages,
// for the first-party clients named in FIRST_PARTY_CLIENTS (the approval
// service). GET /interaction/<uid> shows a username and password form;
// POST /interaction/<uid>/login checks it (approvers.mjs) and, when it
// matches, ends the interaction with the approver signed in and consent
// given: the approver's name becomes the ID token's `sub`.
//
// Which interaction a request belongs to comes from oidc-provider's
// interaction cookie (signed, HttpOnly, SameSite=Lax, its path this very
// page), never from the URL alone: a page whose uid is not the browser's
// own shows nothing, and another site cannot post the form for a visitor.
// Agents (client credentials) never come here. A client known by its
// metadata document (cimd.mjs) gets the same form, every time (a session
// does not carry over to it): the password is the person's consent to
// tell that client their name. What the provider itself is set up with
// lives in server.mjs.

import { checkPassword } from './approvers.mjs';

// Same answer for an unknown name and a wrong password: the page does not
// tell which names exist.
const WRONG = 'wrong username or password';
const FORM_LIMIT = 16 * 1024;

/**
 * The first-party clients from FIRST_PARTY_CLIENTS (a JSON array of client
 * metadata) as oidc-provider static clients: confidential, authorization
 * code only, scope `openid`. Throws on anything else, so a typo cannot turn
 * a first-party client into an agent or a public client.
 */
export function firstPartyClients(text) {
  let list;
  try {
    list = JSON.parse(text);
  } catch {
    list = undefined;
  }
  if (!Array.isArray(list)) throw new Error('must be a JSON array of client metadata');
  return list.map((m, i) => {
    const at = `client ${i}`;
    if (!m || typeof m !== 'object' || typeof m.client_id !== 'string' || m.client_id === '') {
      throw new Error(`${at}: client_id is missing`);
    }
    if (typeof m.client_secret !== 'string' || m.client_secret.length < 16) {
      throw new Error(`${at}: client_secret must be at least 16 characters`);
    }
    const client = {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      // Only `openid` can be asked for, the one scope consent is given for.
      scope: 'openid',
      ...m,
    };
    const exactly = (k, v) => JSON.stringify(client[k]) === JSON.stringify(v);
    // Client credentials on a first-party client would mint it agent tokens.
    if (!exactly('grant_types', ['authorization_code']) || !exactly('response_types', ['code'])) {
      throw new Error(`${at}: grant_types must be ["authorization_code"] and response_types ["code"]`);
    }
    if (client.token_endpoint_auth_method !== 'client_secret_basic') {
      throw new Error(`${at}: token_endpoint_auth_method must be client_secret_basic`);
    }
    if (client.scope !== 'openid') throw new Error(`${at}: scope must be openid`);
    return client;
  });
}

/** `text` safe in HTML content and in double-quoted attribute values. */
export function escapeHtml(text) {
  return String(text).replace(/[&<>"'`]/g, (c) => `&#${c.charCodeAt(0)};`);
}

const HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  // No script, no style, no frame: nothing to inject into, nothing to
  // overlay (the form cannot be framed for clickjacking).
  'content-security-policy': "default-src 'none'; base-uri 'none'; frame-ancestors 'none'",
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'x-content-type-options': 'nosniff',
};

function html(res, status, title, body) {
  res.writeHead(status, HEADERS).end(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body><h1>${escapeHtml(title)}</h1>
${body}
</body></html>
`);
}

function notice(res, status, text) {
  html(res, status, 'Sign-in', `<p>${escapeHtml(text)}</p>`);
}

function form(res, status, { uid, client, thirdParty, username = '', error = '' }) {
  const intro = thirdParty
    ? `Signing in tells ${escapeHtml(client)} your name.`
    : `Approvers sign in here for ${escapeHtml(client)}.`;
  html(res, status, thirdParty ? 'Sign in' : 'Sign in to approve', `<p>${intro}</p>
${error ? `<p role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<p><label>Username <input name="username" autocomplete="username" required value="${escapeHtml(username)}"></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>
<p><button type="submit">Sign in</button></p>
</form>`);
}

async function readForm(req) {
  if (!/^application\/x-www-form-urlencoded\b/i.test(req.headers['content-type'] ?? '')) return undefined;
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > FORM_LIMIT) return undefined;
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// Consent for a first-party client: the `openid` scope and nothing else
// (its metadata allows no other). `grantId` extends the session's grant;
// without it a new one is made (after a login: a grant of whoever was
// signed in before must not carry over).
async function grantOpenid(provider, clientId, accountId, grantId) {
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId, clientId });
  if (!grant || grant.accountId !== accountId || grant.clientId !== clientId) return undefined;
  grant.addOIDCScope('openid');
  return grant.save();
}

// Anything asked beyond `openid` is refused, not granted in silence.
function asksOnlyOpenid(details) {
  const missing = details.prompt.details ?? {};
  const more = (missing.missingOIDCScope ?? []).filter((s) => s !== 'openid');
  return !more.length && !missing.missingOIDCClaims?.length
    && !Object.keys(missing.missingResourceScopes ?? {}).length;
}

const refuse = (provider, req, res, description) => provider.interactionFinished(
  req,
  res,
  { error: 'access_denied', error_description: description },
  { mergeWithLastSubmission: false },
);

/**
 * Serves /interaction/...: `firstParty` is the Set of first-party client
 * ids, `isCimd` tells a client_id naming a metadata document, `approvers`
 * what loadApprovers returned.
 */
export async function interaction(provider, { approvers, firstParty, isCimd = () => false }, req, res) {
  const m = /^\/interaction\/([A-Za-z0-9_-]{1,64})(\/login)?$/.exec(req.url.split('?')[0]);
  if (!m) {
    notice(res, 404, 'No such page.');
    return;
  }
  const [, uid, login] = m;
  const method = login ? 'POST' : 'GET';
  if (req.method !== method) {
    res.setHeader('allow', method);
    notice(res, 405, `Use ${method} here.`);
    return;
  }
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch {
    details = undefined;
  }
  if (details?.uid !== uid) {
    notice(res, 400, 'This sign-in has expired or was started in another browser: go back to the page that sent you here.');
    return;
  }
  const clientId = details.params.client_id;
  const thirdParty = !firstParty.has(clientId) && isCimd(clientId);
  if (!firstParty.has(clientId) && !thirdParty) {
    // A registered client that asked for the code flow: approvers do not
    // sign in to it, and it gets no consent.
    await refuse(provider, req, res, 'approvers sign in only for first-party clients');
    return;
  }
  if (details.prompt.name === 'consent' && !thirdParty) {
    // Signed in already (the provider's session): consent only.
    const accountId = details.session?.accountId;
    const grantId = asksOnlyOpenid(details) && accountId
      && (await grantOpenid(provider, clientId, accountId, details.grantId));
    if (!grantId) await refuse(provider, req, res, 'only the openid scope is granted');
    else await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  if (details.prompt.name !== 'login' && !(thirdParty && details.prompt.name === 'consent')) {
    await refuse(provider, req, res, 'unsupported interaction');
    return;
  }
  if (thirdParty && !asksOnlyOpenid(details)) {
    await refuse(provider, req, res, 'only the openid scope is granted');
    return;
  }
  if (!login) {
    form(res, 200, { uid, client: clientId, thirdParty });
    return;
  }
  const fields = await readForm(req);
  const username = fields?.get('username') ?? '';
  const password = fields?.get('password') ?? '';
  if (!(await checkPassword(approvers, username, password))) {
    form(res, 401, { uid, client: clientId, thirdParty, username, error: WRONG });
    return;
  }
  const grantId = await grantOpenid(provider, clientId, username);
  if (!grantId) {
    await refuse(provider, req, res, 'only the openid scope is granted');
    return;
  }
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: username }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

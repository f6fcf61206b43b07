// Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-
// document, what MCP clients use instead of registering): a client_id
// that is an https URL names the client's metadata, fetched from there.
//
// The provider fetches a URL a stranger chose, so the fetch is fenced:
// - only https (plain http only with CIMD_ALLOW_PRIVATE=1, for tests);
// - no private, loopback, link-local or otherwise special address, checked
//   on the address actually connected to (after DNS resolution, so a name
//   resolving to 127.0.0.1 or rebinding to it is refused), unless
//   CIMD_ALLOW_PRIVATE=1;
// - GET with Accept: application/json, 2 s in all, 5 KB at most, no
//   redirect followed (a 3xx is a refusal);
// - the document must be a JSON object whose client_id is the URL itself,
//   with redirect_uris, a public or private_key_jwt client (no shared
//   secret), authorization code only.
// Documents are cached per their Cache-Control max-age (or Expires),
// between 30 s and an hour; a failure is not cached. What such a client may
// do once known (people sign in to it, it gets no access token for the
// gateway) is server.mjs's and interactions.mjs's business.

import { lookup as dnsLookup } from 'node:dns';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { BlockList, isIP } from 'node:net';

const MAX_BYTES = 5 * 1024;
const TIMEOUT_MS = 2000;
const CACHE_MIN_S = 30;
const CACHE_MAX_S = 3600;
const CACHE_ENTRIES = 200;

// Special-use ranges (RFC 6890 and successors): nothing a public client's
// metadata lives at.
const blocked = new BlockList();
for (const [net, bits] of [['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8],
  ['169.254.0.0', 16], ['172.16.0.0', 12], ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.168.0.0', 16],
  ['198.18.0.0', 15], ['198.51.100.0', 24], ['203.0.113.0', 24], ['224.0.0.0', 4], ['240.0.0.0', 4]]) {
  blocked.addSubnet(net, bits, 'ipv4');
}
for (const [net, bits] of [['::', 128], ['::1', 128], ['::ffff:0:0', 96], ['64:ff9b::', 96],
  ['100::', 64], ['2001::', 23], ['2001:db8::', 32], ['2002::', 16], ['fc00::', 7], ['fe80::', 10],
  ['ff00::', 8]]) {
  blocked.addSubnet(net, bits, 'ipv6');
}

/** Whether `address` (an IP literal) is one no document may be fetched from. */
export function isPrivateAddress(address) {
  const family = isIP(address);
  if (family === 0) return true;
  if (family === 6) {
    // An IPv4-mapped address is judged as the IPv4 address it is.
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped) return blocked.check(mapped[1], 'ipv4');
    return blocked.check(address, 'ipv6');
  }
  return blocked.check(address, 'ipv4');
}

class Refused extends Error {}

const allowPrivate = () => process.env.CIMD_ALLOW_PRIVATE === '1';

/**
 * Whether `id` is a client_id naming a metadata document: an https URL
 * (http too when private addresses are allowed) in its normal form, with
 * a path, without credentials or fragment.
 */
export function isCimdId(id) {
  if (typeof id !== 'string' || id.length > 2048) return false;
  const url = URL.parse(id);
  if (!url || url.href !== id || url.username || url.password || url.hash) return false;
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && allowPrivate())) return false;
  return url.pathname !== '/' || url.search !== '';
}

// Resolves a name and refuses it when any of its addresses is special:
// the connection is made to what this returns, so no second resolution
// can swap in another address.
function guardedLookup(hostname, options, callback) {
  dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err) return callback(err);
    if (!addresses.length || addresses.some((a) => isPrivateAddress(a.address))) {
      return callback(new Refused('the host resolves to a private or special address'));
    }
    if (options?.all) return callback(null, addresses);
    return callback(null, addresses[0].address, addresses[0].family);
  });
}

function fetchDocument(id) {
  const url = new URL(id);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const guard = !allowPrivate();
  if (guard && isIP(host) && isPrivateAddress(host)) {
    return Promise.reject(new Refused('the host is a private or special address'));
  }
  return new Promise((resolve, reject) => {
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(url, {
      method: 'GET',
      headers: { accept: 'application/json', 'user-agent': 'agentplane-idp' },
      ...(guard ? { lookup: guardedLookup } : {}),
      // Its own connection: a pooled one could have been made to an
      // address judged under other rules.
      agent: false,
    });
    const timer = setTimeout(() => req.destroy(new Refused('no complete answer within 2 s')), TIMEOUT_MS);
    const done = (f, v) => {
      clearTimeout(timer);
      f(v);
    };
    req.on('error', (e) => done(reject, e instanceof Refused ? e : new Refused('the document could not be fetched')));
    req.on('response', (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        req.destroy(new Refused(res.statusCode >= 300 && res.statusCode < 400
          ? 'redirects are not followed' : `the answer was ${res.statusCode}`));
        return;
      }
      if (Number(res.headers['content-length'] ?? 0) > MAX_BYTES) {
        req.destroy(new Refused('the document is over 5 KB'));
        return;
      }
      const chunks = [];
      let size = 0;
      res.on('data', (chunk) => {
        size += chunk.length;
        if (size > MAX_BYTES) req.destroy(new Refused('the document is over 5 KB'));
        else chunks.push(chunk);
      });
      res.on('end', () => {
        if (size <= MAX_BYTES) done(resolve, { body: Buffer.concat(chunks).toString('utf8'), headers: res.headers });
      });
      res.on('error', () => {});
    });
    req.end();
  });
}

// Seconds to keep a document: max-age, else Expires, within bounds.
function cacheSeconds(headers) {
  let s;
  const m = /(?:^|,)\s*max-age\s*=\s*(\d+)/i.exec(headers['cache-control'] ?? '');
  if (m) s = Number(m[1]);
  else if (headers.expires && !Number.isNaN(Date.parse(headers.expires))) {
    s = Math.floor((Date.parse(headers.expires) - Date.now()) / 1000);
  }
  return Math.max(CACHE_MIN_S, Math.min(CACHE_MAX_S, s ?? CACHE_MIN_S));
}

// The metadata oidc-provider gets: what a public sign-in client needs and
// nothing else, so a document cannot slip in agent attributes (team,
// permissions) or grants.
const PASSED = ['client_name', 'client_uri', 'logo_uri', 'policy_uri', 'tos_uri', 'redirect_uris',
  'post_logout_redirect_uris', 'application_type', 'token_endpoint_auth_method',
  'token_endpoint_auth_signing_alg', 'jwks', 'jwks_uri'];

function validate(id, text) {
  let doc;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new Refused('the document is not JSON');
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw new Refused('the document is not a JSON object');
  if (doc.client_id !== id) throw new Refused('the document\'s client_id is not its URL');
  if ('client_secret' in doc || 'client_secret_expires_at' in doc) throw new Refused('the document holds a client_secret');
  if (!Array.isArray(doc.redirect_uris) || !doc.redirect_uris.length
    || !doc.redirect_uris.every((u) => typeof u === 'string')) {
    throw new Refused('the document has no redirect_uris');
  }
  const method = doc.token_endpoint_auth_method ?? 'none';
  if (method !== 'none' && method !== 'private_key_jwt') {
    throw new Refused('token_endpoint_auth_method must be none or private_key_jwt');
  }
  const grants = doc.grant_types ?? ['authorization_code'];
  if (!Array.isArray(grants) || !grants.includes('authorization_code')
    || !grants.every((g) => g === 'authorization_code' || g === 'refresh_token')) {
    throw new Refused('grant_types must be authorization_code (and refresh_token)');
  }
  const responses = doc.response_types ?? ['code'];
  if (JSON.stringify(responses) !== '["code"]') throw new Refused('response_types must be ["code"]');
  const metadata = { client_id: id, token_endpoint_auth_method: method, grant_types: grants, response_types: ['code'], scope: 'openid' };
  for (const k of PASSED) if (k in doc && !(k in metadata)) metadata[k] = doc[k];
  return metadata;
}

const cache = new Map();
const pending = new Map();

async function load(id) {
  const { body, headers } = await fetchDocument(id);
  const metadata = validate(id, body);
  if (cache.size >= CACHE_ENTRIES) cache.delete(cache.keys().next().value);
  cache.set(id, { metadata, until: Date.now() + cacheSeconds(headers) * 1000 });
  return metadata;
}

/**
 * The client metadata a CIMD client_id names, or undefined when it cannot
 * be fetched or is not valid (the client is then unknown: invalid_client).
 * One fetch at a time per URL; callers of the same URL share it.
 */
export async function resolveCimd(id) {
  const hit = cache.get(id);
  if (hit && hit.until > Date.now()) return hit.metadata;
  cache.delete(id);
  let p = pending.get(id);
  if (!p) {
    p = load(id).finally(() => pending.delete(id));
    pending.set(id, p);
  }
  try {
    return await p;
  } catch (e) {
    // The URL is the client's public name; the reason is ours. No body.
    console.error(`client metadata document ${id} refused: ${e instanceof Refused ? e.message : 'fetch failed'}`);
    return undefined;
  }
}

// agentplane's identity provider: oidc-provider (OpenID Certified) set up
// for agents, as the seed uses Auth0.
//
// - client credentials grant, JWT access tokens signed RS256, the audience
//   bound by an RFC 8707 resource indicator: `resource=<uri>` gets a token
//   whose `aud` is that URI, for the gateway's audience (AUDIENCE, also
//   the default without `resource`) and each URI in RESOURCES; any other
//   resource is refused (invalid_target);
// - the seed's claims from the client's registered metadata: `permissions`,
//   `scope`, and the namespaced agent_type, team and environment;
// - dynamic client registration (RFC 7591) behind an initial access
//   token, handing out no registration access token: RFC 7592 management
//   would let an agent rewrite its own registration, its grants included;
// - approvers (people, from APPROVERS_FILE) sign in with a password at
//   /interaction/<uid> in an authorization-code flow with PKCE (S256),
//   for the first-party clients in FIRST_PARTY_CLIENTS only, consent given
//   for them; ID tokens RS256 with `sub` the approver's name
//   (interactions.mjs, approvers.mjs);
// - the administrator's routes, with ADMIN_TOKEN (none without it):
//   `PUT /admin/clients/<id>`
//   changes an agent's attributes, `DELETE /admin/clients/<id>` deletes
//   it, `POST /admin/keys/publish` then `/admin/keys/sign` rotate the
//   signing key; JWKS at /jwks;
// - RFC 8693 token exchange for the clients in EXCHANGE_CLIENTS
//   (token_exchange.mjs);
// - Client ID Metadata Documents: a client_id that is an https URL is
//   fetched and validated (cimd.mjs), for people signing in to MCP clients;
// - RFC 9207: `iss` in every authorization response (oidc-provider's own).
//
// Environment: ISSUER (default http://127.0.0.1:<port>), BIND_ADDRESS (the
// address to listen on, default 127.0.0.1), PORT (0: any; the port is
// printed as `listening <port>`), AUDIENCE, RESOURCES (a JSON array of the
// services' resource URIs, e.g. '["https://gw.example.com/tickets-mcp/mcp"]':
// the `resource_uri`s the gateway advertises), INITIAL_ACCESS_TOKEN (registers
// agents), ADMIN_TOKEN (everything under /admin; must differ from the other;
// unset, /admin refuses everyone),
// CLAIMS_NAMESPACE (default https://mcp.example.com/), TOKEN_TTL (s, 300),
// DATA_FILE (where registrations persist across restarts, mode 0600: it
// holds every client secret; without it they live in memory and a restart
// forgets every agent), APPROVERS_FILE (JSON: name -> {"password_scrypt":
// "<salt hex>:<hash hex>"}; hash_password.mjs makes one), ALLOW_PLAIN_PASSWORDS
// (1: {"password": ...} too, for tests), FIRST_PARTY_CLIENTS (a JSON array of
// client metadata: client_id, client_secret, redirect_uris; each needs the
// other's variable), EXCHANGE_CLIENTS (a JSON array of the clients allowed
// the token exchange: token_exchange.mjs), CIMD_ALLOW_PRIVATE (1: client
// metadata documents from private addresses and plain http, for tests).

import { createHash, generateKeyPairSync, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider, { errors } from 'oidc-provider';
import { loadApprovers } from './approvers.mjs';
import { isCimdId, resolveCimd } from './cimd.mjs';
import { firstPartyClients, interaction } from './interactions.mjs';
import { exchangeClients, registerTokenExchange, unauthorizedClient } from './token_exchange.mjs';

const env = process.env;
const host = env.BIND_ADDRESS || '127.0.0.1';
const port = Number(env.PORT ?? 0);
const audience = env.AUDIENCE ?? 'https://mcp.example.com/';
const iat = env.INITIAL_ACCESS_TOKEN;
const adminToken = env.ADMIN_TOKEN || undefined;
if (!iat) {
  console.error('INITIAL_ACCESS_TOKEN is required');
  process.exit(2);
}
// Whoever onboards agents (a pipeline, the compose demo agent) holds the
// initial access token; it must not also rotate keys or rewrite agents.
if (iat === adminToken) {
  console.error('INITIAL_ACCESS_TOKEN and ADMIN_TOKEN must differ');
  process.exit(2);
}
// The resources a token can be issued for, compared exactly as the client
// sends them: the gateway's metadata advertises each service's URI and
// the gateway checks `aud` against that same string.
function parseResources(text) {
  let list;
  try {
    list = JSON.parse(text);
  } catch {
    list = undefined;
  }
  if (!Array.isArray(list)) return 'must be a JSON array of URIs';
  for (const r of list) {
    // RFC 8707 §2: an absolute URI without a fragment; agentplane's
    // resource_uri is an http(s) URL without query or fragment.
    const url = typeof r === 'string' ? URL.parse(r) : null;
    if (!url || !['https:', 'http:'].includes(url.protocol) || r.includes('#') || r.includes('?')) {
      return `${JSON.stringify(r)} is not an http(s) URI without query or fragment`;
    }
  }
  return list;
}
const resources = parseResources(env.RESOURCES ?? '[]');
if (typeof resources === 'string') {
  console.error(`RESOURCES ${resources}`);
  process.exit(2);
}
const known = new Set([audience, ...resources]);
// Approvers sign in only to first-party clients, so one without the other
// is a configuration mistake, refused rather than half working.
if (!env.APPROVERS_FILE !== !env.FIRST_PARTY_CLIENTS) {
  console.error('APPROVERS_FILE and FIRST_PARTY_CLIENTS go together');
  process.exit(2);
}
let approvers = new Map();
let firstParty = [];
try {
  if (env.APPROVERS_FILE) approvers = loadApprovers(env.APPROVERS_FILE, env.ALLOW_PLAIN_PASSWORDS === '1');
} catch (e) {
  console.error(`APPROVERS_FILE ${e.message}`);
  process.exit(2);
}
try {
  if (env.FIRST_PARTY_CLIENTS) firstParty = firstPartyClients(env.FIRST_PARTY_CLIENTS);
} catch (e) {
  console.error(`FIRST_PARTY_CLIENTS ${e.message}`);
  process.exit(2);
}
const firstPartyIds = new Set(firstParty.map((c) => c.client_id));
let exchange = new Map();
try {
  if (env.EXCHANGE_CLIENTS) exchange = exchangeClients(env.EXCHANGE_CLIENTS);
} catch (e) {
  console.error(`EXCHANGE_CLIENTS ${e.message}`);
  process.exit(2);
}
if ([...exchange.keys()].some((id) => firstPartyIds.has(id))) {
  console.error('EXCHANGE_CLIENTS and FIRST_PARTY_CLIENTS share a client_id');
  process.exit(2);
}
// Clients whose metadata is configured, not registered: /admin leaves them be.
const configured = (id) => firstPartyIds.has(id) || exchange.has(id);
// Sign-in clients (first-party, or named by a metadata document) get no
// access token for the gateway: they sign people in, they call no service.
const signInOnly = (id) => firstPartyIds.has(id) || isCimdId(id);
// Signs the provider's cookies (the interaction cookie binds a login form
// to the browser that started it); one per process, kept across key
// rotations, which build a new provider.
const cookieKeys = [randomBytes(32).toString('base64url')];
const ns = env.CLAIMS_NAMESPACE ?? 'https://mcp.example.com/';
const ttl = Number(env.TOKEN_TTL ?? 300);

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };
}

// The agent attributes a registration carries; they become token claims.
// `may_act` (RFC 8693 §4.4) names who may act for the agent in a token
// exchange: {"sub": "<client_id>"} or a list of such objects.
const AGENT_FIELDS = ['agent_type', 'team', 'environment', 'permissions', 'workload_id', 'may_act'];

// Thrown as oidc-provider's own error, a registration with bad attributes
// is a 400 invalid_client_metadata, not a server error.
function validate(key, value) {
  if (value === undefined) return;
  if (key === 'may_act') {
    const parties = Array.isArray(value) ? value : [value];
    if (!parties.length || parties.length > 32 || !parties.every((p) => p && typeof p === 'object' && !Array.isArray(p)
      && typeof p.sub === 'string' && p.sub.length > 0 && p.sub.length <= 256
      && Object.keys(p).every((k) => k === 'sub' || (k === 'iss' && typeof p.iss === 'string')))) {
      throw new errors.InvalidClientMetadata('may_act must be an object with sub (and iss), or a list of them');
    }
  } else if (key === 'permissions') {
    if (!Array.isArray(value) || !value.every((p) => typeof p === 'string' && /^[\x21-\x7e]+$/.test(p))) {
      throw new errors.InvalidClientMetadata('permissions must be an array of strings without spaces');
    }
  } else if (typeof value !== 'string' || value.length === 0 || value.length > 256) {
    throw new errors.InvalidClientMetadata(`${key} must be a non-empty string`);
  }
}

// Storage shared by every provider instance of this process (a key
// rotation builds a new one), with registrations (the Client model) kept
// in DATA_FILE when set, so a restart keeps every registered agent.
const store = new Map();
const dataFile = env.DATA_FILE;
if (dataFile && existsSync(dataFile)) {
  // It holds client secrets: a file from an older version may be readable
  // by others until its first rewrite, so tighten it now.
  chmodSync(dataFile, 0o600);
  for (const [k, v] of Object.entries(JSON.parse(readFileSync(dataFile, 'utf8')))) store.set(k, v);
}
function persist() {
  if (!dataFile) return;
  const clients = Object.fromEntries([...store].filter(([k]) => k.startsWith('Client:')));
  const tmp = `${dataFile}.tmp`;
  // A fresh file ('wx') is created 0600; an existing one (left by a crash,
  // or planted) would keep its own mode, so it goes first.
  rmSync(tmp, { force: true });
  writeFileSync(tmp, JSON.stringify(clients), { mode: 0o600, flag: 'wx' });
  renameSync(tmp, dataFile);
}

class Adapter {
  constructor(name) {
    this.name = name;
  }
  key(id) {
    return `${this.name}:${id}`;
  }
  async upsert(id, payload, expiresIn) {
    const exp = expiresIn ? Date.now() + expiresIn * 1000 : undefined;
    store.set(this.key(id), { payload, exp });
    if (payload.grantId) {
      const g = `grant:${payload.grantId}`;
      store.set(g, [...(store.get(g) ?? []), this.key(id)]);
    }
    if (this.name === 'Client') persist();
  }
  async find(id) {
    // Exchange clients come from the environment (never written to
    // DATA_FILE); a URL client_id from its metadata document.
    if (this.name === 'Client' && exchange.has(id)) return exchange.get(id).metadata;
    if (this.name === 'Client' && isCimdId(id)) return resolveCimd(id);
    const e = store.get(this.key(id));
    if (!e) return undefined;
    if (e.exp && e.exp < Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return e.payload;
  }
  async findByUid(uid) {
    for (const [k, e] of store) if (k.startsWith(`${this.name}:`) && e.payload?.uid === uid) return e.payload;
    return undefined;
  }
  async findByUserCode(code) {
    for (const [k, e] of store) if (k.startsWith(`${this.name}:`) && e.payload?.userCode === code) return e.payload;
    return undefined;
  }
  async consume(id) {
    const e = store.get(this.key(id));
    if (e) e.payload.consumed = Math.floor(Date.now() / 1000);
  }
  async destroy(id) {
    store.delete(this.key(id));
    if (this.name === 'Client') persist();
  }
  async revokeByGrantId(grantId) {
    for (const k of store.get(`grant:${grantId}`) ?? []) store.delete(k);
    store.delete(`grant:${grantId}`);
  }
}

async function start(keys, server) {
  const issuer = env.ISSUER ?? `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    jwks: { keys },
    adapter: Adapter,
    clients: firstParty,
    // Approvers, by name; nobody else signs in.
    findAccount: (_ctx, id) => (approvers.has(id) ? { accountId: id, claims: () => ({ sub: id }) } : undefined),
    // Every authorization-code request carries a PKCE challenge (S256, the
    // only method this provider knows).
    pkce: { required: () => true },
    cookies: { keys: cookieKeys },
    // Ten minutes to sign in; an approver's sign-in is good for an hour
    // (then the password again), its consent as long.
    ttl: { Interaction: 600, Session: 3600, Grant: 3600 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // No registration access token and no RFC 7592 management: with
      // them a client PUTs its own metadata, its permissions and team
      // included. Changes go through /admin/clients (ADMIN_TOKEN).
      registration: { enabled: true, initialAccessToken: iat, issueRegistrationAccessToken: false },
      registrationManagement: { enabled: false },
      // RFC 8707: one resource per client-credentials request (the
      // provider refuses several), its URI the token's `aud`.
      resourceIndicators: {
        enabled: true,
        // Without `resource`: the gateway's audience, as before services
        // had their own. A first-party client gets no access token for the
        // gateway: it signs approvers in, it does not call services.
        defaultResource: (_ctx, client) => (signInOnly(client.clientId) ? undefined : audience),
        // Authorization-code and refresh flows (unused here) keep the
        // resource the grant was for.
        useGrantedResource: () => true,
        getResourceServerInfo: async (_ctx, resource, client) => {
          if (!known.has(resource) || signInOnly(client.clientId)) {
            // Not echoed: error_description allows only a narrow character set.
            throw new errors.InvalidTarget('not a resource this provider issues tokens for');
          }
          return {
            // The client may ask for any permission it was registered with.
            scope: (client.permissions ?? []).join(' '),
            audience: resource,
            accessTokenTTL: ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    extraClientMetadata: {
      properties: AGENT_FIELDS,
      validator: (_ctx, key, value) => validate(key, value),
    },
    extraTokenClaims: async (ctx, token) => {
      const client = ctx.oidc.client ?? (await ctx.oidc.provider.Client.find(token.clientId));
      if (!client) return undefined;
      const claims = { permissions: client.permissions ?? [] };
      if (client.may_act !== undefined) claims.may_act = client.may_act;
      for (const k of ['agent_type', 'team', 'environment', 'workload_id']) {
        if (client[k] !== undefined) claims[`${ns}${k}`] = client[k];
      }
      return claims;
    },
    clientDefaults: {
      grant_types: ['client_credentials'],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  });
  provider.proxy = false;
  registerTokenExchange(provider, { keys, clients: exchange, ttl, ns });
  provider.use(unauthorizedClient);
  return provider;
}

function reply(res, status, body) {
  if (body === undefined) {
    res.writeHead(status, { 'cache-control': 'no-store' }).end();
    return;
  }
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' })
    .end(JSON.stringify(body));
}

// Compared as digests so the comparison takes the same time whatever the
// length or content of the presented token.
function isAdmin(req) {
  if (!adminToken) return false;
  const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
  if (!m) return false;
  const digest = (t) => createHash('sha256').update(t).digest();
  return timingSafeEqual(digest(m[1]), digest(adminToken));
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

const invalid = (description) => ({ error: 'invalid_request', error_description: description });

// PUT /admin/clients/<id>: the given agent attributes replace the
// registered ones (the rest of the registration, its secret included,
// stays); validated as a registration is.
async function updateClient(req, res, id) {
  if (configured(id)) {
    reply(res, 400, invalid('a configured client is changed in FIRST_PARTY_CLIENTS or EXCHANGE_CLIENTS'));
    return;
  }
  let changes;
  try {
    changes = await readJson(req);
  } catch {
    reply(res, 400, invalid('the body must be a JSON object'));
    return;
  }
  const keys = changes && typeof changes === 'object' && !Array.isArray(changes) ? Object.keys(changes) : [];
  if (keys.length === 0 || !keys.every((k) => AGENT_FIELDS.includes(k))) {
    reply(res, 400, invalid(`the body must be a JSON object of some of ${AGENT_FIELDS.join(', ')}`));
    return;
  }
  const client = await provider.Client.find(id);
  if (!client) {
    reply(res, 404, invalid('no such client'));
    return;
  }
  let next;
  try {
    next = new provider.Client({ ...client.metadata(), ...changes });
  } catch (e) {
    reply(res, 400, { error: 'invalid_client_metadata', error_description: e.error_description ?? e.message });
    return;
  }
  await provider.Client.adapter.upsert(id, next.metadata());
  reply(res, 200, Object.fromEntries(
    ['client_id', ...AGENT_FIELDS].filter((k) => next[k] !== undefined).map((k) => [k, next[k]]),
  ));
}

async function deleteClient(res, id) {
  if (configured(id)) {
    reply(res, 400, invalid('a configured client is changed in FIRST_PARTY_CLIENTS or EXCHANGE_CLIENTS'));
    return;
  }
  if (!(await provider.Client.find(id))) {
    reply(res, 404, invalid('no such client'));
    return;
  }
  await provider.Client.adapter.destroy(id);
  reply(res, 204);
}

// Key rotation in two steps, as a provider should do it: publish the next
// key (verifiers fetch it while the current one still signs), then sign
// with it (the old one stays published for tokens already issued).
async function rotate(res, step) {
  if (step === 'publish') {
    keys = [...keys, newKey()];
  } else if (step === 'sign' && keys.length > 1) {
    keys = [keys[keys.length - 1], ...keys.slice(0, -1)];
  } else {
    reply(res, 400, invalid('publish, then sign'));
    return;
  }
  provider = await start(keys, server);
  reply(res, 200, { signing: keys[0].kid, published: keys.map((k) => k.kid) });
}

async function admin(req, res) {
  if (!isAdmin(req)) {
    reply(res, 401, { error: 'invalid_token' });
    return;
  }
  const path = req.url.split('?')[0];
  const keyStep = /^\/admin\/keys\/([a-z]+)$/.exec(path);
  if (keyStep && req.method === 'POST') {
    await rotate(res, keyStep[1]);
    return;
  }
  const client = /^\/admin\/clients\/([A-Za-z0-9_-]+)$/.exec(path);
  if (client && req.method === 'PUT') {
    await updateClient(req, res, client[1]);
  } else if (client && req.method === 'DELETE') {
    await deleteClient(res, client[1]);
  } else {
    reply(res, 404, invalid('no such route'));
  }
}

let keys = [newKey()];
const server = createServer();
let provider;
server.on('request', async (req, res) => {
  if (req.url.startsWith('/admin/')) {
    try {
      await admin(req, res);
    } catch {
      if (!res.headersSent) reply(res, 500, { error: 'server_error' });
    }
    return;
  }
  if (req.url.startsWith('/interaction/')) {
    try {
      await interaction(provider, { approvers, firstParty: firstPartyIds, isCimd: isCimdId }, req, res);
    } catch {
      if (!res.headersSent) reply(res, 500, { error: 'server_error' });
    }
    return;
  }
  provider.callback()(req, res);
});
server.listen(port, host, async () => {
  provider = await start(keys, server);
  console.log(`listening ${server.address().port}`);
});

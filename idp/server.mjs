// agentplane's identity provider: oidc-provider (OpenID Certified) set up
// for agents, as the seed uses Auth0.
//
// - client credentials grant, JWT access tokens signed RS256, the audience
//   bound by an RFC 8707 resource indicator (AUDIENCE);
// - the seed's claims from the client's registered metadata: `permissions`,
//   `scope`, and the namespaced agent_type, team and environment;
// - dynamic client registration (RFC 7591) behind an initial access
//   token, and deregistration (RFC 7592) with the registration access
//   token it hands out;
// - JWKS at /jwks; `POST /admin/keys/publish` then `/admin/keys/sign`
//   (with the initial access token) rotate the signing key.
//
// Environment: ISSUER (default http://127.0.0.1:<port>), PORT (0: any;
// the port is printed as `listening <port>`), AUDIENCE, INITIAL_ACCESS_TOKEN,
// CLAIMS_NAMESPACE (default https://mcp.example.com/), TOKEN_TTL (s, 300),
// DATA_FILE (where registrations persist across restarts; without it they
// live in memory and a restart forgets every agent).

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const env = process.env;
const port = Number(env.PORT ?? 0);
const audience = env.AUDIENCE ?? 'https://mcp.example.com/';
const iat = env.INITIAL_ACCESS_TOKEN;
if (!iat) {
  console.error('INITIAL_ACCESS_TOKEN is required');
  process.exit(2);
}
const ns = env.CLAIMS_NAMESPACE ?? 'https://mcp.example.com/';
const ttl = Number(env.TOKEN_TTL ?? 300);

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };
}

// The agent attributes a registration carries; they become token claims.
const AGENT_FIELDS = ['agent_type', 'team', 'environment', 'permissions', 'workload_id'];

function validate(key, value) {
  if (value === undefined) return;
  if (key === 'permissions') {
    if (!Array.isArray(value) || !value.every((p) => typeof p === 'string' && /^[\x21-\x7e]+$/.test(p))) {
      throw new Error('permissions must be an array of strings without spaces');
    }
  } else if (typeof value !== 'string' || value.length === 0 || value.length > 256) {
    throw new Error(`${key} must be a non-empty string`);
  }
}

// Storage shared by every provider instance of this process (a key
// rotation builds a new one), with registrations (the Client model) kept
// in DATA_FILE when set, so a restart keeps every registered agent.
const store = new Map();
const dataFile = env.DATA_FILE;
if (dataFile && existsSync(dataFile)) {
  for (const [k, v] of Object.entries(JSON.parse(readFileSync(dataFile, 'utf8')))) store.set(k, v);
}
function persist() {
  if (!dataFile) return;
  const clients = Object.fromEntries([...store].filter(([k]) => k.startsWith('Client:')));
  writeFileSync(`${dataFile}.tmp`, JSON.stringify(clients));
  renameSync(`${dataFile}.tmp`, dataFile);
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
    clients: [],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      registration: { enabled: true, initialAccessToken: iat },
      registrationManagement: { enabled: true, rotateRegistrationAccessToken: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => audience,
        useGrantedResource: () => true,
        getResourceServerInfo: async (_ctx, resource, client) => {
          if (resource !== audience) throw new Provider.errors.InvalidTarget();
          return {
            // The client may ask for any permission it was registered with.
            scope: (client.permissions ?? []).join(' '),
            audience,
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
  return provider;
}

let keys = [newKey()];
const server = createServer();
let provider;
server.on('request', async (req, res) => {
  // Key rotation in two steps, as a provider should do it: publish the
  // next key (verifiers fetch it while the current one still signs), then
  // sign with it (the old one stays published for tokens already issued).
  if (req.method === 'POST' && req.url.startsWith('/admin/keys/')) {
    if (req.headers.authorization !== `Bearer ${iat}`) {
      res.writeHead(401).end();
      return;
    }
    const step = req.url.slice('/admin/keys/'.length);
    if (step === 'publish') {
      keys = [...keys, newKey()];
    } else if (step === 'sign' && keys.length > 1) {
      keys = [keys[keys.length - 1], ...keys.slice(0, -1)];
    } else {
      res.writeHead(400).end();
      return;
    }
    provider = await start(keys, server);
    res.writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ signing: keys[0].kid, published: keys.map((k) => k.kid) }));
    return;
  }
  provider.callback()(req, res);
});
server.listen(port, '127.0.0.1', async () => {
  provider = await start(keys, server);
  console.log(`listening ${server.address().port}`);
});

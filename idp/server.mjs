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
// - JWKS at /jwks; `POST /admin/rotate` (with the initial access token)
//   publishes a new key first and signs with it from then on.
//
// Environment: ISSUER (default http://127.0.0.1:<port>), PORT (0: any;
// the port is printed as `listening <port>`), AUDIENCE, INITIAL_ACCESS_TOKEN,
// CLAIMS_NAMESPACE (default https://mcp.example.com/), TOKEN_TTL (s, 300).
// Registrations live in memory: a restart forgets every agent.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
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

async function start(keys, server) {
  const issuer = env.ISSUER ?? `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    jwks: { keys },
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
  if (req.method === 'POST' && req.url === '/admin/rotate') {
    if (req.headers.authorization !== `Bearer ${iat}`) {
      res.writeHead(401).end();
      return;
    }
    // Publish the new key first (it leads the set, so it signs); the old
    // one stays published for tokens already issued.
    keys = [newKey(), keys[0]];
    provider = await start(keys, server);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kid: keys[0].kid }));
    return;
  }
  provider.callback()(req, res);
});
server.listen(port, '127.0.0.1', async () => {
  provider = await start(keys, server);
  console.log(`listening ${server.address().port}`);
});

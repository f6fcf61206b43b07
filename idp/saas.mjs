// A third-party SaaS's authorization server, for the end-to-end tests of
// per-user upstream credentials (docs/acting-for-users.md#linked-accounts):
// a second oidc-provider, separate from agentplane's own, with one
// confidential client (the link broker) allowed the authorization-code
// flow with PKCE and refresh tokens, as GitHub- or Slack-style OAuth apps
// are. People sign in with oidc-provider's own development login form
// (any name, any password: this server plays a SaaS, it guards nothing)
// and consent on its consent page. Access tokens are opaque, checked at
// its userinfo endpoint (/me) or its introspection endpoint; refresh
// tokens rotate on use and are revocable (/token/revocation).
//
// Environment: PORT (0: any; printed as `listening <port>`), CLIENT_ID,
// CLIENT_SECRET, REDIRECT_URI (the broker's callback), TOKEN_TTL (s, 300).
// It lives in idp/ for its node_modules (node idp/saas.mjs); it is a test
// fixture, not part of the provider.

import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const env = process.env;
const ttl = Number(env.TOKEN_TTL ?? 300);
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'saas-1', use: 'sig', alg: 'RS256' };

const server = createServer();
server.listen(Number(env.PORT ?? 0), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    jwks: { keys: [jwk] },
    clients: [{
      client_id: env.CLIENT_ID,
      client_secret: env.CLIENT_SECRET,
      redirect_uris: [env.REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    findAccount: (_ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
    scopes: ['openid', 'offline_access'],
    pkce: { required: () => true },
    // The broker asks for offline_access: every code it redeems brings a
    // refresh token, rotated on each use.
    issueRefreshToken: (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    ttl: { AccessToken: ttl, RefreshToken: 86400, Grant: 86400, Session: 3600, Interaction: 600 },
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
    },
  });
  server.on('request', provider.callback());
  console.log(`listening ${server.address().port}`);
});

// A skill's side of agentplane's transaction tokens, with an independent
// implementation (jose, not agentplane's code): an HTTP server that
// accepts a request only with a Txn-Token the gateway signed for this
// service. The end-to-end tests run it as an upstream.
//
//   node idp/txn_verify.mjs <issuer> <trust-domain> <service>
//
// Prints {"port": N} once listening, then reads the JWKS URL from its
// first stdin line (the gateway's port is known only after it started).
// Test-only: `x-verify-at: <unix seconds>` verifies as of that time, to
// replay a token after its expiry without waiting for it.
import http from 'node:http';
import readline from 'node:readline';
import crypto from 'node:crypto';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [issuer, audience, service] = process.argv.slice(2);
let jwks = null;

readline.createInterface({ input: process.stdin }).once('line', (url) => {
  jwks = createRemoteJWKSet(new URL(url.trim()));
});

const server = http.createServer(async (req, res) => {
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  const token = req.headers['txn-token'];
  if (!jwks) return reply(503, { ok: false, error: 'no JWKS URL yet' });
  if (!token) return reply(401, { ok: false, error: 'no Txn-Token' });
  const at = req.headers['x-verify-at'];
  try {
    const { payload } = await jwtVerify(token, jwks, {
      issuer,
      audience,
      typ: 'txntoken+jwt',
      algorithms: ['EdDSA'],
      currentDate: at ? new Date(Number(at) * 1000) : undefined,
    });
    if (payload.svc !== service) throw new Error(`token is for ${payload.svc}`);
    reply(200, {
      ok: true,
      claims: payload,
      decision: req.headers['x-decision-id'] ?? null,
      agent_header: req.headers['x-agent-id'] ?? null,
      token_sha256: crypto.createHash('sha256').update(token).digest('hex'),
      token,
    });
  } catch (e) {
    reply(401, { ok: false, error: e.code ?? e.message });
  }
});

server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ port: server.address().port }));
});

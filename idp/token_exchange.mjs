// OAuth 2.0 Token Exchange (RFC 8693) at the provider: a client named in
// EXCHANGE_CLIENTS trades a token this provider signed (the subject: a
// user's or an agent's) for a short-lived access token to one upstream,
// optionally naming the party acting for the subject (the actor token).
//
// Only what the RFC says is relied on, so a gateway that speaks it works
// against any RFC 8693 STS: client_secret_basic, the standard form
// parameters, the standard answer and the §5.2 errors of RFC 6749.
//
// The issued token is a JWT (RS256, typ at+jwt, the provider's signing
// key) whose `sub` is the subject's, `aud` the one upstream, `scope` the
// requested scopes narrowed to what the subject holds and the client may
// ask for, `act` the delegation chain (RFC 8693 §4.1), and which never
// outlives the subject (nor the actor) token. Error descriptions name the
// rule that failed, never a token or a secret.

import { randomUUID } from 'node:crypto';
import { createLocalJWKSet, importJWK, jwtVerify, SignJWT } from 'jose';
import { errors } from 'oidc-provider';

export const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ID_TOKEN = 'urn:ietf:params:oauth:token-type:id_token';
// Everything this provider signs is a JWT, whatever the caller calls it.
const SUBJECT_TYPES = new Set([ACCESS_TOKEN, JWT_TYPE, ID_TOKEN]);
const PARAMS = ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
  'resource', 'audience', 'scope', 'requested_token_type'];

const fail = (error, description) => new errors.CustomOIDCProviderError(error, description);

function stringList(value, what) {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string' && v.length > 0)) {
    throw new Error(`${what} must be an array of non-empty strings`);
  }
  return value;
}

/**
 * The clients allowed the exchange, from EXCHANGE_CLIENTS (a JSON array of
 * {client_id, client_secret, accepted_audiences, allowed_resources,
 * allowed_scopes}): a Map of client_id -> {metadata (what oidc-provider
 * authenticates), policy}. Throws on anything malformed, so a typo never
 * widens what a client may do.
 */
export function exchangeClients(text) {
  let list;
  try {
    list = JSON.parse(text);
  } catch {
    list = undefined;
  }
  if (!Array.isArray(list)) throw new Error('must be a JSON array of clients');
  const clients = new Map();
  list.forEach((c, i) => {
    const at = `client ${i}`;
    if (!c || typeof c !== 'object' || typeof c.client_id !== 'string' || !/^[A-Za-z0-9_.-]{1,128}$/.test(c.client_id)) {
      throw new Error(`${at}: client_id must be 1 to 128 of A-Z a-z 0-9 _ . -`);
    }
    if (typeof c.client_secret !== 'string' || c.client_secret.length < 16) {
      throw new Error(`${at}: client_secret must be at least 16 characters`);
    }
    const known = ['client_id', 'client_secret', 'accepted_audiences', 'allowed_resources', 'allowed_scopes'];
    const extra = Object.keys(c).filter((k) => !known.includes(k));
    if (extra.length) throw new Error(`${at}: unknown ${extra.join(', ')}`);
    let policy;
    try {
      policy = {
        acceptedAudiences: new Set(stringList(c.accepted_audiences, 'accepted_audiences')),
        allowedResources: new Set(stringList(c.allowed_resources, 'allowed_resources')),
        allowedScopes: new Set(stringList(c.allowed_scopes, 'allowed_scopes')),
      };
    } catch (e) {
      throw new Error(`${at}: ${e.message}`);
    }
    if (!policy.acceptedAudiences.size || !policy.allowedResources.size) {
      throw new Error(`${at}: accepted_audiences and allowed_resources must not be empty`);
    }
    if (clients.has(c.client_id)) throw new Error(`${at}: client_id repeated`);
    clients.set(c.client_id, {
      metadata: {
        client_id: c.client_id,
        client_secret: c.client_secret,
        grant_types: [GRANT],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      policy,
    });
  });
  return clients;
}

const publicJwk = ({ kty, n, e, kid, alg, use }) => ({ kty, n, e, kid, alg, use });

function one(params, name) {
  const v = params[name];
  if (Array.isArray(v)) throw fail('invalid_request', `${name} must be given once`);
  return v;
}

// A token this provider signed with one of its published keys, unexpired
// (no leeway), with a subject. Anything else: invalid_grant.
async function verify(token, jwks, issuer, what) {
  try {
    const { payload } = await jwtVerify(token, jwks, {
      issuer,
      algorithms: ['RS256'],
      requiredClaims: ['sub', 'exp'],
    });
    if (typeof payload.sub !== 'string' || !payload.sub) throw new Error('sub');
    return payload;
  } catch {
    throw fail('invalid_grant', `the ${what} is not a valid unexpired token of this issuer`);
  }
}

const audiences = (aud) => (Array.isArray(aud) ? aud : [aud]).filter((a) => typeof a === 'string');

// RFC 8693 §4.4: `may_act` names who may act for the subject, as an
// object of claims ({"sub": ...}, optionally "iss"); a list of such
// objects names several parties.
function mayAct(claim, actor, issuer) {
  const parties = Array.isArray(claim) ? claim : [claim];
  return parties.some((p) => p && typeof p === 'object' && p.sub === actor.sub
    && (p.iss === undefined || p.iss === (actor.iss ?? issuer)));
}

// The one upstream the token is for: `resource` (RFC 8707) and/or
// `audience`, each given at most once and naming the same target; none
// given, the client's only allowed resource when it has just one.
function target(params, policy) {
  const asked = [...new Set(['resource', 'audience'].flatMap((k) => {
    const v = params[k];
    return v === undefined ? [] : Array.isArray(v) ? v : [v];
  }))];
  if (asked.length > 1) throw fail('invalid_target', 'one resource or audience per exchange');
  if (asked.length === 0) {
    if (policy.allowedResources.size === 1) return [...policy.allowedResources][0];
    throw fail('invalid_target', 'a resource or audience is required');
  }
  if (!policy.allowedResources.has(asked[0])) {
    throw fail('invalid_target', 'not a resource this client may exchange tokens for');
  }
  return asked[0];
}

// Requested ∩ held ∩ allowed; asking for a scope outside it is refused,
// not silently dropped, so the caller learns its request was too wide.
function grantedScope(params, subject, policy) {
  // What the token was issued with (`scope`); a token without one holds
  // its `permissions`. An agent's token asked for fewer scopes than its
  // permissions keeps to them.
  const list = typeof subject.scope === 'string' ? subject.scope.split(' ') : subject.permissions;
  const held = new Set((Array.isArray(list) ? list : []).filter((s) => typeof s === 'string' && s));
  const grantable = [...held].filter((s) => policy.allowedScopes.has(s));
  const requested = params.scope === undefined ? undefined : params.scope.split(' ').filter(Boolean);
  if (requested === undefined) return grantable;
  if (!requested.every((s) => grantable.includes(s))) {
    throw fail('invalid_scope', 'a requested scope is not held by the subject token or not allowed for this client');
  }
  return [...new Set(requested)];
}

/**
 * Registers the grant on `provider`. `keys` are the provider's private
 * JWKs, the first the signing one (as given to oidc-provider); `clients`
 * what exchangeClients returned; `ttl` the longest lifetime (s) of an
 * issued token; `ns` the claim namespace of agent attributes.
 */
export function registerTokenExchange(provider, { keys, clients, ttl, ns }) {
  const jwks = createLocalJWKSet({ keys: keys.map(publicJwk) });
  const signing = keys[0];
  let key;
  const custom = ['agent_type', 'team', 'environment', 'workload_id'].map((k) => `${ns}${k}`);

  async function handler(ctx) {
    const { client, params } = ctx.oidc;
    const entry = clients.get(client.clientId);
    // The grant is only for the configured clients; a registration that
    // listed it in its grant_types gets nothing from it.
    if (!entry) throw fail('unauthorized_client', 'this client may not use the token exchange grant');
    const { policy } = entry;
    const subjectToken = one(params, 'subject_token');
    const subjectType = one(params, 'subject_token_type');
    const actorToken = one(params, 'actor_token');
    const actorType = one(params, 'actor_token_type');
    const requested = one(params, 'requested_token_type');
    if (!subjectToken || !subjectType) throw fail('invalid_request', 'subject_token and subject_token_type are required');
    if (!SUBJECT_TYPES.has(subjectType)) throw fail('invalid_request', 'unsupported subject_token_type');
    if (!actorToken !== !actorType) throw fail('invalid_request', 'actor_token and actor_token_type go together');
    if (actorType && !SUBJECT_TYPES.has(actorType)) throw fail('invalid_request', 'unsupported actor_token_type');
    if (requested !== undefined && requested !== ACCESS_TOKEN && requested !== JWT_TYPE) {
      throw fail('invalid_request', 'only access tokens are issued');
    }
    const aud = target(params, policy);
    const issuer = provider.issuer;
    const subject = await verify(subjectToken, jwks, issuer, 'subject token');
    if (!audiences(subject.aud).some((a) => policy.acceptedAudiences.has(a))) {
      throw fail('invalid_grant', 'the subject token is not for an audience this client accepts');
    }
    let act = subject.act;
    let actor;
    if (actorToken) {
      actor = await verify(actorToken, jwks, issuer, 'actor token');
      if (subject.may_act !== undefined && !mayAct(subject.may_act, actor, issuer)) {
        throw fail('invalid_grant', 'the actor is not named in the subject token\'s may_act');
      }
      // The current actor outermost, the subject's earlier actors nested
      // inside (§4.1): a token already acted on keeps its whole chain.
      act = subject.act === undefined ? { sub: actor.sub } : { sub: actor.sub, act: subject.act };
    } else if (subject.may_act !== undefined && !mayAct(subject.may_act, { sub: client.clientId }, issuer)) {
      // Without an actor token the exchanging client acts for the subject
      // itself: it must be the one named, or leaving the actor out would
      // step around may_act.
      throw fail('invalid_grant', 'the client is not named in the subject token\'s may_act');
    }
    const scope = grantedScope(params, subject, policy);
    const now = Math.floor(Date.now() / 1000);
    const exp = Math.min(now + ttl, subject.exp, actor?.exp ?? Infinity);
    if (exp <= now) throw fail('invalid_grant', 'the subject token is expired');
    const claims = { scope: scope.join(' '), client_id: client.clientId };
    if (act !== undefined) claims.act = act;
    // Who may act for the subject holds for the new token too: exchanged
    // again, its actor is checked against the same parties.
    if (subject.may_act !== undefined) claims.may_act = subject.may_act;
    // What the gateway's policy reads about an agent travels along, its
    // permissions narrowed to what was granted.
    if (Array.isArray(subject.permissions)) claims.permissions = subject.permissions.filter((p) => scope.includes(p));
    for (const k of custom) if (subject[k] !== undefined) claims[k] = subject[k];
    key ??= await importJWK(signing, 'RS256');
    const accessToken = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: signing.kid })
      .setIssuer(issuer)
      .setSubject(subject.sub)
      .setAudience(aud)
      .setIssuedAt(now)
      .setExpirationTime(exp)
      .setJti(randomUUID())
      .sign(key);
    ctx.body = {
      access_token: accessToken,
      issued_token_type: ACCESS_TOKEN,
      token_type: 'Bearer',
      expires_in: exp - now,
      ...(scope.length ? { scope: scope.join(' ') } : {}),
    };
  }

  provider.registerGrantType(GRANT, handler, PARAMS, ['resource', 'audience']);
}

/**
 * A client whose grant_types lack the one it asked for is
 * `unauthorized_client` (RFC 6749 §5.2); oidc-provider answers
 * `invalid_request`. Koa middleware for the provider.
 */
export async function unauthorizedClient(ctx, next) {
  await next();
  if (ctx.path === '/token' && ctx.status === 400 && ctx.body?.error === 'invalid_request'
    && ctx.body.error_description === 'requested grant type is not allowed for this client') {
    ctx.body = { error: 'unauthorized_client', error_description: 'this client may not use this grant type' };
  }
}


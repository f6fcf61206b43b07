// The approvers: people who approve agents' calls and sign in at the
// provider's login form (interactions.mjs). Their names and password
// hashes come from APPROVERS_FILE, read once at start:
//
//   {"alice": {"password_scrypt": "<salt hex>:<hash hex>"}, ...}
//
// scrypt with N=16384, r=8, p=1 and a 64-byte hash (hash_password.mjs
// prints one). A plain {"password": "..."} is accepted only with
// ALLOW_PLAIN_PASSWORDS=1, for tests; it is hashed on load, so a login
// takes the same path, and the same time, either way. Nothing here logs a
// password or a hash. What the login page shows lives in interactions.mjs.

import { randomBytes, scrypt, scryptSync, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';

const COST = { N: 16384, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };
const KEYLEN = 64;
// The name is the ID token's `sub` and what a policy lists as an approver:
// no spaces, quotes or markup, so it reads the same everywhere it lands.
const NAME = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
const SCRYPT = /^((?:[0-9a-fA-F]{2}){16,64}):((?:[0-9a-fA-F]{2}){64})$/;
const scryptAsync = promisify(scrypt);

// Unicode passwords typed on different keyboards can arrive composed or
// decomposed; both must match the hash made from either.
const normal = (password) => password.normalize('NFC');

/** `<salt hex>:<hash hex>` of `password` with a fresh 16-byte salt. */
export function hashPassword(password) {
  const salt = randomBytes(16);
  const hash = scryptSync(normal(password), salt, KEYLEN, COST);
  return `${salt.toString('hex')}:${hash.toString('hex')}`;
}

function entry(name, value, allowPlain) {
  if (!NAME.test(name)) {
    throw new Error(`approver ${JSON.stringify(name)}: a name is 1 to 64 of A-Z a-z 0-9 . _ @ - (not starting with a sign)`);
  }
  if (typeof value?.password_scrypt === 'string') {
    const m = SCRYPT.exec(value.password_scrypt);
    if (!m) throw new Error(`approver ${name}: password_scrypt is not <salt hex>:<64-byte hash hex>`);
    return { salt: Buffer.from(m[1], 'hex'), hash: Buffer.from(m[2], 'hex') };
  }
  if (typeof value?.password === 'string' && value.password !== '') {
    if (!allowPlain) {
      throw new Error(`approver ${name}: a plain password needs ALLOW_PLAIN_PASSWORDS=1 (tests only); give password_scrypt`);
    }
    const salt = randomBytes(16);
    return { salt, hash: scryptSync(normal(value.password), salt, KEYLEN, COST) };
  }
  throw new Error(`approver ${name}: password_scrypt is missing`);
}

/**
 * The approvers in `file` as a Map of name to {salt, hash}; throws with a
 * message that names the entry (never its secret) on anything malformed.
 */
export function loadApprovers(file, allowPlain) {
  let doc;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`cannot read it as JSON (${e.code ?? e.name})`);
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw new Error('must be a JSON object of approvers');
  const approvers = new Map();
  for (const [name, value] of Object.entries(doc)) approvers.set(name, entry(name, value, allowPlain));
  if (approvers.size === 0) throw new Error('names no approver');
  return approvers;
}

// Checked in place of an unknown name: one scrypt runs whoever is asked
// about, so the answer's timing does not say whether the name exists.
const decoy = { salt: randomBytes(16), hash: randomBytes(KEYLEN) };

/** Whether `password` is `name`'s; the same work for unknown names. */
export async function checkPassword(approvers, name, password) {
  const known = approvers.get(name);
  const { salt, hash } = known ?? decoy;
  const got = await scryptAsync(normal(password), salt, KEYLEN, COST);
  return timingSafeEqual(got, hash) && known !== undefined;
}

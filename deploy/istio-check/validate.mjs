// Validates Istio manifests against Istio's CRD schemas, offline, and
// writes them out ready to apply with the filter image's digest filled in.
//
//   node deploy/istio-check/validate.mjs --digest sha256:<hex> --out DIR FILE...
//
// Every document must be a kind this script knows (one of Istio's CRDs)
// and pass its schema; any failure exits 1 naming the document and field.
// Also written: DIR/plugin-configs/<name>.json, each agentplane plugin
// configuration found (a WasmPlugin's pluginConfig, a Wasm filter's
// configuration in an EnvoyFilter), which `./build.sh test` parses with
// agentplane's own configuration parser.
//
// The schemas accept unknown fields, so a misspelt field would pass them:
// this script also rejects every field the model's type (its .d.ts,
// generated from the same CRDs) does not declare.
//
// What it does not catch (Istio's webhook and istiod do): references to
// workloads, ports or clusters that do not exist, conflicts between
// resources, and anything inside free-form fields (a WasmPlugin's
// pluginConfig, an EnvoyFilter's patch value).
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { parseAllDocuments } from 'yaml';
import { WasmPlugin } from '@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin';
import { RequestAuthentication } from '@kubernetes-models/istio/security.istio.io/v1/RequestAuthentication';
import { ServiceEntry } from '@kubernetes-models/istio/networking.istio.io/v1/ServiceEntry';
import { DestinationRule } from '@kubernetes-models/istio/networking.istio.io/v1/DestinationRule';
import { EnvoyFilter } from '@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter';

const MODELS = {
  'extensions.istio.io/v1alpha1/WasmPlugin': WasmPlugin,
  'security.istio.io/v1/RequestAuthentication': RequestAuthentication,
  'networking.istio.io/v1/ServiceEntry': ServiceEntry,
  'networking.istio.io/v1/DestinationRule': DestinationRule,
  'networking.istio.io/v1alpha3/EnvoyFilter': EnvoyFilter,
};
const ZERO = '0'.repeat(64);

// --- declared fields, from the models' TypeScript declarations ----------
// A type is {kind: 'object', keys: Map, index: type|null, free: bool},
// {kind: 'array', of}, or {kind: 'leaf'}.
const istioDir = dirname(createRequire(import.meta.url).resolve('@kubernetes-models/istio/package.json'));

function parseDts(text, iface) {
  let i = text.indexOf(`export interface ${iface} {`);
  if (i < 0) throw new Error(`no interface ${iface}`);
  i += `export interface ${iface} `.length;
  const ws = () => {
    for (;;) {
      while (i < text.length && /\s/.test(text[i])) i++;
      if (text.startsWith('/*', i)) i = text.indexOf('*/', i) + 2;
      else if (text.startsWith('//', i)) i = text.indexOf('\n', i) + 1;
      else return;
    }
  };
  const one = () => {
    ws();
    if (text[i] === '{') {
      i++;
      const t = { kind: 'object', keys: new Map(), index: null, free: false };
      let members = 0;
      for (;;) {
        ws();
        if (text[i] === '}') { i++; break; }
        members++;
        if (text[i] === '[') {
          i = text.indexOf(']', i) + 1;
          ws(); i++; // ':'
          t.index = type();
        } else {
          const q = text[i];
          const end = text.indexOf(q, i + 1);
          const key = text.slice(i + 1, end);
          i = end + 1;
          ws();
          if (text[i] === '?') i++;
          ws(); i++; // ':'
          t.keys.set(key, type());
        }
        ws();
        if (text[i] === ';' || text[i] === ',') i++;
      }
      if (members === 0) t.free = true;
      return t;
    }
    if (text[i] === '(') {
      i++;
      const t = type();
      ws(); i++; // ')'
      return t;
    }
    // A generic: Array<T> is a list; Exclude<T, U> and the like are T.
    const generic = /^([A-Za-z_]+)</.exec(text.slice(i, i + 64));
    if (generic) {
      i += generic[0].length;
      const args = [type()];
      ws();
      while (text[i] === ',') {
        i++;
        args.push(type());
        ws();
      }
      i++; // '>'
      return generic[1] === 'Array' ? { kind: 'array', of: args[0] } : args[0];
    }
    // A primitive, a literal or a union of them: up to ; , > | & ) or }.
    while (i < text.length && !';,>|&)}'.includes(text[i])) {
      if (text[i] === '"') i = text.indexOf('"', i + 1);
      i++;
    }
    return { kind: 'leaf' };
  };
  const type = () => {
    let t = one();
    ws();
    while (text[i] === '|' || text[i] === '&') {
      i++;
      const u = one();
      if (t.kind === 'object' && u.kind === 'object') {
        for (const [k, v] of u.keys) if (!t.keys.has(k)) t.keys.set(k, v);
        t.index = t.index ?? u.index;
        t.free = t.free || u.free;
      } else if (t.kind !== 'object') t = u;
      ws();
    }
    return t;
  };
  return type();
}

function undeclared(value, t, path, out) {
  if (value === null || value === undefined || t.kind === 'leaf') return;
  if (t.kind === 'array') {
    if (Array.isArray(value)) value.forEach((v, n) => undeclared(v, t.of, `${path}[${n}]`, out));
    return;
  }
  if (t.free || typeof value !== 'object' || Array.isArray(value)) return;
  for (const [k, v] of Object.entries(value)) {
    const kt = t.keys.get(k) ?? t.index;
    if (!kt) out.push(`${path}.${k}`);
    else undeclared(v, kt, `${path}.${k}`, out);
  }
}

function declaredType(key) {
  const [group, version, kind] = [...key.split('/').slice(0, 2), key.split('/')[2]];
  const text = readFileSync(join(istioDir, group, version, `${kind}.d.ts`), 'utf8');
  return parseDts(text, `I${kind}`);
}

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  if (i < 0 || i + 1 >= args.length) throw new Error(`${name} is required`);
  return args.splice(i, 2)[1];
};
const digest = opt('--digest').replace(/^sha256:/, '');
const out = opt('--out');
if (!/^[0-9a-f]{64}$/.test(digest)) throw new Error(`bad digest ${digest}`);
mkdirSync(join(out, 'plugin-configs'), { recursive: true });

let failed = false;
let checked = 0;
for (const file of args) {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'));
  const rendered = [];
  for (const doc of docs) {
    if (doc.errors.length) {
      console.error(`${file}: YAML: ${doc.errors[0].message}`);
      failed = true;
      continue;
    }
    const obj = doc.toJS();
    if (obj === null) continue;
    const key = `${obj.apiVersion}/${obj.kind}`;
    const where = `${file}: ${obj.kind ?? '?'} ${obj.metadata?.name ?? '?'}`;
    const Model = MODELS[key];
    if (!Model) {
      console.error(`${where}: no schema for ${key}`);
      failed = true;
      continue;
    }
    // The image digest: the checked-in manifests carry zeros.
    if (obj.kind === 'WasmPlugin' && obj.spec?.sha256 === ZERO) obj.spec.sha256 = digest;
    for (const p of obj.kind === 'EnvoyFilter' ? obj.spec?.configPatches ?? [] : []) {
      const cfg = p.patch?.value?.typed_config?.config;
      const remote = cfg?.vm_config?.code?.remote;
      if (remote?.sha256 === ZERO) remote.sha256 = digest;
      const value = cfg?.configuration?.value;
      if (typeof value === 'string') {
        writeFileSync(join(out, 'plugin-configs', `${obj.metadata.name}.json`), value);
      }
    }
    if (obj.kind === 'WasmPlugin') {
      writeFileSync(
        join(out, 'plugin-configs', `${obj.metadata.name}.json`),
        JSON.stringify(obj.spec?.pluginConfig ?? {}),
      );
    }
    try {
      new Model(obj).validate();
      const unknown = [];
      undeclared(obj.spec, declaredType(key).keys.get('spec'), 'spec', unknown);
      if (unknown.length) throw new Error(`fields the schema does not declare: ${unknown.join(', ')}`);
      checked += 1;
    } catch (e) {
      console.error(`${where}: ${e.message}`);
      failed = true;
    }
    rendered.push(obj);
  }
  const { stringify } = await import('yaml');
  writeFileSync(join(out, basename(file)), rendered.map((o) => stringify(o)).join('---\n'));
}
if (failed) process.exit(1);
console.log(`istio: ${checked} manifests valid against Istio 1.29.2's CRD schemas; written to ${out}`);

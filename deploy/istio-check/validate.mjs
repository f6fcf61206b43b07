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
// What schema validation does not catch (Istio's webhook and istiod do):
// unknown fields (the models, like the CRDs, accept them), references to
// workloads, ports or clusters that do not exist, conflicts between
// resources, and anything inside an EnvoyFilter's patch value (free-form).
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
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

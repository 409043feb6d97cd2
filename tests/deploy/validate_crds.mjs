// Validate prometheus-operator resources (ServiceMonitor, PrometheusRule, ...) in YAML files against the CRD
// schemas shipped by the npm package @kubernetes-models/prometheus-operator (installed by deploy/ci-setup.sh).
// The models' validators check types, enums, patterns and required fields but let unknown fields through, so the
// script also rejects fields that the models' TypeScript interfaces do not declare (e.g. a misspelt `relabellings`).
// usage: node validate_crds.mjs TOOLS_DIR FILE.yaml...   (exit 1 if any resource is invalid or unknown)
import { readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [toolsDir, ...files] = process.argv.slice(2);
const modules = resolve(toolsDir, "node_modules");
const yaml = createRequire(join(modules, "_"))("js-yaml");

// Interface name -> {property: type text} from the package's .d.ts files (one folder per API version), with
// inherited properties (`extends`) merged in and the long alias names (`export type { IX as IComGithub...X }`).
function interfaces(dir) {
  const own = {}, parents = {}, alias = {};
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".d.ts"))) {
    const text = readFileSync(join(dir, file), "utf8");
    for (const m of text.matchAll(/^export interface (\w+)(?: extends ([^{]+))? \{\n([\s\S]*?)^\}/gm)) {
      own[m[1]] = Object.fromEntries([...m[3].matchAll(/^ {4}"([^"]+)"\??: (.+?);?$/gm)].map((p) => [p[1], p[2]]));
      parents[m[1]] = (m[2] || "").split(",").map((x) => x.trim()).filter(Boolean);
    }
    for (const m of text.matchAll(/export type \{ (\w+) as (\w+)/g)) alias[m[2]] = m[1];
  }
  const resolve = (name) => alias[name] || name;
  const full = (name, seen = new Set()) => {
    name = resolve(name);
    if (!own[name] || seen.has(name)) return {};
    seen.add(name);
    return Object.assign({}, ...parents[name].map((p) => full(p, seen)), own[name]);
  };
  return Object.fromEntries([...Object.keys(own), ...Object.keys(alias)].map((n) => [n, full(n)]).filter(([, p]) => Object.keys(p).length));
}

function unknownFields(value, iface, types, path, out) {
  const props = types[iface];
  if (!props || value === null || typeof value !== "object" || Array.isArray(value)) return out;
  for (const [key, child] of Object.entries(value)) {
    if (!(key in props)) { out.push(`${path}.${key}`); continue; }
    if (key === "metadata") continue;  // ObjectMeta: checked by the model's validator
    const inner = (props[key].match(/\bI\w+/g) || []).find((name) => name in types);
    if (!inner) continue;
    for (const [i, item] of (Array.isArray(child) ? child.entries() : [[null, child]])) {
      unknownFields(item, inner, types, i === null ? `${path}.${key}` : `${path}.${key}[${i}]`, out);
    }
  }
  return out;
}

const typeCache = {};
let failed = 0;
let checked = 0;
for (const file of files) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc || !String(doc.apiVersion).startsWith("monitoring.coreos.com/")) continue;
    const where = `${file}: ${doc.kind}/${doc.metadata?.name}`;
    const version = doc.apiVersion.split("/")[1];
    let Model;
    try {
      const url = pathToFileURL(join(modules, "@kubernetes-models/prometheus-operator/monitoring.coreos.com", version, `${doc.kind}.js`));
      Model = (await import(url.href))[doc.kind];
    } catch (err) {
      console.error(`FAIL ${where}: no model for ${doc.apiVersion} ${doc.kind}`);
      failed++;
      continue;
    }
    try {
      new Model(doc).validate();
      const dir = join(modules, "@kubernetes-models/prometheus-operator/monitoring.coreos.com", version);
      typeCache[dir] ??= interfaces(dir);
      const unknown = unknownFields(doc, `I${doc.kind}`, typeCache[dir], doc.kind, []);
      if (unknown.length) throw new Error(`unknown fields: ${unknown.join(", ")}`);
      console.log(`OK ${where}`);
      checked++;
    } catch (err) {
      console.error(`FAIL ${where}: ${err.message}`);
      failed++;
    }
  }
}
if (checked + failed === 0) {
  console.error("FAIL no monitoring.coreos.com resource found");
  process.exit(1);
}
process.exit(failed ? 1 : 0);

// Validate custom-resource objects against the schemas bundled in the
// @kubernetes-models npm packages (generated from each controller's CRDs).
//
// Input (stdin): a JSON array of Kubernetes objects.
// Output (stdout): a JSON array, one entry per object:
//   {"kind": ..., "apiVersion": ..., "name": ..., "known": bool, "errors": [...]}
// "known" is false when no package here models that apiVersion/kind; the
// caller decides whether that is an error. Exit code 0 unless the input
// cannot be read.
import { readFileSync } from "node:fs";

const PACKAGES = {
  "argoproj.io": "@kubernetes-models/argo-cd/argoproj.io",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api/gateway.networking.k8s.io",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator/monitoring.coreos.com",
};

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const base = PACKAGES[group];
  if (!base) return null;
  let mod;
  try {
    mod = await import(`${base}/${version}`);
  } catch (err) {
    if (err && err.code === "ERR_PACKAGE_PATH_NOT_EXPORTED") return null;
    throw err;
  }
  const Model = mod[kind];
  return typeof Model === "function" && Model.kind === kind ? Model : null;
}

function describe(err) {
  if (err && Array.isArray(err.errors)) {
    return err.errors.map((e) => `${e.instancePath || "/"} ${e.message}` +
      (e.params ? ` ${JSON.stringify(e.params)}` : ""));
  }
  return [String(err && err.message ? err.message : err)];
}

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const entry = {
    kind: obj.kind,
    apiVersion: obj.apiVersion,
    name: obj.metadata?.name ?? "",
    known: false,
    errors: [],
  };
  const Model = await modelFor(obj.apiVersion ?? "", obj.kind ?? "");
  if (Model) {
    entry.known = true;
    try {
      new Model(obj).validate();
    } catch (err) {
      entry.errors = describe(err);
    }
  }
  results.push(entry);
}
process.stdout.write(JSON.stringify(results));

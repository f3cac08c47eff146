#!/usr/bin/env node
// Compares torus's CSI protocol definitions (src/k8s/csi/csi.proto) with a
// published csi.proto, field by field: every message, field, enum value and
// RPC torus declares must exist there under the same name, with the same
// number, type, label (repeated, map key and value) and oneof, and every
// enum must list the same values. Fields and RPCs torus leaves out are
// listed, not errors (proto3 skips unknown fields; gRPC answers unknown
// methods UNIMPLEMENTED).
//
//   node scripts/check-csi-proto.mjs PUBLISHED_CSI_PROTO [OURS]
//
// Get the published file from the specification's repository, at the
// release named in csi.proto's header, e.g.
//   curl -fsSLo /tmp/csi.proto https://raw.githubusercontent.com/container-storage-interface/spec/v1.12.0/csi.proto
// Exit code 0 when everything matches, 1 on a difference, 2 on a usage error.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

/** Loads a .proto with the google/protobuf imports resolved to protobufjs's bundled copies. */
export function loadProto(file) {
  const root = new protobuf.Root();
  const bundled = path.dirname(createRequire(import.meta.url).resolve('protobufjs/package.json'));
  root.resolvePath = (origin, target) => {
    if (target.startsWith('google/protobuf/')) return path.join(bundled, target);
    return protobuf.util.path.resolve(origin, target);
  };
  root.loadSync(file, { keepCase: true });
  root.resolveAll();
  return root;
}

function typeName(field) {
  return field.resolvedType ? field.resolvedType.fullName : field.type;
}

function describeField(f) {
  const label = f.map ? `map<${f.keyType}, ${typeName(f)}>` : `${f.repeated ? 'repeated ' : ''}${typeName(f)}`;
  return `${label} ${f.name} = ${f.id}${f.partOf ? ` (oneof ${f.partOf.name})` : ''}`;
}

/**
 * Returns { errors, notes, checked }: errors are differences that would
 * break the wire contract; notes are what the published file has that ours
 * leaves out.
 */
export function compareProtos(ours, theirs) {
  const errors = [];
  const notes = [];
  const checked = { messages: 0, fields: 0, enums: 0, values: 0, services: 0, methods: 0 };
  const visit = (ns) => {
    for (const obj of ns.nestedArray ?? []) {
      if (obj instanceof protobuf.Type) compareType(obj);
      else if (obj instanceof protobuf.Enum) compareEnum(obj);
      else if (obj instanceof protobuf.Service) compareService(obj);
      if (obj instanceof protobuf.Namespace && !(obj instanceof protobuf.Service)) visit(obj);
    }
  };
  const lookup = (fullName, kind) => {
    try {
      return theirs.lookup(fullName, [kind]);
    } catch {
      return null;
    }
  };
  const compareType = (t) => {
    if (t.fullName.startsWith('.google.protobuf.')) return;
    checked.messages++;
    const other = lookup(t.fullName, protobuf.Type);
    if (!other) {
      errors.push(`message ${t.fullName}: not in the published file`);
      return;
    }
    for (const f of t.fieldsArray) {
      checked.fields++;
      const o = other.fields[f.name];
      if (!o) {
        errors.push(`${t.fullName}.${f.name}: no such field in the published file`);
        continue;
      }
      const mine = describeField(f);
      const published = describeField(o);
      if (mine !== published) errors.push(`${t.fullName}: ours "${mine}", published "${published}"`);
    }
    for (const o of other.fieldsArray) {
      if (!t.fields[o.name]) {
        const clash = t.fieldsArray.find((f) => f.id === o.id);
        if (clash) errors.push(`${t.fullName}: field number ${o.id} is "${clash.name}" in ours but "${o.name}" published`);
        else notes.push(`${t.fullName}: leaves out ${describeField(o)}`);
      }
    }
    for (const name of Object.keys(t.oneofs ?? {})) {
      if (!other.oneofs?.[name]) errors.push(`${t.fullName}: oneof ${name} is not in the published file`);
    }
  };
  const compareEnum = (e) => {
    checked.enums++;
    const other = lookup(e.fullName, protobuf.Enum);
    if (!other) {
      errors.push(`enum ${e.fullName}: not in the published file`);
      return;
    }
    for (const [name, n] of Object.entries(e.values)) {
      checked.values++;
      if (!(name in other.values)) errors.push(`${e.fullName}.${name}: not in the published file`);
      else if (other.values[name] !== n) errors.push(`${e.fullName}.${name}: ours = ${n}, published = ${other.values[name]}`);
    }
    for (const [name, n] of Object.entries(other.values)) {
      if (!(name in e.values)) errors.push(`${e.fullName}: lacks ${name} = ${n} (an enum must be complete: a value we cannot name decodes as a number)`);
    }
  };
  const compareService = (s) => {
    checked.services++;
    const other = lookup(s.fullName, protobuf.Service);
    if (!other) {
      errors.push(`service ${s.fullName}: not in the published file`);
      return;
    }
    for (const m of s.methodsArray) {
      checked.methods++;
      const o = other.methods[m.name];
      if (!o) {
        errors.push(`${s.fullName}.${m.name}: no such RPC in the published file`);
        continue;
      }
      const sig = (x) => `${x.requestStream ? 'stream ' : ''}${x.resolvedRequestType.fullName} -> ${x.responseStream ? 'stream ' : ''}${x.resolvedResponseType.fullName}`;
      if (sig(m) !== sig(o)) errors.push(`${s.fullName}.${m.name}: ours ${sig(m)}, published ${sig(o)}`);
    }
    for (const o of other.methodsArray) if (!s.methods[o.name]) notes.push(`${s.fullName}: leaves out rpc ${o.name}`);
  };
  visit(ours);
  return { errors, notes, checked };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const published = process.argv[2];
  const ours = process.argv[3] ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/k8s/csi/csi.proto');
  if (!published) {
    console.error('usage: node scripts/check-csi-proto.mjs PUBLISHED_CSI_PROTO [OURS]');
    process.exit(2);
  }
  const { errors, notes, checked } = compareProtos(loadProto(ours), loadProto(published));
  for (const n of notes) console.log(`note: ${n}`);
  for (const e of errors) console.log(`DIFFERENT: ${e}`);
  const c = checked;
  console.log(
    `checked ${c.messages} messages (${c.fields} fields), ${c.enums} enums (${c.values} values), ${c.services} services (${c.methods} RPCs) against ${published}: ${errors.length} difference${errors.length === 1 ? '' : 's'}`,
  );
  process.exit(errors.length > 0 ? 1 : 0);
}

/**
 * Every manifest in deploy/kubernetes/ (and its flexvolume/ folder) against the Kubernetes API schemas,
 * twice: kubernetes-models' JSON-schema validators (types, required fields,
 * formats) and TypeScript's excess-property check against the same models'
 * interfaces (an unknown or misspelled field, which the API server refuses
 * under kubectl's strict validation). Then the cross-checks no schema can
 * make: selectors against labels, Service ports against container ports,
 * the DaemonSet's environment against what the entrypoint reads, the plugin
 * hostPath against kubelet's default, the walkthrough's blocks.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { DaemonSet, Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { CSIDriver, StorageClass } from 'kubernetes-models/storage.k8s.io/v1';
import { PersistentVolumeClaim, Service, ServiceAccount } from 'kubernetes-models/v1';
import { DEFAULT_FLEX_SOCKET } from '../../src/k8s/flex/protocol.js';
import { DEFAULTS } from '../../src/daemon/config.js';
import { DRIVER_NAME } from '../../src/k8s/csi/identity.js';
import { parseParameters } from '../../src/k8s/csi/validate.js';
import { ATTACH_SOCKET_NAME } from '../../src/attach/api.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const DIR = path.join(ROOT, 'deploy/kubernetes');

/** kubelet's default --volume-plugin-dir (pkg/volume/flexvolume, REFERENCE section 3). */
const KUBELET_PLUGIN_DIR = '/usr/libexec/kubernetes/kubelet-plugins/volume/exec';

/** The env block of the walkthrough's torus DaemonSet: our image must take it as it is. */
const WALKTHROUGH_ENV = ['ETCD_HOST', 'STORAGE_SIZE', 'LISTEN_HOST', 'AUTO_JOIN', 'DEBUG_INIT', 'DROP_MOUNT_BIN'];
/** The walkthrough's etherpad volume, as it was published. */
const WALKTHROUGH_ETHERPAD_VOLUME = {
  name: 'etherpad',
  flexVolume: { driver: 'coreos.com/torus', fsType: 'ext4', options: { volume: 'pad', etcd: '10.3.0.100:2379' } },
};

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

interface Doc {
  readonly file: string;
  readonly index: number;
  readonly obj: Obj;
}

/** apiVersion/kind -> the model class and its interface, for the schema checks. */
const MODELS: Record<string, { cls: { new (d: any): { validate(): void } }; module: string; iface: string }> = {
  'v1/Service': { cls: Service, module: 'kubernetes-models/v1/Service', iface: 'IService' },
  'apps/v1/DaemonSet': { cls: DaemonSet, module: 'kubernetes-models/apps/v1/DaemonSet', iface: 'IDaemonSet' },
  'apps/v1/Deployment': { cls: Deployment, module: 'kubernetes-models/apps/v1/Deployment', iface: 'IDeployment' },
  'apps/v1/StatefulSet': { cls: StatefulSet, module: 'kubernetes-models/apps/v1/StatefulSet', iface: 'IStatefulSet' },
  'policy/v1/PodDisruptionBudget': { cls: PodDisruptionBudget, module: 'kubernetes-models/policy/v1/PodDisruptionBudget', iface: 'IPodDisruptionBudget' },
  'v1/ServiceAccount': { cls: ServiceAccount, module: 'kubernetes-models/v1/ServiceAccount', iface: 'IServiceAccount' },
  'v1/PersistentVolumeClaim': { cls: PersistentVolumeClaim, module: 'kubernetes-models/v1/PersistentVolumeClaim', iface: 'IPersistentVolumeClaim' },
  'storage.k8s.io/v1/CSIDriver': { cls: CSIDriver, module: 'kubernetes-models/storage.k8s.io/v1/CSIDriver', iface: 'ICSIDriver' },
  'storage.k8s.io/v1/StorageClass': { cls: StorageClass, module: 'kubernetes-models/storage.k8s.io/v1/StorageClass', iface: 'IStorageClass' },
  'rbac.authorization.k8s.io/v1/ClusterRole': { cls: ClusterRole, module: 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole', iface: 'IClusterRole' },
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': { cls: ClusterRoleBinding, module: 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding', iface: 'IClusterRoleBinding' },
  'rbac.authorization.k8s.io/v1/Role': { cls: Role, module: 'kubernetes-models/rbac.authorization.k8s.io/v1/Role', iface: 'IRole' },
  'rbac.authorization.k8s.io/v1/RoleBinding': { cls: RoleBinding, module: 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding', iface: 'IRoleBinding' },
};

/** The numbered manifests (the install order) and the FlexVolume variants in flexvolume/. */
function manifestFiles(): string[] {
  const top = readdirSync(DIR).filter((f) => /\.ya?ml$/.test(f)).sort();
  const flex = readdirSync(path.join(DIR, 'flexvolume')).filter((f) => /\.ya?ml$/.test(f)).sort().map((f) => `flexvolume/${f}`);
  return [...top, ...flex];
}

function loadDocs(): Doc[] {
  const out: Doc[] = [];
  for (const file of manifestFiles()) {
    parseAllDocuments(readFileSync(path.join(DIR, file), 'utf8')).forEach((d, index) => {
      if (d.errors.length > 0) throw new Error(`${file} document ${index}: ${d.errors.map((e) => e.message).join('; ')}`);
      const obj = d.toJS() as Obj | null;
      if (obj !== null) out.push({ file, index, obj });
    });
  }
  return out;
}

const docs = loadDocs();
const kindOf = (d: Doc) => `${d.obj.apiVersion}/${d.obj.kind}`;
const byKind = (kind: string) => docs.filter((d) => d.obj.kind === kind).map((d) => d.obj);
const workloads = () => docs.filter((d) => ['Deployment', 'DaemonSet', 'StatefulSet'].includes(d.obj.kind)).map((d) => d.obj);
const containersOf = (w: Obj): Obj[] => w.spec.template.spec.containers;
const matches = (selector: Record<string, string>, labels: Record<string, string> | undefined) =>
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);

function torusDaemonSet(): Obj {
  const ds = byKind('DaemonSet').find((d) => d.metadata.name === 'torus');
  if (!ds) throw new Error('no DaemonSet named torus in deploy/kubernetes');
  return ds;
}

/** The environment variables deploy/docker/entrypoint.sh reads. */
function entrypointReads(): Set<string> {
  const text = readFileSync(path.join(ROOT, 'deploy/docker/entrypoint.sh'), 'utf8');
  const names = new Set<string>();
  for (const m of text.matchAll(/\$\{([A-Z_][A-Z0-9_]*)/g)) names.add(m[1]!);
  for (const m of text.matchAll(/\bflag\s+"?([A-Z_][A-Z0-9_]*)/g)) names.add(m[1]!);
  for (const m of text.matchAll(/^for v in ([A-Z_ ]+);/gm)) for (const n of m[1]!.trim().split(/\s+/)) names.add(n);
  return names;
}

describe('deploy/kubernetes: schema validation', () => {
  it('has the manifests the issues ask for', () => {
    expect(docs.map(kindOf).sort()).toEqual(
      [
        'apps/v1/DaemonSet',
        'apps/v1/Deployment',
        'apps/v1/Deployment',
        'apps/v1/Deployment',
        'apps/v1/StatefulSet',
        'policy/v1/PodDisruptionBudget',
        'v1/Service',
        'v1/Service',
        'v1/Service',
        'v1/Service',
        'v1/Service',
        'v1/Service',
        'v1/ServiceAccount',
        'v1/PersistentVolumeClaim',
        'storage.k8s.io/v1/CSIDriver',
        'storage.k8s.io/v1/StorageClass',
        'rbac.authorization.k8s.io/v1/ClusterRole',
        'rbac.authorization.k8s.io/v1/ClusterRoleBinding',
        'rbac.authorization.k8s.io/v1/Role',
        'rbac.authorization.k8s.io/v1/RoleBinding',
      ].sort(),
    );
  });

  it.each(docs.map((d) => [`${d.file}#${d.index} ${d.obj.kind}/${d.obj.metadata?.name}`, d] as const))('%s validates against its API schema', (_, d) => {
    const model = MODELS[kindOf(d)];
    if (!model) throw new Error(`${d.file}: ${kindOf(d)} is not a current API (extensions/v1beta1 and friends are gone)`);
    expect(() => new model.cls(d.obj).validate()).not.toThrow();
  });

  it('every manifest type-checks against the API types with no unknown field', () => {
    // Object literals get TypeScript's excess-property check: any field the
    // API does not define (a typo, a field of another kind) is an error.
    const lines = docs.map((d, i) => {
      const m = MODELS[kindOf(d)]!;
      return `import type { ${m.iface} as T${i} } from '${m.module}';\nexport const doc${i}: T${i} = ${JSON.stringify(d.obj, null, 1)};`;
    });
    const virtual = path.join(ROOT, 'test/unit/__deploy_manifests__.ts');
    const options: ts.CompilerOptions = { strict: true, noEmit: true, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, skipLibCheck: true, types: [] };
    const host = ts.createCompilerHost(options);
    const source = lines.join('\n');
    const getSourceFile = host.getSourceFile.bind(host);
    host.getSourceFile = (name, lang, onError, create) => (path.resolve(name) === virtual ? ts.createSourceFile(name, source, lang) : getSourceFile(name, lang, onError, create));
    const fileExists = host.fileExists.bind(host);
    host.fileExists = (name) => path.resolve(name) === virtual || fileExists(name);
    const program = ts.createProgram([virtual], options, host);
    const errors = ts.getPreEmitDiagnostics(program).map((diag) => {
      const where = diag.file && diag.start !== undefined ? diag.file.getLineAndCharacterOfPosition(diag.start) : null;
      return `${where ? `line ${where.line + 1}: ` : ''}${ts.flattenDiagnosticMessageText(diag.messageText, '\n')}`;
    });
    expect(errors).toEqual([]);
  });

  it('the type check does catch an unknown field (it is not a check that cannot fail)', () => {
    const options: ts.CompilerOptions = { strict: true, noEmit: true, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, skipLibCheck: true, types: [] };
    const virtual = path.join(ROOT, 'test/unit/__deploy_bad__.ts');
    const source = `import type { IService } from 'kubernetes-models/v1/Service';\nexport const s: IService = { apiVersion: 'v1', kind: 'Service', metadata: { name: 'x' }, spec: { prots: [] } };`;
    const host = ts.createCompilerHost(options);
    const getSourceFile = host.getSourceFile.bind(host);
    host.getSourceFile = (name, lang, onError, create) => (path.resolve(name) === virtual ? ts.createSourceFile(name, source, lang) : getSourceFile(name, lang, onError, create));
    const fileExists = host.fileExists.bind(host);
    host.fileExists = (name) => path.resolve(name) === virtual || fileExists(name);
    const diags = ts.getPreEmitDiagnostics(ts.createProgram([virtual], options, host));
    expect(diags.map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n')).join('\n')).toMatch(/'prots' does not exist/);
    expect(() => new Service({ metadata: { name: 'x' }, spec: { ports: [{ port: '80' as unknown as number }] } }).validate()).toThrow(/must be integer/);
  });
});

describe('deploy/kubernetes: cross-checks', () => {
  it('every workload selector matches its own pod template labels', () => {
    for (const w of workloads()) {
      expect(matches(w.spec.selector.matchLabels, w.spec.template.metadata.labels), `${w.kind}/${w.metadata.name}`).toBe(true);
    }
  });

  it('every Service selects pods of some workload, on ports those pods expose', () => {
    for (const svc of byKind('Service')) {
      // A Service selects the workloads of its own file (or the shared ones in the numbered files).
      const home = docs.find((d) => d.obj === svc)!.file;
      const visible = docs.filter((d) => ['Deployment', 'DaemonSet', 'StatefulSet'].includes(d.obj.kind) && (d.file === home || !d.file.includes('/'))).map((d) => d.obj);
      const targets = visible.filter((w) => matches(svc.spec.selector, w.spec.template.metadata.labels));
      expect(targets.length, `Service ${svc.metadata.name} selects no workload`).toBeGreaterThan(0);
      for (const w of targets) {
        const ports = containersOf(w).flatMap((c) => c.ports ?? []);
        for (const p of svc.spec.ports) {
          const target = p.targetPort ?? p.port;
          const hit = ports.some((cp: Obj) => (typeof target === 'number' ? cp.containerPort === target : cp.name === target));
          expect(hit, `Service ${svc.metadata.name} port ${p.port} -> ${target}: no such container port in ${w.kind}/${w.metadata.name}`).toBe(true);
        }
      }
    }
  });

  it('the PodDisruptionBudget selects the etcd members', () => {
    const [pdb] = byKind('PodDisruptionBudget');
    const sts = byKind('StatefulSet')[0]!;
    expect(matches(pdb!.spec.selector.matchLabels, sts.spec.template.metadata.labels)).toBe(true);
    expect(pdb!.spec.minAvailable).toBe(2);
  });

  it('etcd: three members with persistent volume claims, named as the initial cluster says', () => {
    const sts = byKind('StatefulSet').find((s) => s.metadata.name === 'etcd-torus')!;
    expect(sts.spec.replicas).toBe(3);
    expect(sts.spec.podManagementPolicy).toBe('Parallel');
    expect(sts.spec.volumeClaimTemplates).toHaveLength(1);
    const claim = sts.spec.volumeClaimTemplates[0];
    const mount = containersOf(sts)[0]!.volumeMounts.find((m: Obj) => m.name === claim.metadata.name);
    expect(mount?.mountPath).toBe('/var/lib/etcd');
    const headless = byKind('Service').find((s) => s.metadata.name === sts.spec.serviceName)!;
    expect(headless.spec.clusterIP).toBe('None');
    const cmd: string[] = containersOf(sts)[0]!.command;
    expect(cmd).toContain('--data-dir=/var/lib/etcd');
    const initial = cmd.find((a) => a.startsWith('--initial-cluster='))!.slice('--initial-cluster='.length).split(',');
    expect(initial).toEqual([0, 1, 2].map((i) => `etcd-torus-${i}=http://etcd-torus-${i}.${sts.spec.serviceName}:2380`));
  });

  it('torusd: /srv/torus at /data, ports 40000 and 4321, privileged without host namespaces', () => {
    const ds = torusDaemonSet();
    const pod = ds.spec.template.spec;
    const [c] = containersOf(ds);
    expect(c!.ports.map((p: Obj) => p.containerPort).sort((a: number, b: number) => a - b)).toEqual([4321, 40000]);
    const vol = (name: string) => pod.volumes.find((v: Obj) => v.name === name);
    const mountOf = (p: string) => c!.volumeMounts.find((m: Obj) => m.mountPath === p);
    expect(vol(mountOf('/data').name).hostPath.path).toBe('/srv/torus');
    expect(c!.securityContext).toEqual({ privileged: true });
    expect(pod.hostNetwork ?? false).toBe(false);
    expect(pod.hostPID ?? false).toBe(false);
    expect(pod.hostIPC ?? false).toBe(false);
    // Bidirectional propagation is what the API allows only to privileged containers.
    expect(mountOf('/var/lib/kubelet').mountPropagation).toBe('Bidirectional');
    expect(vol(mountOf('/var/lib/kubelet').name).hostPath.path).toBe('/var/lib/kubelet');
    expect(DEFAULTS.flexStateDir.startsWith('/var/lib/kubelet/')).toBe(true);
    expect(vol(mountOf('/dev').name).hostPath.path).toBe('/dev');
  });

  it('the driver is installed into kubelet\'s default plugin dir, where the entrypoint puts it', () => {
    const ds = torusDaemonSet();
    const [c] = containersOf(ds);
    const entry = readFileSync(path.join(ROOT, 'deploy/docker/entrypoint.sh'), 'utf8');
    const pluginInContainer = /TORUS_PLUGIN_DIR=\$\{TORUS_PLUGIN_DIR:-([^}]+)\}/.exec(entry)![1]!;
    const m = c!.volumeMounts.find((v: Obj) => v.mountPath === pluginInContainer);
    expect(m, `nothing mounted at ${pluginInContainer}`).toBeDefined();
    const vol = ds.spec.template.spec.volumes.find((v: Obj) => v.name === m.name);
    expect(vol.hostPath.path).toBe(KUBELET_PLUGIN_DIR);
    expect(c!.env.find((e: Obj) => e.name === 'DROP_MOUNT_BIN')?.value).toBe('1');
  });

  it('the driver, torusd and the DaemonSet agree on the socket', () => {
    const c = readFileSync(path.join(ROOT, 'native/flex/torus-flex.c'), 'utf8');
    const cDefault = /#define DEFAULT_SOCKET "([^"]+)"/.exec(c)![1];
    expect(cDefault).toBe(DEFAULT_FLEX_SOCKET);
    const entry = readFileSync(path.join(ROOT, 'deploy/docker/entrypoint.sh'), 'utf8');
    expect(/TORUS_FLEX_SOCKET=\$\{TORUS_FLEX_SOCKET-([^}]+)\}/.exec(entry)![1]).toBe(DEFAULT_FLEX_SOCKET);
    const ds = torusDaemonSet();
    const dir = path.dirname(DEFAULT_FLEX_SOCKET);
    const m = containersOf(ds)[0]!.volumeMounts.find((v: Obj) => v.mountPath === dir);
    const vol = ds.spec.template.spec.volumes.find((v: Obj) => v.name === m.name);
    expect(vol.hostPath.path).toBe(dir);
  });

  it('the DaemonSet sets only variables the entrypoint reads, and the walkthrough\'s env works unchanged', () => {
    const reads = entrypointReads();
    for (const name of ['ETCD_HOST', 'ETCD_PORT', 'STORAGE_SIZE', 'LISTEN_HOST', 'PEER_ADDRESS', 'LISTEN_HTTP_PORT', 'AUTO_JOIN', 'DEBUG_INIT', 'DROP_MOUNT_BIN', 'DEBUG']) {
      expect(reads.has(name), `the entrypoint does not read ${name}`).toBe(true);
    }
    const env: string[] = containersOf(torusDaemonSet())[0]!.env.map((e: Obj) => e.name);
    expect(env.filter((n) => !reads.has(n))).toEqual([]);
    expect(WALKTHROUGH_ENV.filter((n) => !reads.has(n))).toEqual([]);
  });

  it('the torusd pod reaches etcd through the etcd Service', () => {
    const env = containersOf(torusDaemonSet())[0]!.env;
    const host = env.find((e: Obj) => e.name === 'ETCD_HOST').value;
    const port = Number(env.find((e: Obj) => e.name === 'ETCD_PORT').value);
    const svc = byKind('Service').find((s) => s.metadata.name === host)!;
    expect(svc.spec.ports.map((p: Obj) => p.port)).toContain(port);
  });

  it('the FlexVolume etherpad volume is the walkthrough\'s, and its etcd address is served by our etcd', () => {
    const dep = docs.find((d) => d.file === 'flexvolume/etherpad.yaml' && d.obj.kind === 'Deployment')!.obj;
    expect(dep.spec.template.spec.volumes).toEqual([WALKTHROUGH_ETHERPAD_VOLUME]);
    const [ip, port] = WALKTHROUGH_ETHERPAD_VOLUME.flexVolume.options.etcd.split(':');
    const svc = byKind('Service').find((s) => s.spec.clusterIP === ip)!;
    expect(svc).toBeDefined();
    expect(svc.spec.ports.map((p: Obj) => p.port)).toContain(Number(port));
    const etcd = byKind('StatefulSet').find((s) => s.metadata.name === 'etcd-torus')!;
    expect(matches(svc.spec.selector, etcd.spec.template.metadata.labels)).toBe(true);
    // One read-write node at a time: the old pod must let go first.
    expect(dep.spec.strategy.type).toBe('Recreate');
  });

  it('files are numbered in the apply order the README documents', () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const files = readdirSync(DIR).filter((f) => f.endsWith('.yaml')).sort();
    const order = files.map((f) => readme.indexOf(`kubectl apply -f deploy/kubernetes/${f}`));
    expect(order.every((i) => i >= 0), `README must show kubectl apply for each of ${files.join(', ')}`).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect(readme).toContain('kubectl apply -f deploy/kubernetes/flexvolume/etherpad.yaml');
  });
});

describe('deploy/kubernetes: the CSI driver', () => {
  const ds = () => torusDaemonSet();
  const container = (w: Obj, name: string): Obj => {
    const c = containersOf(w).find((x) => x.name === name);
    if (!c) throw new Error(`${w.kind}/${w.metadata.name} has no container ${name}`);
    return c;
  };
  const hostPathOf = (w: Obj, c: Obj, mountPath: string): string | undefined => {
    const m = c.volumeMounts.find((v: Obj) => v.mountPath === mountPath);
    return w.spec.template.spec.volumes.find((v: Obj) => v.name === m?.name)?.hostPath?.path;
  };
  const controller = () => byKind('Deployment').find((d) => d.metadata.name === 'torus-csi-controller')!;
  const argAfter = (args: string[], flag: string) => args[args.indexOf(flag) + 1];

  it('the CSIDriver object names the driver, with attachRequired: false', () => {
    const [drv] = byKind('CSIDriver');
    expect(drv!.metadata.name).toBe(DRIVER_NAME);
    expect(drv!.spec.attachRequired).toBe(false);
    expect(drv!.spec.volumeLifecycleModes).toEqual(['Persistent']);
  });

  it('the StorageClass `torus`: this driver, Delete, Immediate, no expansion, parameters the driver takes', () => {
    const sc = byKind('StorageClass').find((c) => c.metadata.name === 'torus')!;
    expect(sc.provisioner).toBe(DRIVER_NAME);
    expect(sc.reclaimPolicy).toBe('Delete');
    expect(sc.volumeBindingMode).toBe('Immediate');
    // torus volumes cannot grow yet (README): no resizer, no expansion.
    expect(sc.allowVolumeExpansion).toBe(false);
    expect(() => parseParameters(sc.parameters)).not.toThrow();
    expect(sc.parameters['csi.storage.k8s.io/fstype']).toBe('ext4');
  });

  it('the node plugin runs beside torusd, registered with kubelet at the path its socket has on the host', () => {
    const node = container(ds(), 'csi-node');
    const endpoint = argAfter(node.args, '--endpoint')!;
    expect(endpoint).toBe('unix:///csi/csi.sock');
    expect(node.args).toContain('--node-only');
    expect(argAfter(node.args, '--node-id')).toBe('$(NODE_NAME)');
    expect(node.env.find((e: Obj) => e.name === 'NODE_NAME').valueFrom.fieldRef.fieldPath).toBe('spec.nodeName');
    const pluginDir = hostPathOf(ds(), node, '/csi')!;
    expect(pluginDir).toBe(`/var/lib/kubelet/plugins/${DRIVER_NAME}`);
    const reg = container(ds(), 'csi-node-driver-registrar');
    expect(reg.image).toMatch(/^registry\.k8s\.io\/sig-storage\/csi-node-driver-registrar:v\d+\.\d+\.\d+$/);
    expect(reg.args).toContain('--csi-address=/csi/csi.sock');
    expect(reg.args).toContain(`--kubelet-registration-path=${pluginDir}/csi.sock`);
    expect(hostPathOf(ds(), reg, '/csi')).toBe(pluginDir);
    expect(hostPathOf(ds(), reg, '/registration')).toBe('/var/lib/kubelet/plugins_registry');
  });

  it('the node plugin reaches torusd\'s attach socket and mounts where kubelet and the pods see it', () => {
    const node = container(ds(), 'csi-node');
    const torus = containersOf(ds())[0]!;
    const dataDir = argAfter(node.args, '--data-dir')!;
    // The same host folder as torusd's data dir, where attach.sock lives.
    expect(hostPathOf(ds(), node, dataDir)).toBe(hostPathOf(ds(), torus, '/data'));
    expect(path.posix.join(dataDir, ATTACH_SOCKET_NAME)).toBe('/data/attach.sock');
    expect(node.volumeMounts.find((m: Obj) => m.mountPath === '/var/lib/kubelet').mountPropagation).toBe('Bidirectional');
    expect(hostPathOf(ds(), node, '/var/lib/kubelet')).toBe('/var/lib/kubelet');
    expect(hostPathOf(ds(), node, '/dev')).toBe('/dev');
    expect(node.securityContext).toEqual({ privileged: true });
    // torusd names the node in lock holders, which the plugin's refusals show.
    expect(torus.env.find((e: Obj) => e.name === 'TORUS_NODE_NAME').valueFrom.fieldRef.fieldPath).toBe('spec.nodeName');
  });

  it('Probe readiness restarts nothing on an etcd blip: liveness waits long, readiness reports', () => {
    for (const [w, name, port] of [[ds(), 'csi-node', 9809], [controller(), 'csi-controller', 9808]] as const) {
      const c = container(w, name);
      const probe = container(w, 'csi-liveness-probe');
      expect(probe.args).toContain(`--health-port=${port}`);
      expect(c.ports.find((p: Obj) => p.name === 'csi-healthz').containerPort).toBe(port);
      expect(c.readinessProbe.httpGet.port).toBe('csi-healthz');
      expect(c.livenessProbe.periodSeconds * c.livenessProbe.failureThreshold).toBeGreaterThanOrEqual(600);
    }
  });

  it('the controller: the provisioner and the driver share a socket; RBAC lets the provisioner make PVs and elect a leader', () => {
    const dep = controller();
    const ctl = container(dep, 'csi-controller');
    expect(ctl.args).toContain('--controller-only');
    expect(argAfter(ctl.args, '--endpoint')).toBe('unix:///csi/csi.sock');
    expect(ctl.securityContext.privileged ?? false).toBe(false);
    const prov = container(dep, 'csi-provisioner');
    expect(prov.image).toMatch(/^registry\.k8s\.io\/sig-storage\/csi-provisioner:v\d+\.\d+\.\d+$/);
    expect(prov.args).toContain('--csi-address=/csi/csi.sock');
    expect(prov.args).toContain('--leader-election');
    const socketVolume = (c: Obj) => c.volumeMounts.find((m: Obj) => m.mountPath === '/csi').name;
    expect(socketVolume(prov)).toBe(socketVolume(ctl));
    const sa = dep.spec.template.spec.serviceAccountName;
    expect(byKind('ServiceAccount').map((x) => x.metadata.name)).toContain(sa);
    const rules = byKind('ClusterRole').find((r) => r.metadata.name === byKind('ClusterRoleBinding')[0]!.roleRef.name)!.rules;
    const can = (group: string, resource: string, verb: string, list: Obj[]) => list.some((r) => r.apiGroups.includes(group) && r.resources.includes(resource) && r.verbs.includes(verb));
    for (const verb of ['create', 'delete', 'watch']) expect(can('', 'persistentvolumes', verb, rules), `persistentvolumes ${verb}`).toBe(true);
    expect(can('', 'persistentvolumeclaims', 'update', rules)).toBe(true);
    expect(can('storage.k8s.io', 'storageclasses', 'watch', rules)).toBe(true);
    expect(can('', 'events', 'create', rules)).toBe(true);
    const role = byKind('Role').find((r) => r.metadata.name === byKind('RoleBinding')[0]!.roleRef.name)!;
    expect(can('coordination.k8s.io', 'leases', 'update', role.rules)).toBe(true);
    for (const b of [...byKind('ClusterRoleBinding'), ...byKind('RoleBinding')]) expect(b.subjects).toEqual([{ kind: 'ServiceAccount', name: sa, namespace: 'default' }]);
  });

  it('the etherpad example claims a volume of the torus class and mounts the claim', () => {
    const pvc = byKind('PersistentVolumeClaim').find((c) => c.metadata.name === 'etherpad')!;
    expect(pvc.spec.storageClassName).toBe('torus');
    expect(pvc.spec.accessModes).toEqual(['ReadWriteOnce']);
    const dep = docs.find((d) => d.file === '04-etherpad.yaml' && d.obj.kind === 'Deployment')!.obj;
    expect(dep.spec.template.spec.volumes).toEqual([{ name: 'etherpad', persistentVolumeClaim: { claimName: 'etherpad' } }]);
    expect(dep.spec.strategy.type).toBe('Recreate');
  });
});

describe('deploy/docker/Dockerfile', () => {
  const text = readFileSync(path.join(ROOT, 'deploy/docker/Dockerfile'), 'utf8');

  it('builds and runs on Node 24 with npm ci, and prunes dev dependencies', () => {
    const froms = [...text.matchAll(/^FROM (\S+)/gm)].map((m) => m[1]);
    expect(froms).toEqual(['node:24-bookworm', 'node:24-bookworm-slim']);
    expect(text).toMatch(/^RUN npm ci /m);
    expect(text).not.toMatch(/npm install/);
    expect(text).toMatch(/npm prune --omit=dev/);
    expect(text).toMatch(/^ENTRYPOINT \["\/opt\/torus\/entrypoint.sh"\]/m);
    expect(text).toMatch(/native\/build\/flex\/torus bin\/torus-flex/);
  });

  it('sends the build every file it copies', () => {
    const ignore = readFileSync(path.join(ROOT, 'deploy/docker/Dockerfile.dockerignore'), 'utf8');
    for (const m of text.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
      for (const src of m[1]!.split(/\s+/)) {
        // Allowed when an exception names it, a file under it, or a folder above it.
        const allowed = ignore
          .split('\n')
          .filter((l) => l.startsWith('!'))
          .map((l) => l.slice(1))
          .some((pat) => pat === src || pat.startsWith(`${src}/`) || (pat.endsWith('/**') && src.startsWith(pat.slice(0, -2))));
        expect(allowed, `${src} is excluded by Dockerfile.dockerignore`).toBe(true);
      }
    }
  });
});

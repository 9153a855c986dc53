// The conformance kit in Node: the gateway component transpiled by jco,
// with deny-all WASI, judging every scenario of the kit.
//
//   node conformance/runners/node.mjs DIST CERTS
//
// DIST: the transpiled component (gateways/haraka/dist, `npm run build`);
// CERTS: the kit's certificates (`python3 conformance/make-certs.py CERTS`).
// Prints one JSON object: scenario name -> { mail, rcpts } with each
// verdict as { code, enhanced, tenant, reason, warning }.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { X509Certificate } from 'node:crypto';
import { compile, instantiate, sessionFacts } from '../../gateways/haraka/lib/gateway.mjs';

const [dist, certs] = process.argv.slice(2);
const kit = JSON.parse(
  readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../scenarios.json'), 'utf8'),
);
const compiled = await compile(dist);
const anchors = readFileSync(join(certs, `${kit.trust_anchors}.pem`), 'utf8');
const directory = JSON.stringify(kit.directory);

/** The DER certificates of a PEM chain file. */
function chain(name) {
  const pem = readFileSync(join(certs, `${name}.pem`), 'utf8');
  return [...pem.matchAll(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g)].map(
    (m) => new Uint8Array(new X509Certificate(m[0]).raw),
  );
}

const instances = new Map();
function instanceFor(settings) {
  const key = JSON.stringify(settings ?? {});
  if (!instances.has(key)) {
    instances.set(
      key,
      instantiate(compiled, {
        directory,
        directoryFormat: 'json',
        clientTrustAnchors: anchors,
        settings: settings ?? {},
      }),
    );
  }
  return instances.get(key);
}

const observe = (v) => ({
  code: v.code,
  enhanced: v.enhanced,
  tenant: v.tenant ?? null,
  reason: v.reason ?? null,
  warning: v.headers.some((h) => h.name === 'X-Attrelay-Warning'),
  attributed: v.headers.find((h) => h.name === 'X-Attributed-Tenant')?.value ?? null,
});

const results = {};
for (const s of kit.scenarios) {
  const { api } = instanceFor(s.settings);
  const facts = sessionFacts({
    clientIp: s.client_ip,
    helo: kit.helo,
    serverHostname: kit.server_hostname,
    time: new Date(s.time),
    tls: s.tls
      ? {
          protocol: kit.tls_protocol,
          cipher: kit.tls_cipher,
          clientChain: s.tls.certificate ? chain(s.tls.certificate) : [],
        }
      : undefined,
  });
  const session = new api.Session(facts);
  const mail = observe(session.mailFrom(s.sender));
  const rcpts = s.recipients.map((r) => observe(session.rcptTo(r.address)));
  results[s.name] = { mail, rcpts };
}
process.stdout.write(JSON.stringify(results));

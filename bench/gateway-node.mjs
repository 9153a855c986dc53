// The gateway component's costs in Node (jco, the plugin's deny-all WASI):
// a new instance (instantiate + configure with the kit's tenants) and one
// session (facts with a client certificate chain, MAIL FROM, RCPT TO) on a
// warm instance. Medians; run by bench/components.sh.
//
//   node bench/gateway-node.mjs DIST CERTS

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { compile, instantiate, sessionFacts } from '../gateways/haraka/lib/gateway.mjs';

const [dist, certs] = process.argv.slice(2);
const kit = JSON.parse(readFileSync(new URL('../conformance/scenarios.json', import.meta.url), 'utf8'));
const configuration = {
  directory: JSON.stringify(kit.directory),
  directoryFormat: 'json',
  clientTrustAnchors: readFileSync(join(certs, 'kit-root.pem'), 'utf8'),
};
const pem = readFileSync(join(certs, 'contoso-host.pem'), 'utf8');
const chain = [...pem.matchAll(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g)].map(
  (m) => new Uint8Array(new X509Certificate(m[0]).raw),
);

function median(runs, op) {
  op();
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t = process.hrtime.bigint();
    op();
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(runs / 2)];
}

let t = process.hrtime.bigint();
const compiled = await compile(dist);
compiled.getCoreModule('attrelay_gateway.core.wasm');
const compileMs = Number(process.hrtime.bigint() - t) / 1e6;
const instanceMs = median(20, () => instantiate(compiled, configuration));
const { api } = instantiate(compiled, configuration);
const facts = sessionFacts({
  clientIp: '192.0.2.77',
  helo: 'mail.contoso.com',
  serverHostname: 'relay.example.test',
  time: 1501545600,
  tls: { protocol: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', clientChain: chain },
});
const sessionMs = median(200, () => {
  const s = new api.Session(facts);
  s.mailFrom('');
  s.rcptTo('someone@internet.example');
  s[Symbol.dispose]?.();
});
console.log('gateway component in Node (jco)');
console.log(`  first compile: ${compileMs.toFixed(0)} ms`);
console.log(`  instance (instantiate + configure): ${instanceMs.toFixed(2)} ms`);
console.log(`  session with a client chain, MAIL + RCPT: ${(sessionMs * 1000).toFixed(1)} us`);

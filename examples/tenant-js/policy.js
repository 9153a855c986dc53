// A tenant policy in JavaScript: a longer grace period for one tenant.
//
// The base policy rejects ATTR36 mail once the global enforcement date has
// passed. This tenant negotiated more time: until `grace_until`, its ATTR36
// mail is deferred with `451 4.4.4` (its servers retry, its admins see the
// warning) instead of bounced. Everything else passes through unchanged.
// The same rules as examples/tenant-longer-grace, in Rust.
//
// Settings: `grace_until` (required), an RFC 3339 instant in UTC such as
// 2030-01-01T00:00:00Z, or seconds since the epoch.
//
// Build: `npm ci && npm run build` writes tenant-js.wasm.

let graceUntil = null;

function parseInstant(text) {
  const t = text.trim();
  if (/^-?\d+$/.test(t)) return BigInt(t);
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/.test(t)) return null;
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? null : BigInt(ms / 1000);
}

export const tenantPolicy = {
  configure(settings) {
    let until = null;
    for (const { key, value } of settings) {
      if (key !== 'grace_until') {
        throw `unknown setting '${key}' (this policy knows 'grace_until')`;
      }
      until = parseInstant(value);
      if (until === null) {
        throw `setting 'grace_until': '${value}' is not YYYY-MM-DDTHH:MM:SSZ or epoch seconds`;
      }
    }
    if (until === null) throw "setting 'grace_until' is required";
    graceUntil = until;
  },

  Session: class Session {
    constructor(facts) {
      this.time = facts.time.seconds;
    }

    rcptTo(sender, recipient, base) {
      const attr36 = base.reason === 'attr36';
      if (attr36 && base.action === 'reject' && this.time < graceUntil) {
        return {
          ...base,
          action: 'defer',
          code: 451,
          enhanced: '4.4.4',
          text: 'Relay Access Denied, unrecognized sender domain. ATTR36',
          explanation: [
            ...base.explanation,
            `tenant policy (JavaScript): longer grace period for this tenant until epoch ${graceUntil}: deferred, not rejected`,
          ],
        };
      }
      return base;
    }
  },
};

// A rogue tenant policy in JavaScript (componentize-js), for the relay's
// tests: its `behavior` setting makes every rcpt-to trap (`trap`), spin
// (`loop`), allocate without end (`bomb`) or attribute the mail to
// another tenant (`steal`). Built with examples/tenant-js's toolchain.

let behavior = 'pass';

export const tenantPolicy = {
  configure(settings) {
    for (const { key, value } of settings) {
      if (key !== 'behavior') throw `unknown setting '${key}'`;
      behavior = value;
    }
  },

  Session: class Session {
    constructor(facts) {
      this.facts = facts;
    }

    rcptTo(sender, recipient, base) {
      switch (behavior) {
        case 'trap':
          throw new Error('rogue JavaScript tenant policy');
        case 'loop':
          for (;;) {}
        case 'bomb': {
          const hoard = [];
          for (;;) hoard.push(new Array(1 << 20).fill(behavior));
        }
        case 'steal':
          return { ...base, tenant: 'litware' };
        default:
          return base;
      }
    }
  },
};

// Preloaded with `node --require ./resolve.js`: host names listed in DPSD_TEST_HOSTS (a JSON
// object of name -> IPv4 address) resolve to those addresses in this process, as /etc/hosts
// entries would. Every other name goes to the system resolver.
'use strict';

const dns = require('dns');

const names = JSON.parse(process.env.DPSD_TEST_HOSTS || '{}');
const systemLookup = dns.lookup;

dns.lookup = function lookup(hostname, options, callback) {
  if (typeof options === 'function') {
    callback = options;
    options = {};
  }
  const address = names[hostname];
  if (address === undefined) return systemLookup.call(dns, hostname, options, callback);
  const all = typeof options === 'object' && options !== null && options.all;
  if (all) return process.nextTick(callback, null, [{ address, family: 4 }]);
  return process.nextTick(callback, null, address, 4);
};

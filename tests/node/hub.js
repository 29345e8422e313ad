#!/usr/bin/env node
// Drives an IoT hub's registry with the official Node service client (azure-iothub's Registry,
// unchanged) and prints one JSON object of what it saw:
//   {"provisioned": {ID: {"device": {...}, "twin": {...}} | {"error": {...}}},
//    "crud": [{"step": NAME, "ok": true, "result": ...} | {"step": NAME, "ok": false, "error": {...}}],
//    "cleanup": [{"deviceId": ID, "ok": bool}]}
// The provisioned devices are read as Microsoft's provisioning end-to-end tests read them
// (getTwin after registering, then delete), then a scratch device goes through create, get,
// update, getTwin, updateTwin, queries and delete.
//
// Environment:
//   IOTHUB_CONNECTION_STRING  the hub's owner connection string (the client uses port 443)
//   HUB_PROVISIONED_DEVICES   JSON list of device ids to read and then delete
//   HUB_SCRATCH_DEVICE        the id of the scratch device
//   NODE_EXTRA_CA_CERTS       the CA that signs the hub's certificate (read by Node itself)
//
// Plain CommonJS, no build step; the pytest side (tests/e2e/test_node_hub.py) asserts.
'use strict';

const { Registry } = require('azure-iothub');

function required(name) {
  const value = process.env[name];
  if (!value) {
    process.stderr.write(`${name} is not set\n`);
    process.exit(2);
  }
  return value;
}

const registry = Registry.fromConnectionString(required('IOTHUB_CONNECTION_STRING'));
const provisioned = JSON.parse(required('HUB_PROVISIONED_DEVICES'));
const scratch = required('HUB_SCRATCH_DEVICE');

function describeError(err) {
  const response = err && err.response;
  return {
    name: err && err.constructor ? err.constructor.name : typeof err,
    message: err && err.message,
    statusCode: response ? response.statusCode || null : null,
    errorCode: response && response.headers ? response.headers['iothub-errorcode'] || null : null,
    responseBody: err && err.responseBody !== undefined ? String(err.responseBody) : null,
  };
}

async function attempt(step, action) {
  try {
    return { step, ok: true, result: await action() };
  } catch (err) {
    return { step, ok: false, error: describeError(err) };
  }
}

async function readProvisioned() {
  const seen = {};
  for (const deviceId of provisioned) {
    try {
      const device = (await registry.get(deviceId)).responseBody;
      const twin = (await registry.getTwin(deviceId)).responseBody;
      seen[deviceId] = { device, twin: twin.toJSON ? twin.toJSON() : twin };
    } catch (err) {
      seen[deviceId] = { error: describeError(err) };
    }
  }
  return seen;
}

async function allPages(query, next) {
  const items = [];
  do {
    const page = await next(query);
    items.push(...page.result);
  } while (query.hasMoreResults);
  return items;
}

async function crud() {
  const steps = [];
  const record = async (step, action) => {
    const line = await attempt(step, action);
    steps.push(line);
    return line;
  };
  await record('create', async () => (await registry.create({ deviceId: scratch })).responseBody);
  await record('createAgain', async () => (await registry.create({ deviceId: scratch })).responseBody);
  await record('get', async () => (await registry.get(scratch)).responseBody);
  await record('update', async () => (await registry.update({ deviceId: scratch, status: 'disabled' })).responseBody);
  const twin = await record('getTwin', async () => (await registry.getTwin(scratch)).responseBody.toJSON());
  const etag = twin.ok ? twin.result.etag : '*';
  const patch = { tags: { site: 'scratch' }, properties: { desired: { speed: 3 } } };
  await record('updateTwin', async () => (await registry.updateTwin(scratch, patch, etag)).responseBody.toJSON());
  await record('updateTwinStaleEtag', async () => (await registry.updateTwin(scratch, patch, etag)).responseBody);
  await record('queryTags', async () =>
    (await allPages(registry.createQuery("SELECT * FROM devices WHERE tags.site = 'scratch'", 1), (q) => q.nextAsTwin())).map(
      (t) => t.deviceId
    )
  );
  await record('queryPaged', async () =>
    (await allPages(registry.createQuery('SELECT * FROM devices', 1), (q) => q.nextAsTwin())).length
  );
  await record('count', async () => await allPages(registry.createQuery('SELECT COUNT() AS total FROM devices'), (q) => q.next()));
  await record('list', async () => (await registry.list()).responseBody.map((d) => d.deviceId));
  await record('delete', async () => (await registry.delete(scratch)).responseBody || null);
  await record('getDeleted', async () => (await registry.get(scratch)).responseBody);
  return steps;
}

async function cleanup() {
  const results = [];
  for (const deviceId of provisioned) {
    const line = await attempt('delete', async () => (await registry.delete(deviceId)).responseBody || null);
    results.push({ deviceId, ok: line.ok, error: line.error || null });
  }
  return results;
}

async function main() {
  const seen = await readProvisioned();
  const steps = await crud();
  const cleaned = await cleanup();
  process.stdout.write(JSON.stringify({ provisioned: seen, crud: steps, cleanup: cleaned }) + '\n');
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  }
);

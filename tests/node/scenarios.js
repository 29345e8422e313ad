#!/usr/bin/env node
// Drives the official Node DPS service SDK (azure-iot-provisioning-service) against a running
// dpsd and prints one JSON line per scenario:
//   {"scenario": NAME, "ok": true, "result": {...observations...}}
//   {"scenario": NAME, "ok": false, "error": {...the error...}}
// then a last line {"done": true, "count": N}. The scenarios only observe; the pytest side
// (tests/e2e/test_node_sdk.py) asserts on the observations.
//
// Environment:
//   DPS_SERVICE_CONNECTION_STRING  the service connection string (HostName without a port:
//                                  the SDK only connects to port 443)
//   DPS_SCENARIO_TIMEOUT_MS        bound on each scenario (default 10000)
//   NODE_EXTRA_CA_CERTS            the dpsd CA (read by Node itself at start)
//
// Plain CommonJS, no build step.
'use strict';

const crypto = require('crypto');
const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');

const API_VERSION = '2021-10-01';
const PAGE_SIZE = 3;
const PAGED_COUNT = 7;
const MAX_PAGES = 50;
const RUN = crypto.randomBytes(3).toString('hex');

const connectionString = process.env.DPS_SERVICE_CONNECTION_STRING;
if (!connectionString) {
  process.stderr.write('DPS_SERVICE_CONNECTION_STRING is not set\n');
  process.exit(2);
}
const scenarioTimeoutMs = Number(process.env.DPS_SCENARIO_TIMEOUT_MS || 10000);
const client = ProvisioningServiceClient.fromConnectionString(connectionString);

let counter = 0;
function newId(prefix) {
  counter += 1;
  return `${prefix}-${RUN}-${counter}`;
}

function symmetricKeyEnrollment(registrationId, fields) {
  return { registrationId, attestation: { type: 'symmetricKey' }, ...(fields || {}) };
}

function symmetricKeyGroup(enrollmentGroupId, fields) {
  return { enrollmentGroupId, attestation: { type: 'symmetricKey' }, ...(fields || {}) };
}

function parseMaybeJson(text) {
  if (typeof text !== 'string') return text === undefined ? null : text;
  try {
    return JSON.parse(text);
  } catch (_) {
    return text;
  }
}

/** What the SDK surfaced for a failed call: its class, status, parsed body. */
function describeError(err) {
  if (!(err instanceof Error)) return { name: typeof err, message: String(err) };
  const response = err.response;
  return {
    name: err.constructor ? err.constructor.name : err.name,
    message: err.message,
    statusCode: response ? response.statusCode : null,
    contentType: response && response.headers ? response.headers['content-type'] || null : null,
    responseBody: parseMaybeJson(err.responseBody),
    code: err.code || null,
  };
}

/** Run `call` expecting it to fail; report the error, or what came back if it did not. */
async function failure(call) {
  try {
    const result = await call();
    return {
      failed: false,
      statusCode: result && result.httpResponse ? result.httpResponse.statusCode : null,
      body: result ? result.responseBody : null,
    };
  } catch (err) {
    return { failed: true, ...describeError(err) };
  }
}

/** Facts of a successful SDK result (`{responseBody, httpResponse}`). */
function response(result) {
  const http = result.httpResponse;
  return {
    statusCode: http.statusCode,
    contentType: http.headers['content-type'] || null,
    body: result.responseBody,
  };
}

function keysOf(attestation) {
  const keys = attestation && attestation.symmetricKey;
  return keys ? { primaryKey: keys.primaryKey || null, secondaryKey: keys.secondaryKey || null } : null;
}

/** runBulkEnrollmentOperation only settles through its callback: in 1.11.2 its promise form
 * checks the (absent) user callback before settling, so the promise never resolves. */
function runBulk(operation) {
  return new Promise((resolve, reject) => {
    client.runBulkEnrollmentOperation(operation, (err, body, httpResponse) => {
      if (err) reject(err);
      else resolve({ responseBody: body, httpResponse });
    });
  });
}

/** The SDK has no bulk operation for enrollment groups: send it through the client's own
 * RestApiClient (same signing, headers and error translation as every SDK call). */
function runGroupBulk(operation) {
  return new Promise((resolve, reject) => {
    const headers = { Accept: 'application/json', 'Content-Type': 'application/json; charset=utf-8' };
    client._restApiClient.executeApiCall(
      'POST',
      `/enrollmentGroups?api-version=${API_VERSION}`,
      headers,
      operation,
      (err, body, httpResponse) => {
        if (err) reject(err);
        else resolve({ responseBody: body, httpResponse });
      }
    );
  });
}

/** One page through the callback form of `next`, which follows `query.continuationToken`. */
function nextByCallback(query) {
  return new Promise((resolve, reject) => {
    query.next((err, body, httpResponse) => {
      if (err) reject(err);
      else resolve({ responseBody: body, httpResponse });
    });
  });
}

/** Every page of a query, following x-ms-continuation until the SDK says no more.
 * The token is passed explicitly: in 1.11.2 the promise form `query.next()` (no argument)
 * drops the stored continuation token and would fetch the first page forever; the callback
 * form and `next(token)` use it. */
async function allPages(query, useCallback) {
  const pages = [];
  while (query.hasMoreResults) {
    if (pages.length >= MAX_PAGES) throw new Error(`more than ${MAX_PAGES} pages`);
    const result = useCallback ? await nextByCallback(query) : await query.next(query.continuationToken);
    const body = result.responseBody;
    pages.push({
      statusCode: result.httpResponse.statusCode,
      contentType: result.httpResponse.headers['content-type'] || null,
      continuation: result.httpResponse.headers['x-ms-continuation'] || null,
      isArray: Array.isArray(body),
      items: Array.isArray(body) ? body : [],
      raw: Array.isArray(body) ? null : body,
    });
  }
  return pages;
}

// --- individual enrollments -------------------------------------------------------------------

const ENROLLMENT_SCENARIOS = {
  // First, while the store is empty, so that the query sees exactly these enrollments.
  async enrollment_query_paging() {
    const ids = [];
    for (let i = 0; i < PAGED_COUNT; i += 1) {
      const id = newId('q');
      ids.push(id);
      await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id));
    }
    const pages = await allPages(client.createIndividualEnrollmentQuery({ query: 'SELECT *' }, PAGE_SIZE), false);
    return {
      created: ids,
      pageSize: PAGE_SIZE,
      pages: pages.map((page) => ({
        statusCode: page.statusCode,
        contentType: page.contentType,
        continuation: page.continuation,
        isArray: page.isArray,
        raw: page.raw,
        ids: page.items.map((item) => item.registrationId),
        keys: page.items.map((item) => keysOf(item.attestation)),
      })),
    };
  },

  async enrollment_create() {
    const id = newId('create');
    const created = response(await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id)));
    return { id, ...created };
  },

  async enrollment_get() {
    const id = newId('get');
    const created = (await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id))).responseBody;
    const fetched = response(await client.getIndividualEnrollment(id));
    return { id, createdEtag: created.etag, createdKeys: keysOf(created.attestation), ...fetched };
  },

  async enrollment_update_with_etag() {
    const id = newId('update');
    const created = (await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id))).responseBody;
    // The whole object the create returned (etag, dates, keys), changed, sent back.
    const changed = { ...created, provisioningStatus: 'disabled', deviceId: `${id}-device` };
    const updated = response(await client.createOrUpdateIndividualEnrollment(changed));
    const fetched = (await client.getIndividualEnrollment(id)).responseBody;
    return {
      id,
      createdEtag: created.etag,
      createdKeys: keysOf(created.attestation),
      createdDateTimeUtc: created.createdDateTimeUtc,
      ...updated,
      fetched,
    };
  },

  async enrollment_update_stale_etag() {
    const id = newId('stale');
    const created = (await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id))).responseBody;
    const updated = (await client.createOrUpdateIndividualEnrollment({ ...created, provisioningStatus: 'disabled' }))
      .responseBody;
    const stale = await failure(() =>
      client.createOrUpdateIndividualEnrollment({ ...created, provisioningStatus: 'enabled' })
    );
    const fetched = (await client.getIndividualEnrollment(id)).responseBody;
    return { id, createdEtag: created.etag, updatedEtag: updated.etag, stale, fetched };
  },

  async enrollment_create_existing_without_etag() {
    const id = newId('exists');
    await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id));
    const again = await failure(() => client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id)));
    return { id, again };
  },

  async enrollment_attestation_mechanism() {
    const id = newId('mech');
    const created = (await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(id))).responseBody;
    const mechanism = response(await client.getIndividualEnrollmentAttestationMechanism(id));
    const missing = await failure(() => client.getIndividualEnrollmentAttestationMechanism(newId('mech-missing')));
    return { id, createdKeys: keysOf(created.attestation), ...mechanism, missing };
  },

  async enrollment_bulk() {
    const ids = [newId('bulk'), newId('bulk'), newId('bulk')];
    const created = response(
      await runBulk({ mode: 'create', enrollments: ids.map((id) => symmetricKeyEnrollment(id)) })
    );
    const fetched = [];
    for (const id of ids) fetched.push((await client.getIndividualEnrollment(id)).responseBody.registrationId);
    const duplicate = response(
      await runBulk({ mode: 'create', enrollments: [symmetricKeyEnrollment(ids[0])] })
    );
    const missing = newId('bulk-missing');
    const deleted = response(
      await runBulk({
        mode: 'delete',
        enrollments: [...ids, missing].map((registrationId) => ({ registrationId })),
      })
    );
    const after = [];
    for (const id of ids) after.push(await failure(() => client.getIndividualEnrollment(id)));
    return { ids, missing, created, fetched, duplicate, deleted, after };
  },

  async enrollment_delete() {
    const byId = newId('del-id');
    await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(byId));
    const deleteById = await failure(() => client.deleteIndividualEnrollment(byId));
    const getAfterDeleteById = await failure(() => client.getIndividualEnrollment(byId));

    const byObject = newId('del-obj');
    const created = (await client.createOrUpdateIndividualEnrollment(symmetricKeyEnrollment(byObject))).responseBody;
    const updated = (await client.createOrUpdateIndividualEnrollment({ ...created, provisioningStatus: 'disabled' }))
      .responseBody;
    // The object as created: its etag is stale now.
    const deleteStaleObject = await failure(() => client.deleteIndividualEnrollment(created));
    const deleteObject = await failure(() => client.deleteIndividualEnrollment(updated));
    const getAfterDeleteObject = await failure(() => client.getIndividualEnrollment(byObject));
    const deleteAgain = await failure(() => client.deleteIndividualEnrollment(byObject));
    return {
      byId,
      byObject,
      deleteById,
      getAfterDeleteById,
      deleteStaleObject,
      deleteObject,
      getAfterDeleteObject,
      deleteAgain,
    };
  },

  async enrollment_get_unknown() {
    const id = newId('unknown');
    return { id, get: await failure(() => client.getIndividualEnrollment(id)) };
  },
};

// --- enrollment groups ------------------------------------------------------------------------

const GROUP_SCENARIOS = {
  async group_query_paging() {
    const ids = [];
    for (let i = 0; i < PAGED_COUNT; i += 1) {
      const id = newId('gq');
      ids.push(id);
      await client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(id));
    }
    // Paged with the callback form of next(), the individual enrollments with next(token).
    const pages = await allPages(client.createEnrollmentGroupQuery({ query: 'SELECT *' }, PAGE_SIZE), true);
    return {
      created: ids,
      pageSize: PAGE_SIZE,
      pages: pages.map((page) => ({
        statusCode: page.statusCode,
        contentType: page.contentType,
        continuation: page.continuation,
        isArray: page.isArray,
        raw: page.raw,
        ids: page.items.map((item) => item.enrollmentGroupId),
        keys: page.items.map((item) => keysOf(item.attestation)),
      })),
    };
  },

  async group_create() {
    const id = newId('gcreate');
    return { id, ...response(await client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(id))) };
  },

  async group_get() {
    const id = newId('gget');
    const created = (await client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(id))).responseBody;
    const fetched = response(await client.getEnrollmentGroup(id));
    return { id, createdEtag: created.etag, createdKeys: keysOf(created.attestation), ...fetched };
  },

  async group_update_with_etag() {
    const id = newId('gupdate');
    const created = (await client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(id))).responseBody;
    const changed = { ...created, provisioningStatus: 'disabled' };
    const updated = response(await client.createOrUpdateEnrollmentGroup(changed));
    const fetched = (await client.getEnrollmentGroup(id)).responseBody;
    return {
      id,
      createdEtag: created.etag,
      createdKeys: keysOf(created.attestation),
      createdDateTimeUtc: created.createdDateTimeUtc,
      ...updated,
      fetched,
    };
  },

  async group_update_stale_etag() {
    const id = newId('gstale');
    const created = (await client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(id))).responseBody;
    const updated = (await client.createOrUpdateEnrollmentGroup({ ...created, provisioningStatus: 'disabled' }))
      .responseBody;
    const stale = await failure(() => client.createOrUpdateEnrollmentGroup({ ...created, provisioningStatus: 'enabled' }));
    const fetched = (await client.getEnrollmentGroup(id)).responseBody;
    return { id, createdEtag: created.etag, updatedEtag: updated.etag, stale, fetched };
  },

  async group_create_existing_without_etag() {
    const id = newId('gexists');
    await client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(id));
    const again = await failure(() => client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(id)));
    return { id, again };
  },

  async group_attestation_mechanism() {
    // The SDK posts to /enrollmentgroups/{id}/attestationmechanism (lower-case "g").
    const id = newId('gmech');
    const created = (await client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(id))).responseBody;
    const mechanism = response(await client.getEnrollmentGroupAttestationMechanism(id));
    const missing = await failure(() => client.getEnrollmentGroupAttestationMechanism(newId('gmech-missing')));
    return { id, createdKeys: keysOf(created.attestation), ...mechanism, missing };
  },

  async group_bulk() {
    const ids = [newId('gbulk'), newId('gbulk'), newId('gbulk')];
    const created = response(
      await runGroupBulk({ mode: 'create', enrollmentGroups: ids.map((id) => symmetricKeyGroup(id)) })
    );
    const fetched = [];
    for (const id of ids) fetched.push((await client.getEnrollmentGroup(id)).responseBody.enrollmentGroupId);
    const missing = newId('gbulk-missing');
    const deleted = response(
      await runGroupBulk({
        mode: 'delete',
        enrollmentGroups: [...ids, missing].map((enrollmentGroupId) => ({ enrollmentGroupId })),
      })
    );
    const after = [];
    for (const id of ids) after.push(await failure(() => client.getEnrollmentGroup(id)));
    return { ids, missing, created, fetched, deleted, after };
  },

  async group_delete() {
    const byId = newId('gdel-id');
    await client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(byId));
    const deleteById = await failure(() => client.deleteEnrollmentGroup(byId));
    const getAfterDeleteById = await failure(() => client.getEnrollmentGroup(byId));

    const byObject = newId('gdel-obj');
    const created = (await client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(byObject))).responseBody;
    const updated = (await client.createOrUpdateEnrollmentGroup({ ...created, provisioningStatus: 'disabled' }))
      .responseBody;
    const deleteStaleObject = await failure(() => client.deleteEnrollmentGroup(created));
    const deleteObject = await failure(() => client.deleteEnrollmentGroup(updated));
    const getAfterDeleteObject = await failure(() => client.getEnrollmentGroup(byObject));
    const deleteAgain = await failure(() => client.deleteEnrollmentGroup(byObject));
    return {
      byId,
      byObject,
      deleteById,
      getAfterDeleteById,
      deleteStaleObject,
      deleteObject,
      getAfterDeleteObject,
      deleteAgain,
    };
  },

  async group_get_unknown() {
    const id = newId('gunknown');
    return { id, get: await failure(() => client.getEnrollmentGroup(id)) };
  },
};

// --- registration states ----------------------------------------------------------------------

const REGISTRATION_SCENARIOS = {
  async registration_get_unknown() {
    const id = newId('reg-unknown');
    return { id, get: await failure(() => client.getDeviceRegistrationState(id)) };
  },

  async registration_delete_unknown() {
    const id = newId('reg-unknown');
    return { id, delete: await failure(() => client.deleteDeviceRegistrationState(id)) };
  },

  async registration_group_query_empty() {
    const groupId = newId('reg-group');
    await client.createOrUpdateEnrollmentGroup(symmetricKeyGroup(groupId));
    const query = client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: 'SELECT *' }, groupId, PAGE_SIZE);
    const result = await query.next();
    return {
      groupId,
      ...response(result),
      continuation: result.httpResponse.headers['x-ms-continuation'] || null,
      hasMoreResults: query.hasMoreResults,
    };
  },
};

const SCENARIOS = { ...ENROLLMENT_SCENARIOS, ...GROUP_SCENARIOS, ...REGISTRATION_SCENARIOS };

function withTimeout(promise, ms, name) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`scenario ${name} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function emit(line) {
  process.stdout.write(JSON.stringify(line) + '\n');
}

async function main() {
  const only = process.argv.slice(2);
  const names = only.length ? only : Object.keys(SCENARIOS);
  let count = 0;
  for (const name of names) {
    const scenario = SCENARIOS[name];
    const started = Date.now();
    if (!scenario) {
      emit({ scenario: name, ok: false, error: { name: 'UnknownScenario', message: name } });
      continue;
    }
    try {
      const result = await withTimeout(scenario(), scenarioTimeoutMs, name);
      emit({ scenario: name, ok: true, ms: Date.now() - started, result });
    } catch (err) {
      emit({ scenario: name, ok: false, ms: Date.now() - started, error: describeError(err), stack: err && err.stack });
    }
    count += 1;
  }
  emit({ done: true, count });
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  }
);

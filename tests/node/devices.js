#!/usr/bin/env node
// Provisions devices through a running dpsd with the official Node device SDK
// (azure-iot-provisioning-device over azure-iot-provisioning-device-http, -mqtt's `Mqtt` and
// `MqttWs`, or -amqp's `Amqp` and `AmqpWs`; symmetric keys from azure-iot-security-symmetric-key, X.509 client certificates from
// azure-iot-security-x509, TPM from azure-iot-security-tpm on tss.js, through tpm_bridge.js to
// a swtpm) and prints one JSON line per scenario:
//   {"scenario": NAME, "transport": T, "ok": true, "ms": N, "result": {...registrationState...},
//    "calls": [...]}
//   {"scenario": NAME, "transport": T, "ok": false, "ms": N, "error": {...the error...},
//    "calls": [...]}
// then a last line {"done": true, "count": N}. `calls` lists every request the transport made
// (register or poll) with what came back and the polling interval the SDK derived from it (over
// MQTT and AMQP there is no HTTP response: statusCode and retryAfter are null).
// The scenarios run concurrently (each with its own client); the script only observes, the
// pytest side (tests/e2e/test_node_device_sdk.py, test_node_mqtt_sdk.py, test_node_amqp_sdk.py)
// asserts.
//
// Environment:
//   DPS_PROVISIONING_HOST    the provisioning host (no port: the HTTP transport uses port 443,
//                            MqttWs and AmqpWs wss://HOST:443/$iothub/websocket; Mqtt connects
//                            to mqtts://HOST and Amqp to amqps://HOST, so "HOST:PORT" picks
//                            their port, 8883 and 5671 by default)
//   DPS_ID_SCOPE             the ID scope the devices register in
//   DPS_DEVICE_SCENARIOS     JSON list of {"name", "registrationId", "payload"?, "idScope"?,
//                            "transport"? ("http", the default, "mqtt", "mqttws", "amqp" or
//                            "amqpws"),
//                            "provisioningHost"? (instead of DPS_PROVISIONING_HOST),
//                            "retryThrottled"? (register again, after the retry-after it was
//                            told, when the SDK rejects with a 429: see registerAsTold)} with
//                            either "key" (symmetric key), "certFile" and "keyFile" (X.509: the
//                            PEM certificate file, leaf first then any chain it sends, and the
//                            leaf's PEM private key), or "tpm": {"host", "port", "bridgeHost"}
//                            (the device's swtpm, and where its bridge listens; a TPM scenario
//                            without "registrationId" lets the SDK derive it from the EK, and
//                            once assigned its result carries "signedProbe": base64 of what
//                            the TPM signs for the text "dpsd-probe" with the key it was given)
//   DPS_SCENARIO_TIMEOUT_MS  bound on each scenario (default 10000)
//   NODE_EXTRA_CA_CERTS      the dpsd CA (read by Node itself at start)
//
// Plain CommonJS, no build step.
'use strict';

const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { X509Security } = require('azure-iot-security-x509');
const fs = require('fs');

/** A new transport of the scenario's kind; the MQTT and AMQP packages are loaded only when used. */
const TRANSPORTS = {
  http: () => new Http(),
  mqtt: () => new (require('azure-iot-provisioning-device-mqtt').Mqtt)(),
  mqttws: () => new (require('azure-iot-provisioning-device-mqtt').MqttWs)(),
  amqp: () => new (require('azure-iot-provisioning-device-amqp').Amqp)(),
  amqpws: () => new (require('azure-iot-provisioning-device-amqp').AmqpWs)(),
};

function required(name) {
  const value = process.env[name];
  if (!value) {
    process.stderr.write(`${name} is not set\n`);
    process.exit(2);
  }
  return value;
}

const provisioningHost = required('DPS_PROVISIONING_HOST');
const idScope = required('DPS_ID_SCOPE');
const scenarios = JSON.parse(required('DPS_DEVICE_SCENARIOS'));
const scenarioTimeoutMs = Number(process.env.DPS_SCENARIO_TIMEOUT_MS || 10000);

function parseMaybeJson(text) {
  if (typeof text !== 'string') return text === undefined ? null : text;
  try {
    return JSON.parse(text);
  } catch (_) {
    return text;
  }
}

function headerOf(response, name) {
  return response && response.headers ? response.headers[name] || null : null;
}

/** What the SDK surfaced: its class, message, HTTP status and body, and any `result` it
 * attached (the polling state machine attaches the operation status to the errors it makes). */
function describeError(err) {
  if (!(err instanceof Error)) {
    // rhea hands AMQP errors over as plain {condition, description} objects.
    const amqp = err && typeof err === 'object' ? err : {};
    return {
      name: typeof err,
      message: String(err),
      condition: amqp.condition || null,
      description: parseMaybeJson(amqp.description),
    };
  }
  const response = err.response;
  const transportObject = err.transportObject;
  return {
    name: err.constructor ? err.constructor.name : err.name,
    message: err.message,
    statusCode: response ? response.statusCode || null : null,
    contentType: headerOf(response, 'content-type'),
    errorCodeHeader: headerOf(response, 'x-ms-error-code'),
    responseBody: parseMaybeJson(err.responseBody),
    result: err.result === undefined ? null : err.result,
    code: err.code || null,
    // translateError over MQTT attaches {topic, payload} of the answer it failed on.
    topic: transportObject && typeof transportObject.topic === 'string' ? transportObject.topic : null,
  };
}

/** Wrap the transport's two requests to record each one as the SDK sees it. */
function recordCalls(transport, calls, started) {
  for (const [method, call] of [
    ['registrationRequest', 'register'],
    ['queryOperationStatus', 'poll'],
  ]) {
    const original = transport[method].bind(transport);
    transport[method] = (...args) => {
      const callback = args.pop();
      const entry = { call, startedMs: Date.now() - started };
      calls.push(entry);
      original(...args, (err, result, response, pollingInterval) => {
        entry.endedMs = Date.now() - started;
        entry.statusCode = response ? response.statusCode : err && err.response ? err.response.statusCode : null;
        entry.retryAfter = headerOf(response || (err && err.response), 'retry-after');
        entry.status = result && typeof result === 'object' ? result.status || null : null;
        entry.pollingInterval = pollingInterval === undefined ? null : pollingInterval;
        entry.error = err ? err.constructor.name : null;
        callback(err, result, response, pollingInterval);
      });
    };
  }
}

/** The SDK's register, sent again after the retry-after dpsd answered when the SDK rejected
 * with a 429 and the scenario asks for that. Over MQTT and AMQP the SDK itself waits and
 * retries; over HTTPS it cannot: azure-iot-http-base turns every status >= 300 into an error
 * (ThrottlingError for 429) before the transport's own `>= 429: registering` branch sees it,
 * so a device on HTTPS must honour the retry-after itself, as this does. */
async function registerAsTold(client, scenario) {
  for (;;) {
    try {
      return await client.register();
    } catch (err) {
      const response = err && err.response;
      const told = response && response.statusCode === 429 ? Number(headerOf(response, 'retry-after')) : NaN;
      if (!scenario.retryThrottled || !(told > 0)) throw err;
      await new Promise((resolve) => setTimeout(resolve, told * 1000));
    }
  }
}

function withTimeout(promise, ms, name) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`scenario ${name} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The scenario's security client: a TPM one talks to swtpm through a bridge of its own
 * (which ends with this process). */
async function securityClient(scenario) {
  if (scenario.tpm) {
    const { TpmSecurityClient } = require('azure-iot-security-tpm');
    const { Tpm } = require('tss.js');
    const { startBridge } = require('./tpm_bridge');
    const bridge = await startBridge(scenario.tpm, scenario.tpm.bridgeHost);
    const tpm = new Tpm(true, bridge.host, bridge.port);
    return new TpmSecurityClient(scenario.registrationId || undefined, tpm);
  }
  if (scenario.certFile) {
    return new X509Security(scenario.registrationId, {
      cert: fs.readFileSync(scenario.certFile, 'utf8'),
      key: fs.readFileSync(scenario.keyFile, 'utf8'),
    });
  }
  return new SymmetricKeySecurityClient(scenario.registrationId, scenario.key);
}

/** What the TPM signs with the key the final answer gave it. */
function signProbe(security) {
  return new Promise((resolve, reject) =>
    security.signWithIdentity(Buffer.from('dpsd-probe'), (err, signature) =>
      err ? reject(err) : resolve(signature.toString('base64'))
    )
  );
}

function emit(line) {
  process.stdout.write(JSON.stringify(line) + '\n');
}

async function run(scenario) {
  const started = Date.now();
  const calls = [];
  const kind = scenario.transport || 'http';
  if (!TRANSPORTS[kind]) throw new Error(`scenario ${scenario.name}: unknown transport ${kind}`);
  const transport = TRANSPORTS[kind]();
  recordCalls(transport, calls, started);
  const security = await securityClient(scenario);
  const client = ProvisioningDeviceClient.create(
    scenario.provisioningHost || provisioningHost,
    scenario.idScope || idScope,
    transport,
    security
  );
  if (scenario.payload !== undefined) client.setProvisioningPayload(scenario.payload);
  try {
    const result = await withTimeout(registerAsTold(client, scenario), scenarioTimeoutMs, scenario.name);
    if (scenario.tpm) result.signedProbe = await signProbe(security);
    return { scenario: scenario.name, transport: kind, ok: true, ms: Date.now() - started, result, calls };
  } catch (err) {
    return {
      scenario: scenario.name,
      transport: kind,
      ok: false,
      ms: Date.now() - started,
      error: describeError(err),
      calls,
      stack: err && err.stack,
    };
  }
}

async function main() {
  const lines = await Promise.all(scenarios.map((scenario) => run(scenario).then((line) => (emit(line), line))));
  emit({ done: true, count: lines.length });
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  }
);

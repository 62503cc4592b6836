// End-to-end test of Tollgate with Metronome's official TypeScript SDK (@metronome/sdk 3.10.0),
// used exactly as a Metronome customer would use it. Started by tests/sdk/run.sh, which passes:
//   METRONOME_BASE_URL, METRONOME_BEARER_TOKEN  the server under test
//   METRONOME_WEBHOOK_SECRET, WEBHOOK_PORT       the webhook destination configured in the server;
//                                                this script serves it and checks every signature
//                                                with client.webhooks.unwrap.
// Every step asserts; the first failure ends the run with exit code 1.

import assert from 'node:assert/strict';
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import Metronome, {
  AuthenticationError,
  BadRequestError,
  ConflictError,
  NotFoundError,
} from '@metronome/sdk';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`sdk_test: ${name} is not set (run tests/sdk/run.sh)`);
    process.exit(2);
  }
  return value;
};

const baseURL = env('METRONOME_BASE_URL');
const bearerToken = env('METRONOME_BEARER_TOKEN');
const webhookSecret = env('METRONOME_WEBHOOK_SECRET');
const webhookPort = Number(env('WEBHOOK_PORT'));

const client = new Metronome({ bearerToken, baseURL, webhookSecret });

const started = Date.now();
const run = randomUUID().slice(0, 8);
const passed = [];

// ---------------------------------------------------------------------------------------------
// Helpers

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs one named step; a failure prints what failed and ends the process. */
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
  } catch (error) {
    console.error(`\nFAIL  ${name}`);
    console.error(error?.stack ?? error);
    if (error?.status) console.error('HTTP status:', error.status, 'body:', JSON.stringify(error.error));
    await shutdown();
    process.exit(1);
  }
  passed.push(name);
  console.log(`ok    ${name} (${Date.now() - t0} ms)`);
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
async function waitFor(what, check, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    assert.deepEqual(rejectedWebhooks.map((r) => r.error), [], 'webhooks.unwrap rejected a delivery');
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) {
      throw new assert.AssertionError({
        message: `timed out after ${timeoutMs} ms waiting for ${what}; webhooks so far: ${JSON.stringify(
          webhooks.map((w) => w.event),
          null,
          1,
        )}`,
      });
    }
    await sleep(50);
  }
}

/** Asserts the fields the SDK's TypeScript types declare as required are present. */
function requireFields(object, fields, label) {
  assert.ok(object && typeof object === 'object', `${label}: expected an object, got ${JSON.stringify(object)}`);
  for (const field of fields) {
    assert.ok(
      object[field] !== undefined,
      `${label}: required field "${field}" is missing in ${JSON.stringify(object)}`,
    );
  }
}

/** Collects every item of an SDK list through `for await` (follows next_page to the end). */
async function collect(pagePromise, maxItems = 1000) {
  const items = [];
  for await (const item of pagePromise) {
    items.push(item);
    assert.ok(items.length <= maxItems, `pagination did not terminate after ${maxItems} items`);
  }
  return items;
}

/** Asserts `promise` rejects with an SDK error of class `ErrorClass` and returns the error. */
async function expectError(promise, ErrorClass, status) {
  try {
    const value = await promise;
    assert.fail(`expected ${ErrorClass.name} (${status}), got success: ${JSON.stringify(value)}`);
  } catch (error) {
    if (error instanceof assert.AssertionError) throw error;
    assert.ok(
      error instanceof ErrorClass,
      `expected ${ErrorClass.name}, got ${error?.constructor?.name}: ${error?.message}`,
    );
    assert.equal(error.status, status);
    return error;
  }
}

/** `n` API calls ($1 each) of the customer with ingest alias `alias`, now. */
const apiCalls = (alias, prefix, n) => ({
  usage: Array.from({ length: n }, (_, i) => ({
    transaction_id: `${run}-${prefix}-${i}`,
    customer_id: alias,
    event_type: 'api_call',
    timestamp: iso(Date.now()),
    properties: {},
  })),
});

const hourMs = 3_600_000;
const now = new Date();
const iso = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
const pastHour = iso(Math.floor(now.getTime() / hourMs) * hourMs - hourMs);
const monthStart = iso(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
const farFuture = '2099-01-01T00:00:00Z';

// ---------------------------------------------------------------------------------------------
// The webhook receiver: every delivery must pass client.webhooks.unwrap.

const webhooks = []; // { event, body, headers }
const rejectedWebhooks = []; // { error, body, headers }

const receiver = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    try {
      const event = client.webhooks.unwrap(body, req.headers);
      webhooks.push({ event, body, headers: { ...req.headers }, path: req.url, method: req.method });
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    } catch (error) {
      rejectedWebhooks.push({ error: error.message, body, headers: { ...req.headers } });
      res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: error.message }));
    }
  });
});

async function shutdown() {
  // The server keeps its webhook connections alive; close them, or close() waits for them.
  const closed = new Promise((resolve) => receiver.close(() => resolve()));
  receiver.closeAllConnections();
  await closed;
}

await new Promise((resolve, reject) => {
  receiver.once('error', reject);
  receiver.listen(webhookPort, '127.0.0.1', resolve);
});

/** Distinct (by webhook id) deliveries matching type and properties. */
function hooks(type, props = {}) {
  const seen = new Map();
  for (const w of webhooks) {
    if (w.event.type !== type) continue;
    if (!Object.entries(props).every(([k, v]) => w.event.properties?.[k] === v)) continue;
    if (!seen.has(w.event.id)) seen.set(w.event.id, w);
  }
  return [...seen.values()];
}

const waitHook = (type, props) =>
  waitFor(`${type} ${JSON.stringify(props)}`, () => {
    const found = hooks(type, props);
    return found.length > 0 ? found[0] : null;
  });

// ---------------------------------------------------------------------------------------------
// 1. Catalog

const catalog = {};

await step('1. catalog: billable metric, USAGE + FIXED products, rate card, FLAT rate; retrieve and list', async () => {
  const metric = await client.v1.billableMetrics.create({
    name: `API calls ${run}`,
    aggregation_type: 'COUNT',
    event_type_filter: { in_values: ['api_call'] },
  });
  requireFields(metric.data, ['id'], 'billableMetrics.create data');
  catalog.metricId = metric.data.id;

  const usage = await client.v1.contracts.products.create({
    name: `API usage ${run}`,
    type: 'USAGE',
    billable_metric_id: catalog.metricId,
  });
  requireFields(usage.data, ['id'], 'products.create data');
  catalog.usageProductId = usage.data.id;

  const fixed = await client.v1.contracts.products.create({ name: `Prepaid commit ${run}`, type: 'FIXED' });
  catalog.commitProductId = fixed.data.id;
  assert.notEqual(catalog.commitProductId, catalog.usageProductId);

  const card = await client.v1.contracts.rateCards.create({ name: `Standard ${run}`, description: 'SDK test' });
  requireFields(card.data, ['id'], 'rateCards.create data');
  catalog.rateCardId = card.data.id;

  const rate = await client.v1.contracts.rateCards.rates.add({
    rate_card_id: catalog.rateCardId,
    product_id: catalog.usageProductId,
    entitled: true,
    rate_type: 'FLAT',
    price: 100,
    starting_at: pastHour,
  });
  requireFields(rate.data, ['rate_type'], 'rates.add data');
  assert.equal(rate.data.rate_type, 'FLAT');
  assert.equal(rate.data.price, 100);

  // Read back.
  const gotMetric = await client.v1.billableMetrics.retrieve({ billable_metric_id: catalog.metricId });
  requireFields(gotMetric.data, ['id', 'name'], 'billableMetrics.retrieve data');
  assert.equal(gotMetric.data.id, catalog.metricId);
  assert.equal(gotMetric.data.aggregation_type, 'COUNT');
  assert.deepEqual(gotMetric.data.event_type_filter?.in_values, ['api_call']);

  const gotProduct = await client.v1.contracts.products.retrieve({ id: catalog.usageProductId });
  requireFields(gotProduct.data, ['id', 'current', 'initial', 'type', 'updates'], 'products.retrieve data');
  requireFields(gotProduct.data.current, ['created_at', 'created_by', 'name'], 'products.retrieve data.current');
  assert.equal(gotProduct.data.type, 'USAGE');
  assert.equal(gotProduct.data.current.billable_metric_id, catalog.metricId);

  const gotCard = await client.v1.contracts.rateCards.retrieve({ id: catalog.rateCardId });
  requireFields(gotCard.data, ['id', 'created_at', 'created_by', 'name'], 'rateCards.retrieve data');
  assert.equal(gotCard.data.name, `Standard ${run}`);

  // Lists with limit 1, so that `for await` must follow next_page and stop on null.
  const metrics = await collect(client.v1.billableMetrics.list({ limit: 1 }));
  assert.ok(metrics.some((m) => m.id === catalog.metricId), 'billableMetrics.list misses the metric');

  const products = await collect(client.v1.contracts.products.list({ limit: 1 }));
  for (const p of products) requireFields(p, ['id', 'current', 'initial', 'type', 'updates'], 'products.list item');
  const productIds = products.map((p) => p.id);
  assert.ok(productIds.includes(catalog.usageProductId) && productIds.includes(catalog.commitProductId),
    `products.list (paged by 1) returned ${JSON.stringify(productIds)}`);
  assert.equal(new Set(productIds).size, productIds.length, 'products.list repeated an item across pages');

  const cards = await collect(client.v1.contracts.rateCards.list({ limit: 1 }));
  assert.ok(cards.some((c) => c.id === catalog.rateCardId), 'rateCards.list misses the rate card');

  const rates = await collect(
    client.v1.contracts.rateCards.rates.list({ rate_card_id: catalog.rateCardId, at: iso(Date.now()), limit: 1 }),
  );
  const usageRate = rates.find((r) => r.product_id === catalog.usageProductId);
  assert.ok(usageRate, `rates.list misses the usage rate: ${JSON.stringify(rates)}`);
  requireFields(usageRate, ['entitled', 'product_custom_fields', 'product_id', 'product_name', 'product_tags', 'rate', 'starting_at'], 'rates.list item');
  assert.equal(usageRate.rate.rate_type, 'FLAT');
  assert.equal(usageRate.rate.price, 100);
});

// ---------------------------------------------------------------------------------------------
// 2. Customers

const customers = {};
const alias = { spend: `spend-${run}`, spend2: `spend-alt-${run}`, prepaid: `prepaid-${run}`, none: `none-${run}` };

await step('2. customers: create with ingest_aliases, retrieve, list (for await), setIngestAliases', async () => {
  for (const kind of ['spend', 'prepaid', 'none']) {
    const created = await client.v1.customers.create({ name: `SDK ${kind} ${run}`, ingest_aliases: [alias[kind]] });
    requireFields(created.data, ['id', 'external_id', 'ingest_aliases', 'name'], 'customers.create data');
    assert.deepEqual(created.data.ingest_aliases, [alias[kind]]);
    assert.equal(created.data.name, `SDK ${kind} ${run}`);
    customers[kind] = created.data.id;
  }

  const detail = await client.v1.customers.retrieve({ customer_id: customers.spend });
  requireFields(detail.data, ['id', 'created_at', 'custom_fields', 'customer_config', 'external_id', 'ingest_aliases', 'name', 'updated_at'], 'customers.retrieve data');
  assert.equal(detail.data.id, customers.spend);
  assert.deepEqual(detail.data.ingest_aliases, [alias.spend]);

  const listed = await collect(client.v1.customers.list({ limit: 2 }));
  const ids = listed.map((c) => c.id);
  for (const kind of ['spend', 'prepaid', 'none']) assert.ok(ids.includes(customers[kind]), `customers.list misses ${kind}`);
  assert.equal(new Set(ids).size, ids.length, 'customers.list repeated an item across pages');

  const byAlias = await collect(client.v1.customers.list({ ingest_alias: alias.prepaid }));
  assert.deepEqual(byAlias.map((c) => c.id), [customers.prepaid]);

  const result = await client.v1.customers.setIngestAliases({
    customer_id: customers.spend,
    ingest_aliases: [alias.spend, alias.spend2],
  });
  assert.ok(result === undefined || result === '' || result === null || typeof result === 'object');
  const after = await client.v1.customers.retrieve({ customer_id: customers.spend });
  assert.deepEqual([...after.data.ingest_aliases].sort(), [alias.spend, alias.spend2].sort());
});

// ---------------------------------------------------------------------------------------------
// 3. Contracts with both threshold configurations

const contracts = {};

await step('3. contracts: spend threshold (EXTERNAL, $10), prepaid commit + auto-recharge (EXTERNAL), spend threshold (NONE)', async () => {
  const spend = await client.v1.contracts.create({
    customer_id: customers.spend,
    rate_card_id: catalog.rateCardId,
    starting_at: monthStart,
    name: 'Spend threshold contract',
    spend_threshold_configuration: {
      commit: { product_id: catalog.commitProductId, name: 'Threshold charge' },
      is_enabled: true,
      payment_gate_config: { payment_gate_type: 'EXTERNAL' },
      threshold_amount: 1000,
    },
  });
  requireFields(spend.data, ['id'], 'contracts.create data');
  contracts.spend = spend.data.id;

  const prepaid = await client.v1.contracts.create({
    customer_id: customers.prepaid,
    rate_card_id: catalog.rateCardId,
    starting_at: monthStart,
    name: 'Prepaid contract',
    commits: [
      {
        type: 'PREPAID',
        product_id: catalog.commitProductId,
        name: 'Initial prepaid commit',
        priority: 10,
        access_schedule: { schedule_items: [{ amount: 5000, starting_at: monthStart, ending_before: farFuture }] },
        invoice_schedule: { schedule_items: [{ timestamp: monthStart, amount: 5000 }] },
      },
    ],
    prepaid_balance_threshold_configuration: {
      commit: { product_id: catalog.commitProductId, name: 'Auto-recharge' },
      is_enabled: true,
      payment_gate_config: { payment_gate_type: 'EXTERNAL' },
      threshold_amount: 2000,
      recharge_to_amount: 5000,
    },
  });
  contracts.prepaid = prepaid.data.id;

  const none = await client.v1.contracts.create({
    customer_id: customers.none,
    rate_card_id: catalog.rateCardId,
    starting_at: monthStart,
    spend_threshold_configuration: {
      commit: { product_id: catalog.commitProductId },
      is_enabled: true,
      payment_gate_config: { payment_gate_type: 'NONE' },
      threshold_amount: 500,
    },
  });
  contracts.none = none.data.id;
  assert.equal(new Set(Object.values(contracts)).size, 3);

  const net = await client.v1.contracts.getNetBalance({ customer_id: customers.prepaid });
  requireFields(net.data, ['balance', 'credit_type_id'], 'getNetBalance data');
  assert.equal(net.data.balance, 5000, 'the initial prepaid commit gives a 5000 balance');

  const list = await client.v1.contracts.list({ customer_id: customers.spend });
  assert.deepEqual(list.data.map((c) => c.id), [contracts.spend]);
});

// ---------------------------------------------------------------------------------------------
// 4. Usage

await step('4. usage.ingest: 10 calls ($10) spend, 30 calls prepaid ($50 -> $20), 5 calls NONE; duplicates ignored', async () => {
  const ts = iso(Date.now());
  const event = (customer_id, tx) => ({
    transaction_id: `${run}-${tx}`,
    customer_id,
    event_type: 'api_call',
    timestamp: ts,
    properties: { region: 'eu' },
  });
  const usage = [];
  // The spend customer's events use both aliases (the second one was set with setIngestAliases).
  for (let i = 0; i < 10; i++) usage.push(event(i % 2 ? alias.spend2 : alias.spend, `spend-${i}`));
  for (let i = 0; i < 30; i++) usage.push(event(alias.prepaid, `prepaid-${i}`));
  for (let i = 0; i < 5; i++) usage.push(event(customers.none, `none-${i}`)); // by customer id
  // An event of an unrelated type: matches no metric, costs nothing.
  usage.push({ ...event(alias.spend, 'other-0'), event_type: 'page_view' });
  const result = await client.v1.usage.ingest({ usage });
  assert.ok(result === undefined || result === '' || result === null || typeof result === 'object');
  // The same batch again: every transaction_id is a duplicate, so nothing is counted twice
  // (checked by the exact invoice totals and balances below).
  await client.v1.usage.ingest({ usage });
});

// ---------------------------------------------------------------------------------------------
// 5. Webhooks for the threshold crossings

const workflows = {};

await step('5. webhooks: threshold_reached + external_initiate (spend, prepaid_balance), NONE gate, all verified by webhooks.unwrap', async () => {
  const spendReached = await waitHook('payment_gate.threshold_reached', { contract_id: contracts.spend });
  assert.equal(spendReached.event.properties.workflow_type, 'spend');
  assert.equal(spendReached.event.properties.customer_id, customers.spend);

  const spendInit = await waitHook('payment_gate.external_initiate', { contract_id: contracts.spend });
  const sp = spendInit.event.properties;
  assert.equal(sp.workflow_type, 'spend');
  assert.equal(sp.invoice_total, 1000, 'spend: invoice for the outstanding $10');
  assert.equal(sp.invoice_currency, 'USD');
  assert.equal(sp.workflow_id, spendReached.event.properties.workflow_id);
  assert.ok(sp.invoice_id, 'external_initiate carries invoice_id');
  workflows.spend = { id: sp.workflow_id, invoiceId: sp.invoice_id };

  const prepaidReached = await waitHook('payment_gate.threshold_reached', { contract_id: contracts.prepaid });
  assert.equal(prepaidReached.event.properties.workflow_type, 'prepaid_balance');
  const prepaidInit = await waitHook('payment_gate.external_initiate', { contract_id: contracts.prepaid });
  const pp = prepaidInit.event.properties;
  assert.equal(pp.workflow_type, 'prepaid_balance');
  assert.equal(pp.invoice_total, 3000, 'prepaid: recharge from $20 to $50');
  assert.equal(pp.invoice_currency, 'USD');
  workflows.prepaid = { id: pp.workflow_id, invoiceId: pp.invoice_id };

  const noneReached = await waitHook('payment_gate.threshold_reached', { contract_id: contracts.none });
  assert.equal(noneReached.event.properties.workflow_type, 'spend');
  workflows.none = { id: noneReached.event.properties.workflow_id };

  // Exactly one workflow per contract: no double charge although every event was sent twice.
  for (const kind of ['spend', 'prepaid', 'none']) {
    assert.equal(hooks('payment_gate.threshold_reached', { contract_id: contracts[kind] }).length, 1, `${kind}: one threshold_reached`);
  }
  assert.equal(hooks('payment_gate.external_initiate', { contract_id: contracts.none }).length, 0, 'NONE gate: no external_initiate');

  // Headers as documented, and every delivery was accepted by the SDK.
  for (const w of webhooks) {
    assert.equal(w.method, 'POST');
    assert.equal(w.path, '/hooks');
    assert.ok(w.headers['x-metronome-date'] && w.headers['date'], 'Date and X-Metronome-Date headers');
    assert.match(w.headers['metronome-webhook-signature'], /^[0-9a-f]{64}$/);
    // The payment gate's types use the properties envelope; lifecycle types are flat (step 11).
    const flatEnvelope = /^(contract|commit|credit)\./.test(w.event.type);
    requireFields(w.event, flatEnvelope ? ['id', 'type', 'timestamp', 'customer_id'] : ['id', 'type', 'properties'], 'webhook body');
  }
  assert.deepEqual(rejectedWebhooks.map((r) => r.error), [], 'webhooks.unwrap rejected a delivery');

  const net = await client.v1.contracts.getNetBalance({ customer_id: customers.prepaid });
  assert.equal(net.data.balance, 2000, 'prepaid balance before the recharge is released');
});

// ---------------------------------------------------------------------------------------------
// 6. Release the EXTERNAL workflows (the endpoint is not in the SDK: generic client.post)

await step('6. release EXTERNAL workflows with client.post(...threshold-billing/release) -> payment_status paid', async () => {
  for (const kind of ['spend', 'prepaid']) {
    const result = await client.post('/v1/contracts/commits/threshold-billing/release', {
      body: { workflow_id: workflows[kind].id, outcome: 'paid' },
    });
    assert.ok(result === undefined || result === '' || result === null || typeof result === 'object',
      `release answered ${JSON.stringify(result)}`);
  }
  for (const kind of ['spend', 'prepaid']) {
    const status = await waitHook('payment_gate.payment_status', { workflow_id: workflows[kind].id });
    assert.equal(status.event.properties.payment_status, 'paid');
    assert.equal(status.event.properties.contract_id, contracts[kind]);
  }
  // A NONE gate releases at once and sends no payment_status.
  assert.equal(hooks('payment_gate.payment_status', { workflow_id: workflows.none.id }).length, 0,
    'NONE gate: no payment_status webhook');

  // Releasing again with the same outcome: 200 with the workflow as it ended (idempotent);
  // with the other outcome: 409 saying how it ended. Nothing changes either way.
  const again = await client.post('/v1/contracts/commits/threshold-billing/release', {
    body: { workflow_id: workflows.spend.id, outcome: 'paid' },
  });
  assert.equal(again.data.id, workflows.spend.id);
  assert.equal(again.data.state, 'RELEASED');
  const other = await expectError(
    client.post('/v1/contracts/commits/threshold-billing/release', { body: { workflow_id: workflows.spend.id, outcome: 'failed' } }),
    ConflictError,
    409,
  );
  assert.match(other.message, /already ended RELEASED/);
  assert.equal(hooks('payment_gate.payment_status', { workflow_id: workflows.spend.id }).length, 1,
    'no second payment_status');
  await expectError(
    client.post('/v1/contracts/commits/threshold-billing/release', { body: { workflow_id: randomUUID(), outcome: 'paid' } }),
    NotFoundError,
    404,
  );
});

// ---------------------------------------------------------------------------------------------
// 7. Read back contracts, balances, commits and invoices

await step('7. read back: v2 contracts, listBalances, getNetBalance, commits.list, invoices.list/retrieve', async () => {
  // Spend contract: configuration and the released PREPAID threshold commit.
  const spend = await client.v2.contracts.retrieve({ customer_id: customers.spend, contract_id: contracts.spend });
  requireFields(spend.data, ['id', 'commits', 'created_at', 'created_by', 'customer_id', 'overrides', 'scheduled_charges', 'starting_at', 'transitions', 'usage_filter', 'usage_statement_schedule'], 'v2.contracts.retrieve data');
  const stc = spend.data.spend_threshold_configuration;
  requireFields(stc, ['commit', 'is_enabled', 'payment_gate_config', 'threshold_amount'], 'spend_threshold_configuration');
  assert.equal(stc.threshold_amount, 1000);
  assert.equal(stc.is_enabled, true);
  assert.equal(stc.payment_gate_config.payment_gate_type, 'EXTERNAL');
  assert.equal(stc.commit.product_id, catalog.commitProductId);
  assert.equal(spend.data.commits.length, 1, `spend contract commits: ${JSON.stringify(spend.data.commits)}`);
  const thresholdCommit = spend.data.commits[0];
  requireFields(thresholdCommit, ['id', 'created_at', 'product', 'type'], 'v2 commit');
  requireFields(thresholdCommit.product, ['id', 'name'], 'v2 commit.product');
  assert.equal(thresholdCommit.type, 'PREPAID');
  assert.equal(thresholdCommit.product.id, catalog.commitProductId);
  assert.equal(thresholdCommit.access_schedule.schedule_items.reduce((s, i) => s + i.amount, 0), 1000);

  // Prepaid contract: configuration, initial commit and the recharge commit.
  const prepaid = await client.v2.contracts.retrieve({ customer_id: customers.prepaid, contract_id: contracts.prepaid, include_balance: true });
  const pbc = prepaid.data.prepaid_balance_threshold_configuration;
  requireFields(pbc, ['commit', 'is_enabled', 'payment_gate_config', 'recharge_to_amount', 'threshold_amount'], 'prepaid_balance_threshold_configuration');
  assert.equal(pbc.threshold_amount, 2000);
  assert.equal(pbc.recharge_to_amount, 5000);
  assert.equal(pbc.commit.product_id, catalog.commitProductId);
  const prepaidCommits = prepaid.data.commits;
  assert.equal(prepaidCommits.length, 2);
  assert.ok(prepaidCommits.every((c) => c.type === 'PREPAID'));
  const accessTotals = prepaidCommits.map((c) => c.access_schedule.schedule_items.reduce((s, i) => s + i.amount, 0)).sort((a, b) => a - b);
  assert.deepEqual(accessTotals, [3000, 5000], 'the initial commit (5000) and the recharge commit (3000)');

  // listBalances (BodyCursorPage, limit 1: two pages).
  const balances = await collect(client.v1.contracts.listBalances({
    customer_id: customers.prepaid, include_contract_balances: true, include_balance: true, limit: 1,
  }));
  assert.equal(balances.length, 2, `listBalances: ${JSON.stringify(balances)}`);
  for (const b of balances) requireFields(b, ['id', 'product', 'type'], 'listBalances item');
  assert.deepEqual(balances.map((b) => b.balance).sort((a, b) => a - b), [2000, 3000]);

  const net = await client.v1.contracts.getNetBalance({ customer_id: customers.prepaid });
  assert.equal(net.data.balance, 5000, 'prepaid customer back to $50 after the recharge');
  const spendNet = await client.v1.contracts.getNetBalance({ customer_id: customers.spend });
  assert.equal(spendNet.data.balance, 0, 'the spend threshold commit was used up covering the $10');

  const commits = await collect(client.v1.customers.commits.list({
    customer_id: customers.spend, include_contract_commits: true, include_balance: true,
  }));
  assert.equal(commits.length, 1, `customers.commits.list: ${JSON.stringify(commits)}`);
  requireFields(commits[0], ['id', 'created_at', 'product', 'type'], 'commits.list item');
  assert.equal(commits[0].id, thresholdCommit.id);
  assert.equal(commits[0].type, 'PREPAID');

  // Invoices of the spend customer.
  const invoices = await collect(client.v1.customers.invoices.list({ customer_id: customers.spend, limit: 1 }));
  for (const inv of invoices) {
    requireFields(inv, ['id', 'credit_type', 'customer_id', 'line_items', 'status', 'total', 'type'], 'invoices.list item');
    for (const line of inv.line_items) requireFields(line, ['credit_type', 'name', 'total', 'type'], 'invoice line item');
  }
  const scheduled = invoices.filter((i) => i.type === 'SCHEDULED');
  assert.equal(scheduled.length, 1, `SCHEDULED invoices: ${JSON.stringify(scheduled)}`);
  assert.equal(scheduled[0].id, workflows.spend.invoiceId, 'the invoice named in external_initiate');
  assert.equal(scheduled[0].total, 1000);
  const purchase = scheduled[0].line_items.find((l) => l.type === 'commit_purchase');
  assert.ok(purchase, `no commit_purchase line: ${JSON.stringify(scheduled[0].line_items)}`);
  assert.equal(purchase.total, 1000);

  const drafts = await collect(client.v1.customers.invoices.list({ customer_id: customers.spend, type: 'USAGE', status: 'DRAFT' }));
  assert.equal(drafts.length, 1, `DRAFT USAGE invoices: ${JSON.stringify(drafts)}`);
  assert.equal(drafts[0].total, 0, 'outstanding spend is 0 once the threshold commit is released');
  const usageLine = drafts[0].line_items.find((l) => l.type === 'usage');
  assert.ok(usageLine, `no usage line: ${JSON.stringify(drafts[0].line_items)}`);
  assert.equal(usageLine.quantity, 10, 'each of the 10 calls counted once (duplicates and page_view ignored)');
  assert.equal(usageLine.total, 1000);

  const one = await client.v1.customers.invoices.retrieve({ customer_id: customers.spend, invoice_id: workflows.spend.invoiceId });
  requireFields(one.data, ['id', 'credit_type', 'customer_id', 'line_items', 'status', 'total', 'type'], 'invoices.retrieve data');
  assert.equal(one.data.id, workflows.spend.invoiceId);
  assert.equal(one.data.customer_id, customers.spend);
  assert.equal(one.data.type, 'SCHEDULED');
  assert.equal(one.data.total, 1000);
  assert.notEqual(one.data.status, 'VOID');
});

// ---------------------------------------------------------------------------------------------
// 8. Payment-gated commit through v2 edit; uniqueness_key conflict without retries

await step('8. v2.contracts.edit: payment-gated commit (EXTERNAL, manual_commit); same uniqueness_key -> ConflictError, not retried', async () => {
  const edit = {
    customer_id: customers.none,
    contract_id: contracts.none,
    uniqueness_key: `purchase-${run}`,
    add_commits: [
      {
        type: 'PREPAID',
        product_id: catalog.commitProductId,
        name: 'Purchased credits',
        access_schedule: { schedule_items: [{ amount: 2000, starting_at: monthStart, ending_before: farFuture }] },
        invoice_schedule: { schedule_items: [{ timestamp: monthStart, amount: 2000 }] },
        payment_gate_config: { payment_gate_type: 'EXTERNAL', tax_type: 'NONE' },
      },
    ],
  };
  const edited = await client.v2.contracts.edit(edit);
  requireFields(edited.data, ['id'], 'v2.contracts.edit data');
  assert.equal(edited.data.edit?.add_commits?.length, 1, `edit response: ${JSON.stringify(edited.data)}`);

  const initiate = await waitHook('payment_gate.external_initiate', { contract_id: contracts.none, workflow_type: 'manual_commit' });
  assert.equal(initiate.event.properties.invoice_total, 2000);
  assert.equal(initiate.event.properties.invoice_currency, 'USD');
  assert.equal(hooks('payment_gate.threshold_reached', { workflow_id: initiate.event.properties.workflow_id }).length, 0,
    'a manual commit has no threshold_reached');

  // The same edit again through a client that counts its HTTP requests.
  let editRequests = 0;
  const counting = new Metronome({
    bearerToken,
    baseURL,
    webhookSecret,
    fetch: (url, init) => {
      if (String(url).includes('/v2/contracts/edit')) editRequests += 1;
      return fetch(url, init);
    },
  });
  const t0 = Date.now();
  const conflict = await expectError(counting.v2.contracts.edit(edit), ConflictError, 409);
  const elapsed = Date.now() - t0;
  assert.equal(conflict.headers?.get('x-should-retry'), 'false');
  assert.equal(editRequests, 1, `the SDK sent the conflicting edit ${editRequests} times (x-should-retry: false must stop retries)`);
  assert.ok(elapsed < 1500, `the 409 took ${elapsed} ms (retried?)`);
  assert.ok(typeof conflict.error?.message === 'string' && conflict.error.message.length > 0, '409 body has a message');

  // Paying the gated commit makes it usable.
  await client.post('/v1/contracts/commits/threshold-billing/release', {
    body: { workflow_id: initiate.event.properties.workflow_id, outcome: 'PAID' },
  });
  const paid = await waitHook('payment_gate.payment_status', { workflow_id: initiate.event.properties.workflow_id });
  assert.equal(paid.event.properties.payment_status, 'paid');
  const net = await client.v1.contracts.getNetBalance({ customer_id: customers.none });
  assert.equal(net.data.balance, 2000, 'the paid manual commit is available');
});

// ---------------------------------------------------------------------------------------------
// 9. Error shapes

await step('9. errors: BadRequestError with the server message, NotFoundError, AuthenticationError', async () => {
  const bad = await expectError(
    client.v1.contracts.create({
      customer_id: customers.spend,
      rate_card_id: catalog.rateCardId,
      starting_at: monthStart,
      prepaid_balance_threshold_configuration: {
        commit: { product_id: catalog.commitProductId },
        is_enabled: true,
        payment_gate_config: { payment_gate_type: 'EXTERNAL' },
        threshold_amount: 100,
        recharge_to_amount: 5000,
      },
    }),
    BadRequestError,
    400,
  );
  assert.equal(typeof bad.error?.message, 'string', `400 body: ${JSON.stringify(bad.error)}`);
  assert.ok(bad.message.includes(bad.error.message), `SDK message "${bad.message}" vs server "${bad.error.message}"`);
  assert.match(bad.message, /threshold_amount must be at least 500/);
  const stillOne = await client.v1.contracts.list({ customer_id: customers.spend });
  assert.equal(stillOne.data.length, 1, 'the rejected contract was not created');

  const missing = await expectError(client.v1.customers.retrieve({ customer_id: randomUUID() }), NotFoundError, 404);
  assert.equal(typeof missing.error?.message, 'string');

  const stranger = new Metronome({ bearerToken: 'wrong-token', baseURL, maxRetries: 0 });
  await expectError(stranger.v1.customers.list(), AuthenticationError, 401);
});

// ---------------------------------------------------------------------------------------------
// 10. Webhook verification, both ways

await step('10. webhooks.unwrap: every delivery accepted; a tampered body, a wrong secret and an old date rejected', async () => {
  // 3 (spend) + 3 (prepaid) + 1 (NONE gate) + 2 (manual commit); at-least-once, so count ids.
  const gates = webhooks.filter((w) => w.event.type.startsWith('payment_gate.'));
  const distinct = new Set(gates.map((w) => w.event.id));
  assert.equal(distinct.size, 9, `distinct webhooks: ${JSON.stringify(gates.map((w) => w.event.type))}`);
  assert.deepEqual(rejectedWebhooks.map((r) => r.error), [], 'webhooks.unwrap rejected a delivery');
  const sample = hooks('payment_gate.payment_status')[0];
  // Accepted as delivered ...
  assert.deepEqual(client.webhooks.unwrap(sample.body, sample.headers), sample.event);
  // ... but not with one byte changed, with another secret, or with a stale date.
  const tampered = sample.body.replace('"paid"', '"failed"');
  assert.notEqual(tampered, sample.body);
  assert.throws(() => client.webhooks.unwrap(tampered, sample.headers), /signature does not match/);
  assert.throws(() => client.webhooks.unwrap(sample.body, sample.headers, `${webhookSecret}x`), /signature does not match/);
  const stale = { ...sample.headers, 'x-metronome-date': new Date(Date.now() - 10 * 60_000).toUTCString() };
  assert.throws(() => client.webhooks.unwrap(sample.body, stale), /too old|signature does not match/);
});

// ---------------------------------------------------------------------------------------------
// 11. Lifecycle webhooks (flat envelope)

/** Distinct (by id) flat-envelope deliveries of `type` whose top-level fields match. */
function flatHooks(type, fields = {}) {
  const seen = new Map();
  for (const w of webhooks) {
    if (w.event.type !== type) continue;
    if (!Object.entries(fields).every(([k, v]) => w.event[k] === v)) continue;
    if (!seen.has(w.event.id)) seen.set(w.event.id, w);
  }
  return [...seen.values()];
}

const waitFlat = (type, fields) =>
  waitFor(`${type} ${JSON.stringify(fields)}`, () => {
    const found = flatHooks(type, fields);
    return found.length > 0 ? found[0] : null;
  });

await step('11. lifecycle webhooks: contract.create, commit.create, commit.segment.start in the flat envelope', async () => {
  for (const type of ['contract.create', 'commit.create', 'commit.segment.start']) {
    const hook = await waitFlat(type, { contract_id: contracts.prepaid });
    requireFields(
      hook.event,
      ['id', 'type', 'timestamp', 'environment_type', 'customer_id', 'customer_custom_fields', 'contract_id', 'contract_custom_fields'],
      type,
    );
    assert.equal(hook.event.customer_id, customers.prepaid);
    assert.equal(hook.event.environment_type, 'PRODUCTION');
    assert.equal(hook.event.properties, undefined, `${type} is flat`);
  }
  const segment = (await waitFlat('commit.segment.start', { contract_id: contracts.prepaid })).event;
  requireFields(segment, ['commit_id', 'segment_id', 'segment_index', 'segment_count'], 'commit.segment.start');
});

// ---------------------------------------------------------------------------------------------
// 12. Recharge safety rails (Tollgate's extension, passed through by the SDK)

await step('12. recharge_limits: a second recharge within the interval is held back, payment_gate.recharge_limited once', async () => {
  const railed = await client.v1.customers.create({ name: `Railed ${run}`, ingest_aliases: [`railed-${run}`] });
  const created = await client.v1.contracts.create({
    customer_id: railed.data.id,
    rate_card_id: catalog.rateCardId,
    starting_at: monthStart,
    commits: [
      {
        type: 'PREPAID',
        product_id: catalog.commitProductId,
        priority: 10,
        access_schedule: { schedule_items: [{ amount: 5000, starting_at: monthStart, ending_before: farFuture }] },
        invoice_schedule: { schedule_items: [{ timestamp: monthStart, amount: 5000 }] },
      },
    ],
    credits: [
      {
        product_id: catalog.commitProductId,
        name: 'Promotional credit',
        priority: 50,
        access_schedule: { schedule_items: [{ amount: 1, starting_at: monthStart, ending_before: farFuture }] },
      },
    ],
    prepaid_balance_threshold_configuration: {
      commit: { product_id: catalog.commitProductId },
      is_enabled: true,
      payment_gate_config: { payment_gate_type: 'NONE' },
      threshold_amount: 2000,
      recharge_to_amount: 5000,
      recharge_limits: { min_recharge_interval_minutes: 60, max_recharges_per_period: 10 },
    },
  });
  const contractId = created.data.id;
  const credit = await waitFlat('credit.create', { contract_id: contractId });
  assert.equal(credit.event.commit_type, 'CREDIT');
  await waitFlat('credit.segment.start', { contract_id: contractId, commit_id: credit.event.commit_id });
  const read = await client.v2.contracts.retrieve({ customer_id: railed.data.id, contract_id: contractId });
  assert.deepEqual(read.data.prepaid_balance_threshold_configuration.recharge_limits, {
    min_recharge_interval_minutes: 60,
    max_recharges_per_period: 10,
  });
  const calls = (prefix, n) => apiCalls(`railed-${run}`, prefix, n);
  // The $1 credit draws first: 31 calls bring B from $50.01 to $19.01.
  await client.v1.usage.ingest(calls('rail-a', 31));
  await waitHook('payment_gate.threshold_reached', { contract_id: contractId });
  await client.v1.usage.ingest(calls('rail-b', 30));
  const held = await waitHook('payment_gate.recharge_limited', { contract_id: contractId });
  assert.equal(held.event.properties.limit, 'min_recharge_interval_minutes');
  assert.equal(held.event.properties.customer_id, railed.data.id);
  await client.v1.usage.ingest(calls('rail-c', 5));
  await sleep(300);
  assert.equal(hooks('payment_gate.recharge_limited', { contract_id: contractId }).length, 1, 'announced once');
  assert.equal(hooks('payment_gate.threshold_reached', { contract_id: contractId }).length, 1, 'held back');
  const after = await client.v2.contracts.retrieve({ customer_id: railed.data.id, contract_id: contractId });
  const hold = after.data.prepaid_balance_threshold_configuration.recharge_hold;
  assert.equal(hold.limit, 'min_recharge_interval_minutes');
  assert.equal(hold.until, held.event.properties.held_until);
  contracts.railed = contractId;
  customers.railed = railed.data.id;
});

// ---------------------------------------------------------------------------------------------
// 13. Contract end dates

await step('13. contracts.updateEndDate: contract.edit, then contract.end at the end; v2 edit lifts it again', async () => {
  const endMs = Date.now() + 2_500;
  const ending = new Date(endMs).toISOString();
  const updated = await client.v1.contracts.updateEndDate({
    customer_id: customers.railed,
    contract_id: contracts.railed,
    ending_before: ending,
  });
  assert.equal(updated.data.id, contracts.railed);
  await waitFlat('contract.edit', { contract_id: contracts.railed });
  const ended = await waitFlat('contract.end', { contract_id: contracts.railed });
  assert.equal(new Date(ended.event.timestamp).getTime(), endMs);
  await waitFlat('commit.segment.end', { contract_id: contracts.railed });
  await waitFlat('credit.segment.end', { contract_id: contracts.railed });
  const read = await client.v1.contracts.retrieve({ customer_id: customers.railed, contract_id: contracts.railed });
  assert.equal(new Date(read.data.current.ending_before).getTime(), endMs);
  await expectError(
    client.v1.contracts.updateEndDate({ customer_id: customers.railed, contract_id: contracts.railed, ending_before: '2000-01-01T00:00:00Z' }),
    BadRequestError,
    400,
  );
  await client.v2.contracts.edit({ customer_id: customers.railed, contract_id: contracts.railed, update_contract_end_date: null });
  const lifted = await client.v1.contracts.retrieve({ customer_id: customers.railed, contract_id: contracts.railed });
  assert.ok(lifted.data.current.ending_before == null, `open-ended again: ${lifted.data.current.ending_before}`);
});

// ---------------------------------------------------------------------------------------------
// 14. Alerts (threshold notifications)

await step('14. alerts: create, customers.alerts.retrieve/list, alerts.* on the crossing event, _resolved, reset, archive', async () => {
  const watched = await client.v1.customers.create({ name: `Watched ${run}`, ingest_aliases: [`watched-${run}`] });
  const customerId = watched.data.id;
  const created = await client.v1.contracts.create({
    customer_id: customerId,
    rate_card_id: catalog.rateCardId,
    starting_at: monthStart,
    commits: [
      {
        type: 'PREPAID',
        product_id: catalog.commitProductId,
        priority: 10,
        access_schedule: { schedule_items: [{ amount: 5000, starting_at: monthStart, ending_before: farFuture }] },
        invoice_schedule: { schedule_items: [{ timestamp: monthStart, amount: 5000 }] },
      },
    ],
  });
  const contractId = created.data.id;
  const type = 'low_remaining_contract_credit_and_commit_balance_reached';
  const alert = await client.v1.alerts.create({
    alert_type: type,
    name: `Balance low ${run}`,
    threshold: 2000,
    customer_id: customerId,
    uniqueness_key: `alert-${run}`,
  });
  const alertId = alert.data.id;
  await expectError(
    client.v1.alerts.create({ alert_type: type, name: 'again', threshold: 1, uniqueness_key: `alert-${run}` }),
    ConflictError,
    409,
  );
  const status = () => client.v1.customers.alerts.retrieve({ customer_id: customerId, alert_id: alertId });
  await waitFor('the sweep evaluates the alert', async () => (await status()).data.customer_status === 'ok');
  const calls = (prefix, n) => apiCalls(`watched-${run}`, prefix, n);
  // $50 - $30 = $20: the threshold, reached on this batch.
  await client.v1.usage.ingest(calls('alert-a', 30));
  const hook = await waitHook(`alerts.${type}`, { alert_id: alertId });
  requireFields(hook.event.properties, ['customer_id', 'alert_id', 'timestamp', 'threshold', 'alert_name', 'triggered_by', 'remaining_balance', 'credit_type_id'], type);
  assert.equal(hook.event.properties.remaining_balance, 2000);
  assert.equal(hook.event.properties.customer_id, customerId);
  const read = await status();
  assert.equal(read.data.customer_status, 'in_alarm');
  assert.equal(read.data.alert.type, type);
  assert.equal(read.data.alert.status, 'enabled');
  const listed = await collect(client.v1.customers.alerts.list({ customer_id: customerId }));
  assert.equal(listed.length, 1);
  assert.equal(listed[0].alert.id, alertId);
  assert.equal(listed[0].customer_status, 'in_alarm');
  // A $50 commit: back above the threshold, Tollgate's _resolved webhook.
  await client.v2.contracts.edit({
    customer_id: customerId,
    contract_id: contractId,
    add_commits: [
      {
        type: 'PREPAID',
        product_id: catalog.commitProductId,
        priority: 20,
        access_schedule: { schedule_items: [{ amount: 5000, starting_at: monthStart, ending_before: farFuture }] },
        invoice_schedule: { schedule_items: [{ timestamp: monthStart, amount: 5000 }] },
      },
    ],
  });
  const resolved = await waitHook(`alerts.${type}_resolved`, { alert_id: alertId });
  assert.equal(resolved.event.properties.remaining_balance, 7000);
  assert.equal((await status()).data.customer_status, 'ok');
  // Reset: evaluated again at once (ok, no webhook), then archived with its key released.
  await client.v1.customers.alerts.reset({ customer_id: customerId, alert_id: alertId });
  assert.equal((await status()).data.customer_status, 'ok');
  await client.v1.alerts.archive({ id: alertId, release_uniqueness_key: true });
  const archived = await collect(client.v1.customers.alerts.list({ customer_id: customerId, alert_statuses: ['ARCHIVED'] }));
  assert.equal(archived[0].alert.status, 'archived');
  assert.equal(archived[0].customer_status, null);
  const reused = await client.v1.alerts.create({ alert_type: 'spend_threshold_reached', name: 'reused key', threshold: 100000, uniqueness_key: `alert-${run}` });
  await client.v1.alerts.archive({ id: reused.data.id });
  assert.equal(hooks(`alerts.${type}`, { alert_id: alertId }).length, 1, 'one alarm');
});

await step('15. customer-level credit and commit: drawn with the contract, counted in its B, listed, shortened', async () => {
  const usd = '2714e483-4ff1-48e4-9e25-ac732e8f24f2';
  const shared = await client.v1.customers.create({ name: `Shared ${run}`, ingest_aliases: [`shared-${run}`] });
  const customerId = shared.data.id;
  // A $50 credit of the customer, for every contract (created before the contract, so the
  // contract's auto-recharge sees $50 at creation).
  const credit = await client.v1.customers.credits.create({
    customer_id: customerId,
    product_id: catalog.commitProductId,
    priority: 1,
    name: 'Welcome credit',
    access_schedule: { credit_type_id: usd, schedule_items: [{ amount: 5000, starting_at: monthStart, ending_before: farFuture }] },
    uniqueness_key: `credit-${run}`,
  });
  const creditId = credit.data.id;
  await expectError(
    client.v1.customers.credits.create({
      customer_id: customerId,
      product_id: catalog.commitProductId,
      priority: 1,
      access_schedule: { schedule_items: [{ amount: 1, starting_at: monthStart, ending_before: farFuture }] },
      uniqueness_key: `credit-${run}`,
    }),
    ConflictError,
    409,
  );
  const created = await client.v1.contracts.create({
    customer_id: customerId,
    rate_card_id: catalog.rateCardId,
    starting_at: monthStart,
    prepaid_balance_threshold_configuration: {
      commit: { product_id: catalog.commitProductId, name: 'Auto-recharge' },
      is_enabled: true,
      payment_gate_config: { payment_gate_type: 'EXTERNAL' },
      threshold_amount: 2000,
      recharge_to_amount: 5000,
    },
  });
  const contractId = created.data.id;
  // A $10 customer-level commit for this contract, billed on it, drawn after the credit.
  const commit = await client.v1.customers.commits.create({
    customer_id: customerId,
    type: 'PREPAID',
    product_id: catalog.commitProductId,
    priority: 50,
    applicable_contract_ids: [contractId],
    invoice_contract_id: contractId,
    access_schedule: { schedule_items: [{ amount: 1000, starting_at: monthStart, ending_before: farFuture }] },
    invoice_schedule: { schedule_items: [{ timestamp: monthStart, amount: 1000 }] },
  });
  const commitId = commit.data.id;
  const net = await client.v1.contracts.getNetBalance({ customer_id: customerId });
  assert.equal(net.data.balance, 6000, 'both count in the balance');
  // 39 calls: the credit falls to $11, B = $21; the 40th brings B to $20 and recharges $30.
  await client.v1.usage.ingest(apiCalls(`shared-${run}`, 'shared-a', 39));
  await client.v1.usage.ingest(apiCalls(`shared-${run}`, 'shared-b', 1));
  const initiate = await waitHook('payment_gate.external_initiate', { contract_id: contractId });
  assert.equal(initiate.event.properties.workflow_type, 'prepaid_balance');
  assert.equal(initiate.event.properties.invoice_total, 3000, 'recharged from $20 to $50');
  assert.equal(hooks('payment_gate.threshold_reached', { contract_id: contractId }).length, 1);
  const announced = await waitFlat('credit.create', { commit_id: creditId });
  assert.equal(announced.event.contract_id, undefined, 'a customer-level credit belongs to no contract');
  assert.equal(announced.event.customer_id, customerId);
  await waitFlat('commit.create', { commit_id: commitId });

  const credits = await collect(client.v1.customers.credits.list({ customer_id: customerId, include_balance: true, include_ledgers: true }));
  assert.deepEqual(credits.map((c) => c.id), [creditId]);
  assert.equal(credits[0].balance, 1000);
  assert.equal(credits[0].contract, undefined);
  const deduction = credits[0].ledger.find((e) => e.type === 'CREDIT_AUTOMATED_INVOICE_DEDUCTION');
  assert.equal(deduction.amount, -4000);
  assert.equal(deduction.contract_id, contractId, 'the deduction names the contract whose usage it paid');
  const commits = await collect(client.v1.customers.commits.list({ customer_id: customerId, include_balance: true }));
  assert.deepEqual(commits.map((c) => c.id), [commitId]);
  assert.equal(commits[0].balance, 1000, 'drawn after the credit (priority 50)');
  assert.deepEqual(commits[0].applicable_contract_ids, [contractId]);
  assert.equal(commits[0].invoice_contract.id, contractId);
  const withContract = await collect(client.v1.customers.commits.list({ customer_id: customerId, include_contract_commits: true }));
  assert.equal(withContract.length, 2, 'and the recharge commit of the contract');
  const balances = await collect(client.v1.contracts.listBalances({ customer_id: customerId }));
  assert.deepEqual(balances.map((b) => b.id).sort(), [creditId, commitId].sort());

  // Shortened: the credit's access ends tomorrow; a later end is refused.
  const tomorrow = new Date(Date.now() + 24 * 3600 * 1000).toISOString();
  await client.v1.customers.credits.updateEndDate({ customer_id: customerId, credit_id: creditId, access_ending_before: tomorrow });
  const shortened = await collect(client.v1.customers.credits.list({ customer_id: customerId }));
  assert.equal(Date.parse(shortened[0].access_schedule.schedule_items[0].ending_before), Date.parse(tomorrow));
  await expectError(
    client.v1.customers.commits.updateEndDate({ customer_id: customerId, commit_id: commitId, access_ending_before: '2200-01-01T00:00:00Z' }),
    BadRequestError,
    400,
  );
});

await step('16. balance corrections: custom_fields, threshold_balance_specifiers, addManualBalanceEntry, archive_credits, update_commits', async () => {
  const corrected = await client.v1.customers.create({ name: `Corrected ${run}`, ingest_aliases: [`corrected-${run}`] });
  const customerId = corrected.data.id;
  // A $50 paid commit and a $30 promotional credit the prepaid threshold leaves out of B.
  const specifiers = [{ exclude: [{ custom_field_filters: [{ entity: 'ContractCredit', key: 'campaign', value: 'promo' }] }] }];
  const created = await client.v1.contracts.create({
    customer_id: customerId,
    rate_card_id: catalog.rateCardId,
    starting_at: monthStart,
    commits: [
      {
        type: 'PREPAID',
        product_id: catalog.commitProductId,
        priority: 10,
        access_schedule: { schedule_items: [{ amount: 5000, starting_at: monthStart, ending_before: farFuture }] },
        invoice_schedule: { schedule_items: [{ timestamp: monthStart, amount: 5000 }] },
      },
    ],
    credits: [
      {
        product_id: catalog.commitProductId,
        priority: 1,
        access_schedule: { schedule_items: [{ amount: 3000, starting_at: monthStart, ending_before: farFuture }] },
        custom_fields: { campaign: 'promo' },
      },
    ],
    prepaid_balance_threshold_configuration: {
      commit: { product_id: catalog.commitProductId, name: 'Auto-recharge' },
      is_enabled: true,
      payment_gate_config: { payment_gate_type: 'EXTERNAL' },
      threshold_amount: 2000,
      recharge_to_amount: 5000,
      threshold_balance_specifiers: specifiers,
    },
  });
  const contractId = created.data.id;
  const read = await client.v2.contracts.retrieve({ customer_id: customerId, contract_id: contractId });
  assert.deepEqual(read.data.prepaid_balance_threshold_configuration.threshold_balance_specifiers, specifiers);
  const listed = await collect(client.v1.contracts.listBalances({ customer_id: customerId, include_contract_balances: true, include_balance: true }));
  const paid = listed.find((b) => b.type === 'PREPAID');
  const promo = listed.find((b) => b.type === 'CREDIT');
  assert.deepEqual(promo.custom_fields, { campaign: 'promo' });
  const announced = await waitFlat('credit.create', { commit_id: promo.id });
  assert.deepEqual(announced.event.commit_custom_fields, { campaign: 'promo' });
  // A manual draw-down of $31 takes B (the paid commit alone) to $19: the recharge of $31.
  await client.v1.contracts.addManualBalanceEntry({
    customer_id: customerId,
    contract_id: contractId,
    id: paid.id,
    segment_id: paid.access_schedule.schedule_items[0].id,
    amount: -3100,
    reason: 'migration correction',
  });
  const initiate = await waitHook('payment_gate.external_initiate', { contract_id: contractId });
  assert.equal(initiate.event.properties.invoice_total, 3100, 'the promotion is not in B');
  const ledgers = await collect(client.v1.contracts.listBalances({ customer_id: customerId, include_contract_balances: true, include_ledgers: true, include_balance: true }));
  const manual = ledgers.find((b) => b.id === paid.id).ledger.find((e) => e.type === 'PREPAID_COMMIT_MANUAL');
  assert.equal(manual.amount, -3100);
  assert.equal(manual.reason, 'migration correction');
  // The promotion is archived: it leaves the balances, credit.archive is sent.
  await client.v2.contracts.edit({ customer_id: customerId, contract_id: contractId, archive_credits: [{ id: promo.id }] });
  const archive = await waitFlat('credit.archive', { commit_id: promo.id });
  assert.equal(archive.event.contract_id, contractId);
  const after = await collect(client.v1.contracts.listBalances({ customer_id: customerId, include_contract_balances: true, include_archived: true, include_balance: true }));
  const archived = after.find((b) => b.id === promo.id);
  assert.ok(archived.archived_at, 'archived_at is set');
  assert.equal(archived.balance, 0);
  await expectError(
    client.v2.contracts.edit({ customer_id: customerId, contract_id: contractId, archive_credits: [{ id: promo.id }] }),
    BadRequestError,
    400,
  );
  // update_commits: the paid commit renamed and given a second segment of $20.
  await client.v2.contracts.edit({
    customer_id: customerId,
    contract_id: contractId,
    update_commits: [
      {
        commit_id: paid.id,
        name: 'Annual prepay',
        access_schedule: { add_schedule_items: [{ amount: 2000, starting_at: monthStart, ending_before: farFuture }] },
      },
    ],
  });
  const updated = (await collect(client.v1.contracts.listBalances({ customer_id: customerId, include_contract_balances: true, include_balance: true }))).find((b) => b.id === paid.id);
  assert.equal(updated.name, 'Annual prepay');
  assert.equal(updated.access_schedule.schedule_items.length, 2);
  assert.equal(updated.balance, 5000 - 3100 + 2000);
  // Lowering a segment below what was taken from it is refused.
  await expectError(
    client.v2.contracts.edit({
      customer_id: customerId,
      contract_id: contractId,
      update_commits: [{ commit_id: paid.id, access_schedule: { update_schedule_items: [{ id: paid.access_schedule.schedule_items[0].id, amount: -1 }] } }],
    }),
    BadRequestError,
    400,
  );
});

await step('17. custom pricing units: credit type, rate card conversions (create, update), rate in credits, credits bought with dollars, recharge in credits charged in dollars', async () => {
  // The SDK has no create: Tollgate's endpoint, through the client's generic post.
  const unit = await client.post('/v1/tollgate/credit-types/create', { body: { name: `credits ${run}` } });
  const credits = unit.data.id;
  const tokens = (await client.post('/v1/tollgate/credit-types/create', { body: { name: `tokens ${run}` } })).data.id;
  const units = await collect(client.v1.pricingUnits.list());
  assert.ok(units.some((u) => u.id === credits && u.is_currency === false), 'credits listed');
  assert.ok(units.some((u) => u.name === 'USD (cents)' && u.is_currency === true), 'USD listed');
  const card = await client.v1.contracts.rateCards.create({
    name: `In credits ${run}`,
    credit_type_conversions: [{ custom_credit_type_id: credits, fiat_per_custom_credit: 2 }],
  });
  const cardId = card.data.id;
  await client.v1.contracts.rateCards.update({
    rate_card_id: cardId,
    add_credit_type_conversions: [{ custom_credit_type_id: tokens, fiat_per_custom_credit: 0.01 }],
  });
  const read = await client.v1.contracts.rateCards.retrieve({ id: cardId });
  assert.deepEqual(
    read.data.credit_type_conversions.map((c) => [c.custom_credit_type.id, c.fiat_per_custom_credit]),
    [[credits, '2'], [tokens, '0.01']],
  );
  // Changing an existing conversion is refused.
  await expectError(
    client.v1.contracts.rateCards.update({ rate_card_id: cardId, add_credit_type_conversions: [{ custom_credit_type_id: credits, fiat_per_custom_credit: 3 }] }),
    BadRequestError,
    400,
  );
  const rate = await client.v1.contracts.rateCards.rates.add({
    rate_card_id: cardId,
    product_id: catalog.usageProductId,
    entitled: true,
    rate_type: 'FLAT',
    price: 10,
    credit_type_id: credits,
    starting_at: pastHour,
  });
  assert.equal(rate.data.credit_type.id, credits);
  const buyer = await client.v1.customers.create({ name: `Credits ${run}`, ingest_aliases: [`credits-${run}`] });
  const customerId = buyer.data.id;
  // 1000 credits bought for $20; the threshold recharges credits below 500 back to 1500.
  const created = await client.v1.contracts.create({
    customer_id: customerId,
    rate_card_id: cardId,
    starting_at: monthStart,
    commits: [
      {
        type: 'PREPAID',
        product_id: catalog.commitProductId,
        access_schedule: { credit_type_id: credits, schedule_items: [{ amount: 1000, starting_at: monthStart, ending_before: farFuture }] },
        invoice_schedule: { schedule_items: [{ timestamp: monthStart, amount: 2000 }] },
      },
    ],
    prepaid_balance_threshold_configuration: {
      commit: { product_id: catalog.commitProductId, name: 'Credit top-up' },
      is_enabled: true,
      payment_gate_config: { payment_gate_type: 'EXTERNAL' },
      threshold_amount: 500,
      recharge_to_amount: 1500,
      custom_credit_type_id: credits,
    },
  });
  const contractId = created.data.id;
  const contract = await client.v2.contracts.retrieve({ customer_id: customerId, contract_id: contractId });
  assert.equal(contract.data.prepaid_balance_threshold_configuration.custom_credit_type_id, credits);
  assert.equal(contract.data.commits[0].access_schedule.credit_type.id, credits);
  const net = async (credit_type_id) =>
    (await client.v1.contracts.getNetBalance({ customer_id: customerId, credit_type_id })).data.balance;
  assert.equal(await net(credits), 1000);
  // 50 calls at 10 credits: B = 500 credits, the recharge of 1000 credits is invoiced $20.
  const ts = iso(Date.now());
  const usage = [];
  for (let i = 0; i < 50; i++) {
    usage.push({ transaction_id: `${run}-credits-${i}`, customer_id: `credits-${run}`, event_type: 'api_call', timestamp: ts, properties: {} });
  }
  await client.v1.usage.ingest({ usage });
  const initiate = await waitHook('payment_gate.external_initiate', { contract_id: contractId });
  assert.equal(initiate.event.properties.invoice_total, 2000, '1000 credits at 2 cents');
  assert.equal(await net(credits), 500);
  await client.post('/v1/contracts/commits/threshold-billing/release', {
    body: { workflow_id: initiate.event.properties.workflow_id, outcome: 'PAID' },
  });
  await waitFor('the recharge in credits', async () => (await net(credits)) === 1500);
  const scheduled = await collect(client.v1.customers.invoices.list({ customer_id: customerId, type: 'SCHEDULED' }));
  assert.deepEqual(scheduled.map((i) => i.total).sort((a, b) => a - b), [2000, 2000]);
  assert.ok(scheduled.every((i) => i.credit_type.name === 'USD (cents)'), 'purchases are in dollars');
});

await shutdown();
const seconds = ((Date.now() - started) / 1000).toFixed(1);
console.log(`\nSDK flow passed: ${passed.length} steps, ${webhooks.length} webhook deliveries verified, ${seconds} s`);

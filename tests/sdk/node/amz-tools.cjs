// amz-tools `amazon-sp-api`, unmodified, through spgate's forward proxy.
//
// The SDK hard-codes Amazon's hosts (sellingpartnerapi-{na,eu,fe}.amazon.com, api.amazon.com)
// and sends with node's own `https` module, which ignores HTTPS_PROXY. What it offers instead
// is one constructor option, `options.https_proxy_agent`, used for the token request, every API
// call and `download()`: here an `https-proxy-agent` for $HTTPS_PROXY. The gateway's CA comes
// from NODE_EXTRA_CA_CERTS. Credentials are the gateway's drop-in LWA credentials.
//
// Environment: HTTPS_PROXY, NODE_EXTRA_CA_CERTS, SPGATE_LWA_CLIENT_ID, SPGATE_LWA_CLIENT_SECRET,
// SPGATE_REFRESH_TOKEN, SPGATE_MARKETPLACE, SPGATE_REGION, SPGATE_REPORT_DOCUMENT (optional). Prints one JSON object: each step's
// outcome (what the SDK returned, or the error it threw).
'use strict';

const SellingPartner = require('amazon-sp-api');
const {HttpsProxyAgent} = require('https-proxy-agent');
const harness = require('./harness.cjs');

const env = process.env;
const marketplace = env.SPGATE_MARKETPLACE;

const sp = new SellingPartner({
  region: env.SPGATE_REGION,
  refresh_token: env.SPGATE_REFRESH_TOKEN,
  credentials: {
    SELLING_PARTNER_APP_CLIENT_ID: env.SPGATE_LWA_CLIENT_ID,
    SELLING_PARTNER_APP_CLIENT_SECRET: env.SPGATE_LWA_CLIENT_SECRET
  },
  options: {
    https_proxy_agent: new HttpsProxyAgent(env.HTTPS_PROXY),
    auto_request_throttled: true,
    version_fallback: false
  }
});

/** Runs one step; its result or the SDK's error, never a throw. */
function step(fn) {
  return harness.step(fn, (e) => ({code: e.code, message: e.message, details: e.details}));
}
const documentId = harness.documentId;

async function main() {
  const out = {};
  let orderId;
  out.getOrders = await step(async () => {
    const res = await sp.callAPI({
      operation: 'getOrders',
      endpoint: 'orders',
      query: {MarketplaceIds: [marketplace], CreatedAfter: '2020-01-01T00:00:00Z'}
    });
    orderId = res.Orders[0].AmazonOrderId;
    return {orders: res.Orders.length, orderId};
  });
  out.getOrderAddress = await step(async () => {
    const res = await sp.callAPI({operation: 'getOrderAddress', endpoint: 'orders', path: {orderId}});
    return {addressLine1: res.ShippingAddress && res.ShippingAddress.AddressLine1};
  });
  // The SDK's own RDT flow: createRestrictedDataToken (answered by the gateway with its own
  // token), then the token on the restricted calls it names, through `restricted_data_token`.
  let rdt;
  out.rdt = await step(async () => {
    const token = await sp.callAPI({
      operation: 'createRestrictedDataToken',
      endpoint: 'tokens',
      body: {restrictedResources: [
        {method: 'GET', path: `/orders/v0/orders/${orderId}/address`},
        {method: 'GET', path: '/orders/v0/orders/{orderId}', dataElements: ['buyerInfo', 'shippingAddress']}
      ]}
    });
    rdt = token.restrictedDataToken;
    const address = await sp.callAPI({operation: 'getOrderAddress', endpoint: 'orders', path: {orderId}, restricted_data_token: rdt});
    const order = await sp.callAPI({operation: 'getOrder', endpoint: 'orders', path: {orderId}, restricted_data_token: rdt});
    return {
      expiresIn: token.expiresIn,
      tokenPrefix: String(rdt).slice(0, 7),
      addressLine1: address.ShippingAddress && address.ShippingAddress.AddressLine1,
      order: harness.orderPii(order)
    };
  });
  // The token on a resource it does not name: Amazon's 403.
  out.rdtOtherResource = await step(async () => {
    await sp.callAPI({operation: 'getOrderItems', endpoint: 'orders', path: {orderId}, restricted_data_token: rdt});
    return {};
  });
  // createReport -> getReport -> getReportDocument -> download (gunzip by the SDK's helper).
  let stage = 'createReport';
  let url;
  out.report = await step(async () => {
    const created = await sp.callAPI({
      operation: 'createReport',
      endpoint: 'reports',
      body: {reportType: 'GET_MERCHANT_LISTINGS_ALL_DATA',
        dataStartTime: '2024-03-10T20:11:24.000Z',
        marketplaceIds: ['A1PA6795UKMFR9', 'ATVPDKIKX0DER']}
    });
    stage = 'getReport';
    const report = await sp.callAPI({operation: 'getReport', endpoint: 'reports', path: {reportId: created.reportId}});
    stage = 'getReportDocument';
    const document = await sp.callAPI({
      operation: 'getReportDocument',
      endpoint: 'reports',
      path: {reportDocumentId: documentId(report)}
    });
    stage = 'download';
    url = document.url;
    const text = await sp.download(document);
    return {
      reportId: created.reportId,
      reportDocumentId: report.reportDocumentId,
      url: document.url,
      compressionAlgorithm: document.compressionAlgorithm,
      firstLine: String(text).split('\n')[0]
    };
  });
  Object.assign(out.report, {stage, url});
  // A 429 from the gateway (the tool's plan): the SDK waits 1/x-amzn-RateLimit-Limit and retries.
  out.throttled = await step(async () => {
    const query = {MarketplaceIds: [marketplace], CreatedAfter: '2020-01-01T00:00:00Z'};
    const first = await sp.callAPI({operation: 'getOrders', endpoint: 'orders', query});
    const second = await sp.callAPI({operation: 'getOrders', endpoint: 'orders', query});
    return {orders: [first.Orders.length, second.Orders.length]};
  });
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});

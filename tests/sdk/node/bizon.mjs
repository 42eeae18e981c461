// bizon `@sp-api-sdk/*`, unmodified, through spgate's forward proxy.
//
// The SDK hard-codes Amazon's hosts and sends with axios, which honours HTTPS_PROXY on its own
// (CONNECT through its tunnelling agent); the gateway's CA comes from NODE_EXTRA_CA_CERTS.
// Nothing but configuration: the drop-in LWA credentials, the region, and `rateLimiting.retry`
// (the SDK's own 429 back-off, off by default). The SDK has no download helper: the document is
// fetched with a plain GET of the returned URL, no headers, and gunzipped with zlib if the answer
// names a compressionAlgorithm (the gateway's link serves it decompressed and names none).
//
// Environment: HTTPS_PROXY, NODE_EXTRA_CA_CERTS, SPGATE_LWA_CLIENT_ID, SPGATE_LWA_CLIENT_SECRET,
// SPGATE_REFRESH_TOKEN, SPGATE_MARKETPLACE, SPGATE_REGION, SPGATE_REPORT_DOCUMENT (optional),
// SPGATE_OTHER_SELLER (a seller the RDT was not issued for). Prints one JSON object: each step's
// outcome.
// An ES module: the SDK's CommonJS build cannot start axios-retry (`rateLimiting.retry` throws
// "axios_retry.default is not a function" under require()), its ES build can.

import zlib from 'node:zlib';
import axios from 'axios';
import {SellingPartnerApiAuth} from '@sp-api-sdk/auth';
import {OrdersApiClient} from '@sp-api-sdk/orders-api-v0';
import {TokensApiClient} from '@sp-api-sdk/tokens-api-2021-03-01';
import {ReportsApiClient} from '@sp-api-sdk/reports-api-2021-06-30';
import harness from './harness.cjs';

const env = process.env;
const marketplace = env.SPGATE_MARKETPLACE;
const region = env.SPGATE_REGION;

const auth = new SellingPartnerApiAuth({
  clientId: env.SPGATE_LWA_CLIENT_ID,
  clientSecret: env.SPGATE_LWA_CLIENT_SECRET,
  refreshToken: env.SPGATE_REFRESH_TOKEN
});
const retries = [];
const rateLimiting = {retry: true, onRetry: ({delay, rateLimit}) => retries.push({delay, rateLimit})};
const orders = new OrdersApiClient({auth, region, rateLimiting});

/** Runs one step; its result or the SDK's error (status, SP-API error code), never a throw. */
function step(fn) {
  return harness.step(fn, (e) => {
    const data = e.response && e.response.data;
    const error = data && data.errors && data.errors[0];
    return {
      status: e.response && e.response.status,
      code: error && error.code,
      message: (error && error.message) || e.message,
      requestId: e.response && e.response.headers && e.response.headers['x-amzn-requestid']
    };
  });
}
const documentId = harness.documentId;

async function main() {
  const out = {};
  let orderId;
  out.getOrders = await step(async () => {
    const {data} = await orders.getOrders({marketplaceIds: [marketplace], createdAfter: '2020-01-01T00:00:00Z'});
    orderId = data.payload.Orders[0].AmazonOrderId;
    return {orders: data.payload.Orders.length, orderId};
  });
  out.getOrderAddress = await step(async () => {
    const {data} = await orders.getOrderAddress({orderId});
    return {addressLine1: data.payload.ShippingAddress && data.payload.ShippingAddress.AddressLine1};
  });
  // The SDK's own RDT flow: TokensApiClient mints (the gateway answers with its own token), a
  // client built with `restrictedDataToken` uses it.
  let restricted;
  out.rdt = await step(async () => {
    const tokens = new TokensApiClient({auth, region});
    const {data: token} = await tokens.createRestrictedDataToken({
      body: {restrictedResources: [
        {method: 'GET', path: `/orders/v0/orders/${orderId}/address`},
        {method: 'GET', path: '/orders/v0/orders/{orderId}', dataElements: ['buyerInfo', 'shippingAddress']}
      ]}
    });
    restricted = new OrdersApiClient({auth, region, restrictedDataToken: token.restrictedDataToken});
    const {data: address} = await restricted.getOrderAddress({orderId});
    const {data: order} = await restricted.getOrder({orderId});
    return {
      expiresIn: token.expiresIn,
      tokenPrefix: String(token.restrictedDataToken).slice(0, 7),
      addressLine1: address.payload.ShippingAddress && address.payload.ShippingAddress.AddressLine1,
      order: harness.orderPii(order.payload)
    };
  });
  // The token on a resource it does not name, and for another seller: Amazon's 403.
  out.rdtOtherResource = await step(async () => {
    await restricted.getOrderItems({orderId});
    return {};
  });
  out.rdtOtherSeller = await step(async () => {
    await restricted.getOrderAddress({orderId}, {headers: {'x-spgate-seller': env.SPGATE_OTHER_SELLER}});
    return {};
  });
  let stage = 'createReport';
  let url;
  out.report = await step(async () => {
    const reports = new ReportsApiClient({auth, region});
    const {data: created} = await reports.createReport({
      body: {reportType: 'GET_MERCHANT_LISTINGS_ALL_DATA',
        dataStartTime: '2024-03-10T20:11:24.000Z',
        marketplaceIds: ['A1PA6795UKMFR9', 'ATVPDKIKX0DER']}
    });
    stage = 'getReport';
    const {data: report} = await reports.getReport({reportId: created.reportId});
    stage = 'getReportDocument';
    const {data: document} = await reports.getReportDocument({reportDocumentId: documentId(report)});
    stage = 'download';
    url = document.url;
    // A presigned URL: fetched as it is, without credentials (through HTTPS_PROXY when https).
    const got = await axios.get(document.url, {responseType: 'arraybuffer'});
    const raw = Buffer.from(got.data);
    const text = document.compressionAlgorithm === 'GZIP' ? zlib.gunzipSync(raw).toString('utf8') : raw.toString('utf8');
    return {
      reportId: created.reportId,
      reportDocumentId: report.reportDocumentId,
      url: document.url,
      compressionAlgorithm: document.compressionAlgorithm,
      firstLine: text.split('\n')[0]
    };
  });
  Object.assign(out.report, {stage, url});
  // A 429 from the gateway (the tool's plan): axios-retry waits 1/x-amzn-RateLimit-Limit + 1.5 s.
  out.throttled = await step(async () => {
    const query = {marketplaceIds: [marketplace], createdAfter: '2020-01-01T00:00:00Z'};
    const first = await orders.getOrders(query);
    const second = await orders.getOrders(query);
    return {orders: [first.data.payload.Orders.length, second.data.payload.Orders.length]};
  });
  out.retries = retries;
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});

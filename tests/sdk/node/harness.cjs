// What both SDK scripts share: running a step without throwing, and the report document to fetch.
'use strict';

/** Runs one step: `{ok: true, ms, ...result}`, or `{ok: false, ms, ...describe(error)}`. */
async function step(fn, describe) {
  const started = Date.now();
  try {
    const result = await fn();
    return {ok: true, ms: Date.now() - started, ...result};
  } catch (e) {
    return {ok: false, ms: Date.now() - started, ...describe(e)};
  }
}

/** The sandbox's own report document (gzip, synthetic orders) when SPGATE_REPORT_DOCUMENT names
 * it: Amazon's static getReport example points at a document on Amazon's CDN, out of a test's reach. */
function documentId(report) {
  return process.env.SPGATE_REPORT_DOCUMENT || report.reportDocumentId;
}

/** What buyer data an Orders v0 getOrder payload carries (which fields, and whether the address
 * and the e-mail came back), never the values themselves beyond the address line. */
function orderPii(order) {
  const buyer = order.BuyerInfo || {};
  const address = order.ShippingAddress || {};
  return {
    addressLine1: address.AddressLine1 || null,
    buyerEmail: Boolean(buyer.BuyerEmail),
    buyerName: Boolean(buyer.BuyerName)
  };
}

module.exports = {step, documentId, orderPii};

#!/usr/bin/env python3
"""Derive spgate's compiled-in data from Amazon's SP-API models.

Reads ../shared/spapi-models (or the directory given as the first argument) and writes:
  data/operations.tsv        one row per SP-API operation (the catalog)
  fixtures/sandbox-examples.json every static `x-amzn-api-sandbox` request/response pair
  data/app-rate-limits.tsv   application-wide limits (across all sellers) per operation, and the
                             sub-limits for kinds of calls, from app-rate-limits.tsv

The outputs are committed: the crate builds without the models. `tests/catalog.rs` checks the
committed files against the models whenever they are present, so a stale copy fails CI.
Run: python3 tools/gen-data.py [MODELS_DIR]
"""
import csv
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "spapi-models")
METHODS = ("get", "put", "post", "delete", "patch")

# Operations that need a Restricted Data Token (pii-fields.md section 1, Tokens API use-case guide).
RESTRICTED = {
    "ordersV0": ["getOrders", "getOrder", "getOrderItems", "getOrderAddress", "getOrderBuyerInfo",
                 "getOrderItemsBuyerInfo", "getOrderRegulatedInfo"],
    "merchantFulfillmentV0": ["getShipment", "cancelShipment", "createShipment"],
    "reports_2021-06-30": ["getReportDocument"],
    "shipmentInvoicingV0": ["getShipmentDetails"],
    "easyShip_2022-03-23": ["createScheduledPackageBulk"],
    "vendorDirectFulfillmentOrdersV1": ["getOrders", "getOrder"],
    "vendorDirectFulfillmentOrders_2021-12-28": ["getOrders", "getOrder"],
    "vendorDirectFulfillmentShippingV1": ["getShippingLabel", "getShippingLabels", "getPackingSlip",
                                          "getPackingSlips", "getCustomerInvoice", "getCustomerInvoices"],
    "vendorDirectFulfillmentShipping_2021-12-28": ["getShippingLabel", "getShippingLabels",
                                                   "createShippingLabels", "getPackingSlip",
                                                   "getPackingSlips", "getCustomerInvoice",
                                                   "getCustomerInvoices"],
}

# Operations whose responses carry buyer PII: the operations of the field map itself
# (data/pii-fields.tsv), so the catalog's PII map reference always agrees with it.
PII_RESPONSES = {}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data",
                       "pii-fields.tsv")) as _f:
    for _line in _f:
        if _line.startswith("#") or _line.startswith("operation\t") or not _line.strip():
            continue
        _model, _op = _line.split("\t", 1)[0].split(".", 1)
        PII_RESPONSES.setdefault(_model, [])
        if _op not in PII_RESPONSES[_model]:
            PII_RESPONSES[_model].append(_op)

# Grantless operations and their LWA scope (FACTS.md (a)).
GRANTLESS = {
    ("notifications", "getDestinations"): "sellingpartnerapi::notifications",
    ("notifications", "createDestination"): "sellingpartnerapi::notifications",
    ("notifications", "getDestination"): "sellingpartnerapi::notifications",
    ("notifications", "deleteDestination"): "sellingpartnerapi::notifications",
    ("notifications", "getSubscriptionById"): "sellingpartnerapi::notifications",
    ("notifications", "deleteSubscriptionById"): "sellingpartnerapi::notifications",
    ("application_2023-11-30", "rotateApplicationClientSecret"): "sellingpartnerapi::client_credential:rotation",
}


def load_usage_plans():
    plans = {}
    with open(os.path.join(MODELS, "rate-limits.tsv"), newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            plans[(row["model_file"], row["operation_id"])] = (row["api"], row["rate_per_second"], row["burst"])
    return plans


# The '[case: ...]' sub-limits of app-rate-limits.tsv, by the kind of call the gateway can name.
APP_CASES = {
    "updates with variations data attributes, e.g. child_parent_sku_relationship": "variations",
    "updates with product data attributes, e.g. item_name": "product_data",
    "validation previews": "validation_preview",
}


def write_app_limits(ops):
    """data/app-rate-limits.tsv: one row per (operation key, kind); kind empty = the operation's
    application-wide limit. The burst of a sub-limit row (Amazon publishes none) is 1."""
    rows = []
    with open(os.path.join(MODELS, "app-rate-limits.tsv"), newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    for row in csv.DictReader(lines, delimiter="\t"):
        op_id, _, case = row["operation_id"].partition(" [case: ")
        kind = APP_CASES[case.rstrip("]")] if case else ""
        version = row["version"].lstrip("v")
        matches = [o for o in ops if o["operation_id"] == op_id and o["model"].endswith(version)]
        if len(matches) != 1:
            sys.exit(f"app-rate-limits.tsv: {row['operation_id']} {row['version']} names "
                     f"{len(matches)} operations")
        burst = row["burst"] or "1"
        rows.append((matches[0]["key"], kind, row["rate_per_application"], burst, row["source"]))
    with open(os.path.join(ROOT, "data", "app-rate-limits.tsv"), "w", newline="") as f:
        f.write("# Generated by tools/gen-data.py from app-rate-limits.tsv. Do not edit.\n")
        f.write("key\tkind\trate\tburst\tsource\n")
        for r in sorted(rows):
            f.write("\t".join(r) + "\n")
    return len(rows)


def resolve_param(model, prm):
    if "$ref" in prm:
        return model.get("parameters", {}).get(prm["$ref"].split("/")[-1], {})
    return prm


def main():
    plans = load_usage_plans()
    ops, examples = [], []
    for path in sorted(glob.glob(os.path.join(MODELS, "*", "*.json"))):
        rel = os.path.relpath(path, MODELS)
        model_name = os.path.splitext(os.path.basename(path))[0]
        model = json.load(open(path))
        for template, item in model.get("paths", {}).items():
            shared_params = item.get("parameters", [])
            for method in METHODS:
                op = item.get(method)
                if not isinstance(op, dict):
                    continue
                op_id = op["operationId"]
                key = f"{model_name}.{op_id}"
                api, rate, burst = plans[(rel, op_id)]
                ops.append({
                    "key": key, "api": api, "model": model_name, "operation_id": op_id,
                    "method": method.upper(), "path": template, "rate": rate, "burst": burst,
                    "restricted": "1" if op_id in RESTRICTED.get(model_name, []) else "0",
                    "grantless_scope": GRANTLESS.get((model_name, op_id), ""),
                    "pii_map": key if op_id in PII_RESPONSES.get(model_name, []) else "",
                    "model_file": rel,
                })
                where = {}
                for prm in shared_params + op.get("parameters", []):
                    prm = resolve_param(model, prm)
                    where[prm.get("name")] = prm.get("in")
                for status, resp in op.get("responses", {}).items():
                    for ex in resp.get("x-amzn-api-sandbox", {}).get("static", []):
                        req = {"path": {}, "query": {}, "body": None, "headers": {}}
                        for name, spec in ex.get("request", {}).get("parameters", {}).items():
                            loc = where.get(name, "body")  # a few examples name the body "body"
                            value = spec.get("value")
                            if loc == "body":
                                req["body"] = value
                            elif loc == "header":
                                req["headers"][name] = value
                            else:
                                req[loc][name] = value
                        examples.append({"op": key, "status": int(status), "request": req,
                                         "response": ex.get("response")})
    # Amazon's models reuse an operationId for two methods in one place (shippingV2
    # linkCarrierAccount: PUT and POST); such keys get the method appended so each stays unique.
    counts = {}
    for o in ops:
        counts[o["key"]] = counts.get(o["key"], 0) + 1
    renamed = {}
    for o in ops:
        if counts[o["key"]] > 1:
            old = o["key"]
            o["key"] = f'{old}.{o["method"]}'
            if o["pii_map"]:
                o["pii_map"] = o["key"]
            renamed.setdefault(old, []).append(o["key"])
    for e in examples:
        if e["op"] in renamed:
            sys.exit(f"sandbox example for ambiguous operation {e['op']}: disambiguate it")
    for wanted in (RESTRICTED, PII_RESPONSES):
        for model_name, names in wanted.items():
            for n in names:
                if not any(o["model"] == model_name and o["operation_id"] == n for o in ops):
                    sys.exit(f"{model_name}.{n} named in gen-data.py is not in the models")
    cols = ["key", "api", "model", "operation_id", "method", "path", "rate", "burst", "restricted",
            "grantless_scope", "pii_map", "model_file"]
    with open(os.path.join(ROOT, "data", "operations.tsv"), "w", newline="") as f:
        f.write("# Generated by tools/gen-data.py from Amazon's SP-API models. Do not edit.\n")
        f.write("\t".join(cols) + "\n")
        for o in ops:
            f.write("\t".join(o[c] for c in cols) + "\n")
    with open(os.path.join(ROOT, "fixtures", "sandbox-examples.json"), "w") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(e, separators=(",", ":"), sort_keys=True) for e in examples))
        f.write("\n]\n")
    app_rows = write_app_limits(ops)
    print(f"{len(ops)} operations, {len(examples)} sandbox examples, {app_rows} application limits")


if __name__ == "__main__":
    main()

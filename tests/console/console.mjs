// Browser test of spgate's web console, run by tests/console.rs against a gateway that served
// sandbox traffic. playwright-core drives Debian's Chromium (/usr/bin/chromium, or $CHROMIUM).
// Every check throws on failure; the process exits non-zero on the first one.
import { chromium } from "playwright-core";
import { strict as assert } from "node:assert";
import path from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const BASE = env("CONSOLE_URL");
const PROXY = env("PROXY_URL");
const OPS = env("OPS_TOKEN");
const SECURITY = env("SECURITY_TOKEN");
const SELLER = env("SELLER");
const ORDER = env("ORDER_ID");
const ORDER2 = env("ORDER_ID_2");
const SHOTS = env("SCREENSHOTS");

const log = (m) => console.log(`ok - ${m}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});

/** A fresh browser profile at 1280×800, signed in with `token`. */
async function signIn(token, expectedRole) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(msg.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  const login = await page.goto(`${BASE}/console/login`);
  assert.equal(login.status(), 200);
  const csp = login.headers()["content-security-policy"];
  assert.match(csp, /default-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(`${BASE}/console`), page.click("button[type=submit]")]);
  assert.equal(await page.textContent("h1"), "Overview");
  assert.match(await page.textContent("header .who"), new RegExp(`\\(${expectedRole}\\)`));
  const cookie = (await context.cookies()).find((c) => c.name === "spgate_console");
  assert.ok(cookie, "session cookie set");
  // Plain HTTP on loopback: no __Host- cookie (it needs TLS), no HSTS, no warning banner.
  assert.equal(cookie.secure, false);
  assert.equal(await page.locator("#plain-http").count(), 0);
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.equal(cookie.path, "/console");
  // The session cookie is not readable by script.
  assert.doesNotMatch(await page.evaluate(() => document.cookie), /spgate_console=/);
  log(`signed in as ${expectedRole}`);
  return { context, page, problems };
}

/** The session's CSRF token (every form carries it; the sign-out form is on every page). */
const csrfOf = (page) => page.getAttribute("form.who input[name=csrf]", "value");

/** POSTs a form from the page (same origin, the browser's own fetch). */
const post = (page, url, fields) =>
  page.evaluate(
    async ({ url, fields }) => {
      const r = await fetch(url, { method: "POST", body: new URLSearchParams(fields), redirect: "manual" });
      return r.status;
    },
    { url, fields },
  );

// With DOCS_SHOTS (an absolute path, e.g. the checkout's docs/console), each page's first screen
// is also saved there for the README: desktop pages at 3/4 scale (960×600), the phone as is.
const DOCS = process.env.DOCS_SHOTS;

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
  if (DOCS) {
    const vp = page.viewportSize();
    const scale = vp.width > 800 ? 0.75 : 1;
    await page.evaluate(() => window.scrollTo(0, 0));
    const top = await page.screenshot({ fullPage: false });
    const small = await browser.newPage({
      viewport: { width: Math.round(vp.width * scale), height: Math.round(vp.height * scale) },
    });
    await small.setContent(
      `<body style="margin:0"><img style="width:100%;display:block" src="data:image/png;base64,${top.toString("base64")}"></body>`,
    );
    await small.screenshot({ path: path.join(DOCS, `${name}.png`) });
    await small.close();
  }
}

async function proxyStatus(key) {
  const r = await fetch(`${PROXY}/sellers/v1/marketplaceParticipations`, {
    headers: { authorization: `Bearer ${key}`, "x-spgate-seller": SELLER },
  });
  return r.status;
}

// --- Signed out: every page sends to the sign-in page; a wrong token is refused. ---
{
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${BASE}/console/audit`);
  assert.equal(new URL(page.url()).pathname, "/console/login");
  await page.fill("#token", "not-an-admin-token");
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/console/login") && r.request().method() === "POST"),
    page.click("button[type=submit]"),
  ]);
  assert.equal(resp.status(), 401);
  log("signed out: redirected to sign-in; an unknown token is refused (401)");
  await context.close();
  // A sign-in without its pre-session CSRF cookie is refused, even with a valid token.
  const fresh = await browser.newContext();
  const bare = await fresh.request.post(`${BASE}/console/login`, {
    form: { csrf: "x", token: OPS },
    maxRedirects: 0,
  });
  assert.equal(bare.status(), 403);
  await fresh.close();
}

// --- ops ---
{
  const { context, page, problems } = await signIn(OPS, "ops");
  // Overview: the sandbox traffic, per tool, and the dependencies.
  const tools = await page.textContent("#live table");
  assert.match(tools, /orders-app/);
  assert.match(await page.textContent("#live .health"), /store OK/);
  assert.ok((await page.locator("#live figure.chart svg polyline").count()) >= 4, "charts drawn");
  // The script refreshes the live section (same origin, allowed by the CSP).
  assert.equal(await page.locator("#live[data-updated]").count(), 0, "not refreshed yet");
  await page.waitForSelector("#live[data-updated]", { timeout: 15000 });
  assert.match(await page.textContent("#live table"), /orders-app/);
  await shot(page, "overview");
  log("overview: per-tool figures, charts, health, live refresh");

  await page.goto(`${BASE}/console/ratelimits`);
  assert.match(await page.textContent("main table"), /ordersV0\.getOrderAddress/);
  assert.match(await page.textContent("main table"), /orders-app/);
  await Promise.all([page.waitForURL(`${BASE}/console/ratelimits/reload`), page.click("text=Reload the configuration")]);
  assert.match(await page.textContent("main .notice"), /Reloaded/);
  await shot(page, "ratelimits");
  log("rate limits: buckets with tool shares; reload shows its result");

  await page.goto(`${BASE}/console/sellers`);
  assert.match(await page.textContent("main"), new RegExp(SELLER));
  await page.selectOption("select[name=region]", "eu");
  await Promise.all([page.waitForURL(`${BASE}/console/sellers/invite`), page.click("text=Create an invite link")]);
  assert.match(await page.inputValue("#invite-link"), /^https:\/\/spgate\.example\.test\//);
  log("sellers: invite link created");
  await page.fill("input[name=tool]", "ui-tool");
  await page.fill("input[name=role]", "orders");
  await page.fill("input[name=sellers]", SELLER);
  await Promise.all([page.waitForURL(`${BASE}/console/tools/create`), page.click("text=Create the key")]);
  const key = await page.inputValue("#new-key");
  const id = await page.textContent("#new-client-id");
  assert.match(key, /^spg_/);
  assert.equal(await proxyStatus(key), 200, "the new key works on the proxy");
  await shot(page, "sellers");
  await Promise.all([
    page.waitForURL(`${BASE}/console/tools/revoke`),
    page.click(`tr[data-client="${id}"] button`),
  ]);
  assert.match(await page.textContent("main .notice"), /Revoked/);
  const refused = await proxyStatus(key);
  assert.ok(refused === 401 || refused === 403, `the revoked key is refused on the proxy (${refused})`);
  log(`sellers and tools: key ${id} created (works) and revoked (then ${refused} on the proxy)`);

  // ops may not see or do security's part.
  for (const p of ["/console/audit", "/console/retention"]) {
    const r = await page.goto(`${BASE}${p}`);
    assert.equal(r.status(), 403, p);
  }
  await page.goto(`${BASE}/console`);
  const csrf = await csrfOf(page);
  assert.equal(
    await post(page, "/console/retention/hold", { csrf, seller: SELLER, order: ORDER, reason: "x", until: "2099-01-01" }),
    403,
  );
  assert.equal(await post(page, "/console/retention/erase", { csrf, order: ORDER, confirm: ORDER }), 403);
  log("ops refused on security pages and actions (403)");

  // CSRF-less and cross-origin posts are refused, with a live session.
  assert.equal(await post(page, "/console/tools/create", { tool: "x", role: "orders", sellers: SELLER }), 403);
  assert.equal(await post(page, "/console/tools/create", { csrf: "wrong", tool: "x", role: "orders", sellers: SELLER }), 403);
  const cross = await context.request.post(`${BASE}/console/tools/create`, {
    form: { csrf, tool: "x", role: "orders", sellers: SELLER },
    headers: { origin: "http://evil.example", "sec-fetch-site": "cross-site" },
    maxRedirects: 0,
  });
  assert.equal(cross.status(), 403);
  // A form on another origin posting to the console: the SameSite=Strict cookie stays home,
  // so the post is not signed in, and nothing is created.
  const other = await context.newPage();
  await other.goto("about:blank");
  await other.setContent(
    `<form method="post" action="${BASE}/console/tools/create"><input name="csrf" value="${csrf}"><input name="tool" value="evil"><input name="role" value="orders"><input name="sellers" value="${SELLER}"></form>`,
  );
  const [crossForm] = await Promise.all([
    other.waitForResponse((r) => r.request().method() === "POST"),
    other.evaluate(() => document.forms[0].submit()),
  ]);
  assert.equal(crossForm.status(), 403, "a form on another origin is refused");
  assert.doesNotMatch(await crossForm.text(), /Key created/);
  await other.close();
  await page.goto(`${BASE}/console/sellers`);
  assert.doesNotMatch(await page.textContent("main"), /\bevil\b/);
  log("CSRF-less, wrong-CSRF and cross-origin posts refused");

  // Phone width: no horizontal scrolling of the page.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${BASE}/console`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the overview fits a phone (overflow ${overflow}px)`);
  await shot(page, "overview-phone");
  log("overview usable at phone width");

  // The session ends elsewhere (signed out from another tab): the live refresh says so and
  // dims the stale figures instead of showing them as current.
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(`${BASE}/console`);
  await page.evaluate(async (csrf) => {
    await fetch("/console/logout", { method: "POST", body: new URLSearchParams({ csrf }), redirect: "manual" });
  }, await csrfOf(page));
  await page.waitForSelector("#live-status.bad", { timeout: 15000 });
  assert.match(await page.textContent("#live-status"), /session has ended/);
  assert.equal(await page.getAttribute("#live", "data-stale"), "true");
  log("live refresh: an ended session is shown as such, the stale figures dimmed");

  assert.deepEqual(problems.filter((p) => /Content.Security.Policy|Refused to/i.test(p)), [], "no CSP violation");
  await context.close();
}

// --- security ---
{
  const { context, page, problems } = await signIn(SECURITY, "security");
  await page.goto(`${BASE}/console/audit`);
  assert.match(await page.textContent("table.records"), /orders-app/);
  assert.match(await page.textContent("#verify-status"), /Not verified/);
  assert.ok((await page.locator(".report svg.bars rect").count()) >= 1, "PII categories charted");
  assert.match(await page.textContent(".report"), /address/);
  // The query form filters.
  await page.fill("input[name=tool]", "orders-app");
  await page.selectOption("select[name=kind]", "request");
  await Promise.all([page.waitForURL(/\/console\/audit\?/), page.click("form.filters button[type=submit]")]);
  assert.match(await page.textContent("#audit-summary"), /^[1-9]\d* matching record/);
  const rows = await page.locator("table.records").first().locator("tbody tr").evaluateAll((trs) =>
    trs.map((tr) => [...tr.cells].map((c) => c.textContent)),
  );
  assert.ok(rows.length >= 8, `filtered rows: ${rows.length}`);
  for (const cells of rows) {
    assert.equal(cells[2], "request", cells.join(" | "));
    assert.equal(cells[3], "orders-app", cells.join(" | "));
  }
  // Verification reads every file: it runs when asked.
  await Promise.all([page.waitForURL(`${BASE}/console/audit/verify`), page.click("text=Verify the chains now")]);
  assert.match(await page.textContent("#verify-status"), /Every chain verified/);
  await page.goBack();
  await shot(page, "audit");
  log("audit: records newest first, per-tool PII chart, chain verified");

  await page.goto(`${BASE}/console/retention`);
  assert.match(await page.textContent("main .stats"), /active/);
  const form = page.locator("form[action='/console/retention/hold']");
  await form.locator("input[name=seller]").fill(SELLER);
  await form.locator("input[name=order]").fill(ORDER);
  await form.locator("input[name=reason]").fill("litigation-hold-test");
  await form.locator("input[name=until]").fill("2099-01-31");
  await Promise.all([page.waitForURL(`${BASE}/console/retention/hold`), form.locator("button").click()]);
  assert.match(await page.textContent("main .notice"), /Legal hold on/);
  assert.match(await page.textContent("main .notice"), /2099-01-31/);
  const heldCount = page.locator(".stat", { has: page.locator(".label", { hasText: /^held$/ }) }).locator(".value");
  assert.equal((await heldCount.textContent()).trim(), "1", "the vault report counts the held order");
  await shot(page, "retention");
  log(`retention: legal hold set on ${ORDER}`);

  // Export: a download of the order's data.
  await page.goto(`${BASE}/console/retention`);
  const exportForm = page.locator("form[action='/console/retention/export']");
  await exportForm.locator("input[name=order]").fill(ORDER2);
  await exportForm.locator("input[name=confirm]").check();
  const [download] = await Promise.all([page.waitForEvent("download"), exportForm.locator("button").click()]);
  assert.equal(download.suggestedFilename(), "spgate-export.json");
  log(`retention: ${ORDER2} exported`);
  // Erase: refused without a reason (the browser's own check is bypassed), then done with one.
  assert.equal(await post(page, "/console/retention/erase", { csrf: await csrfOf(page), order: ORDER2, confirm: ORDER2 }), 400);
  const eraseForm = page.locator("form[action='/console/retention/erase']");
  await eraseForm.locator("input[name=order]").fill(ORDER2);
  await eraseForm.locator("input[name=confirm]").fill(ORDER2);
  await eraseForm.locator("input[value=data_subject_request]").check();
  await Promise.all([page.waitForURL(`${BASE}/console/retention/erase`), eraseForm.locator("button").click()]);
  assert.match(await page.textContent("main .notice"), new RegExp(`Erased ${ORDER2}`));
  // Erasing a held order is refused, and the page says so with an error status.
  await page.goto(`${BASE}/console/retention`);
  const heldErase = await post(page, "/console/retention/erase", {
    csrf: await csrfOf(page), order: ORDER, confirm: ORDER, reason: "operator_decision",
  });
  assert.equal(heldErase, 409, "a held order is not erased");
  log(`retention: ${ORDER2} erased with its reason; a held order refused`);

  // security may not see or do ops' part.
  for (const p of ["/console/ratelimits", "/console/sellers"]) {
    const r = await page.goto(`${BASE}${p}`);
    assert.equal(r.status(), 403, p);
  }
  await page.goto(`${BASE}/console`);
  const csrf = await csrfOf(page);
  assert.equal(await post(page, "/console/tools/create", { csrf, tool: "x", role: "orders", sellers: SELLER }), 403);
  assert.equal(await post(page, "/console/ratelimits/reload", { csrf }), 403);
  log("security refused on ops pages and actions (403)");

  // Signing out ends the session on the server.
  await Promise.all([page.waitForURL(`${BASE}/console/login`), page.click("text=Sign out")]);
  await page.goto(`${BASE}/console/audit`);
  assert.equal(new URL(page.url()).pathname, "/console/login");
  log("sign-out ends the session");
  assert.deepEqual(problems.filter((p) => /Content.Security.Policy|Refused to/i.test(p)), [], "no CSP violation");
  await context.close();
}

await browser.close();
console.log("all console checks passed");

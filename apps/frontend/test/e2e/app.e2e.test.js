// One end-to-end test: the built frontend (standalone server) and the real backend on
// PostgreSQL, driven through headless Debian Chromium with playwright-core.
// apps/test starts both servers and sets FRONTEND_URL.
import assert from "node:assert/strict";
import { test } from "node:test";

import { chromium } from "playwright-core";

const BASE = process.env.FRONTEND_URL || "http://127.0.0.1:3000";
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

test("add a task in the UI, see it listed, then add one through the chat", { timeout: 90_000 }, async (t) => {
  // The flags keep Chromium off the network (only loopback is reachable in CI); Playwright
  // gives every launch a fresh, empty profile directory of its own.
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  t.after(() => browser.close());

  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  await page.goto(BASE, { waitUntil: "networkidle" });
  const title = `buy milk ${Date.now()}`;
  await page.getByTestId("new-task").fill(title);
  await page.getByTestId("add-task").click();

  const item = page.getByTestId("task").filter({ hasText: title });
  await item.waitFor({ timeout: 15_000 });
  assert.equal(await page.getByTestId("new-task").inputValue(), "", "input is cleared after adding");

  // Completing it goes through PATCH .../complete and the list re-reads server state.
  await item.getByRole("checkbox").click(); // controlled input: it flips once the server answers
  await page.locator("li.task.done", { hasText: title }).waitFor({ timeout: 15_000 });

  // The chat panel drives the MCP tools; the task list refreshes after a tool call.
  await page.getByTestId("chat-input").fill("add walk the dog");
  await page.getByTestId("chat-send").click();
  await page.getByTestId("chat-log").getByText(/Added task #\d+: "walk the dog"/).waitFor({ timeout: 15_000 });
  await page.getByTestId("task").filter({ hasText: "walk the dog" }).waitFor({ timeout: 15_000 });

  if (process.env.E2E_SCREENSHOT) await page.screenshot({ path: process.env.E2E_SCREENSHOT, fullPage: true });
  assert.deepEqual(errors, []);
});

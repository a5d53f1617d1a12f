// Drives the booking page in real headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core): signs in, waits for the day's slots, books the first, and prints
// what it saw as one JSON line: {"slots": n, "start": iso, "booked": name}.
//
// node tests/book.mjs <page URL> <email> <password>

import { chromium } from "playwright-core";

const [url, email, password] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
});
try {
  const page = await browser.newPage();
  page.on("console", (message) => console.error(`page: ${message.text()}`));
  await page.goto(url);
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.click("#sign-in-button");
  const error = page.locator("#error");
  const first = page.locator("button.slot").first();
  await Promise.race([
    first.waitFor({ timeout: 20000 }),
    error.filter({ hasText: /./ }).waitFor({ timeout: 20000 }).then(async () => {
      throw new Error(`the page said: ${await error.textContent()}`);
    }),
  ]);
  const slots = await page.locator("button.slot").count();
  const start = await first.getAttribute("data-start");
  await first.click();
  const booked = page.locator("#booked");
  await Promise.race([
    booked.filter({ hasText: /\/appointments\// }).waitFor({ timeout: 20000 }),
    error.filter({ hasText: /./ }).waitFor({ timeout: 20000 }).then(async () => {
      throw new Error(`the page said: ${await error.textContent()}`);
    }),
  ]);
  console.log(JSON.stringify({ slots, start, booked: await booked.textContent() }));
} finally {
  await browser.close();
}

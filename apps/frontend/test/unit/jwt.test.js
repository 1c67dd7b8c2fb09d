import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { test } from "node:test";

import { demoToken, signJwt } from "../../lib/jwt.js";

const decode = (part) => JSON.parse(Buffer.from(part, "base64url").toString());

test("signJwt matches the RFC 7519-style reference vector", () => {
  // The well-known jwt.io HS256 example: same header, payload and secret, same signature.
  const token = signJwt({ sub: "1234567890", name: "John Doe", iat: 1516239022 }, "your-256-bit-secret");
  assert.equal(
    token,
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
  );
});

test("demoToken carries sub, iat and a short expiry, signed with the secret", () => {
  const now = Date.UTC(2026, 0, 1);
  const [h, p, s] = demoToken("demo", "k".repeat(40), now, 300).split(".");
  assert.deepEqual(decode(h), { alg: "HS256", typ: "JWT" });
  assert.deepEqual(decode(p), { sub: "demo", iat: now / 1000, exp: now / 1000 + 300 });
  assert.equal(s, createHmac("sha256", "k".repeat(40)).update(`${h}.${p}`).digest("base64url"));
});

test("an empty secret is refused rather than producing a forgeable token", () => {
  assert.throws(() => signJwt({ sub: "x" }, ""), /secret/);
});

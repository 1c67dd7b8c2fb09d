// Minimal HS256 JWT signing with node:crypto - one function does not justify a dependency.
import { createHmac } from "node:crypto";

const b64url = (input) => Buffer.from(input).toString("base64url");

export function signJwt(payload, secret) {
  if (!secret) throw new Error("JWT secret is empty");
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(payload));
  const signature = createHmac("sha256", secret).update(`${header}.${body}`).digest("base64url");
  return `${header}.${body}.${signature}`;
}

// A short-lived token for the demo user; minted per request, so nothing to cache or rotate.
export function demoToken(userId, secret, now = Date.now(), ttlSeconds = 300) {
  const iat = Math.floor(now / 1000);
  return signJwt({ sub: userId, iat, exp: iat + ttlSeconds }, secret);
}

// The official TypeScript SDK's X402Flow paying one of our sellers, v1 then v2.
//   SDK_DIR=<npm install dir> node buyer.cjs BUYER_KEY URL
// Prints one JSON line: per version, the paid status and body, and the same header again.
'use strict';
const path = require('node:path');
const { createRequire } = require('node:module');
const sdkRequire = createRequire(path.join(process.env.SDK_DIR, 'package.json'));
const { Client, ConfigBuilder, X402Flow } = sdkRequire('@4mica/sdk');
const { privateKeyToAccount } = sdkRequire('viem/accounts');

async function pay(flow, url, version, address) {
  const first = await fetch(url);
  let signed;
  if (version === 1) {
    const accepts = (await first.json()).accepts;
    signed = await flow.signPayment(accepts[0], address);
  } else {
    const header = first.headers.get('payment-required');
    const required = JSON.parse(Buffer.from(header, 'base64').toString('utf8'));
    signed = await flow.signPaymentV2(required, required.accepts[0], address);
  }
  const name = version === 1 ? 'X-PAYMENT' : 'PAYMENT-SIGNATURE';
  const paid = await fetch(url, { headers: { [name]: signed.header } });
  const again = await fetch(url, { headers: { [name]: signed.header } });
  return {
    challenge: first.status,
    status: paid.status,
    body: await paid.text(),
    claimsVersion: signed.payload.claims.version,
    againStatus: again.status,
    againBody: await again.text(),
  };
}

(async () => {
  const [key, url] = process.argv.slice(2);
  const first = await fetch(url);
  const rpcUrl = (await first.json()).accepts[0].extra.rpcUrl;
  const client = await Client.new(new ConfigBuilder().walletPrivateKey(key).rpcUrl(rpcUrl).build());
  const flow = X402Flow.fromClient(client);
  const address = privateKeyToAccount(key).address;
  const out = { v1: await pay(flow, url, 1, address), v2: await pay(flow, url, 2, address) };
  await client.aclose();
  console.log(JSON.stringify(out));
})().catch((err) => {
  console.log(JSON.stringify({ error: String((err && err.stack) || err) }));
  process.exit(1);
});

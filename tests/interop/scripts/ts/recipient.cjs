// The official TypeScript SDK's recipient client against our service, default configuration
// (it signs in first): a tab per guarantee version, a guarantee our buyer signed submitted,
// its BLS certificate decoded, verified and read back.
//   SDK_DIR=<npm install dir> node recipient.cjs RECIPIENT_KEY CORE_URL BUYER_KEY PYTHON SIGN_PY
// Prints one JSON line; "problems" lists every byte-level difference found.
'use strict';
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { createRequire } = require('node:module');
const { pathToFileURL } = require('node:url');
const sdkRequire = createRequire(path.join(process.env.SDK_DIR, 'package.json'));
const sdk = sdkRequire('@4mica/sdk');
const { privateKeyToAccount } = sdkRequire('viem/accounts');
const { Client, ConfigBuilder, PaymentGuaranteeRequestClaims, PaymentGuaranteeRequestClaimsV2 } = sdk;
const USDC = '0x036CbD53842c5426634e7929541eC2318f3dCF7e';
const DST = 'BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_';
const hex = (x) => (typeof x === 'bigint' ? '0x' + x.toString(16) : x);

async function round(client, buyer, version, out, args) {
  const [buyerKey, python, signPy] = args;
  const recipient = client.recipient.recipientAddress;
  const tab = await client.recipient.createTab(buyer.address, recipient, USDC, 3600, version);
  const signed = JSON.parse(
    execFileSync(python, [signPy, buyerKey, recipient, hex(tab.tabId), hex(tab.nextReqId), String(version)])
  );
  const c = signed.claims;
  let claims = PaymentGuaranteeRequestClaims.new(
    c.user_address, c.recipient_address, c.tab_id, c.amount, c.timestamp, c.asset_address, c.req_id
  );
  if (version === 2) {
    const subject = sdk.computeValidationSubjectHash(claims);
    claims = new PaymentGuaranteeRequestClaimsV2({
      ...claims,
      validationRegistryAddress: c.validation_registry_address,
      validationRequestHash: c.validation_request_hash,
      validationChainId: c.validation_chain_id,
      validatorAddress: c.validator_address,
      validatorAgentId: BigInt(c.validator_agent_id),
      minValidationScore: c.min_validation_score,
      validationSubjectHash: subject,
      jobHash: c.job_hash,
      requiredValidationTag: c.required_validation_tag,
    });
    for (const [name, ours, theirs] of [
      ['subject hash', c.validation_subject_hash, subject],
      ['request hash', c.validation_request_hash, sdk.computeValidationRequestHash(claims)],
    ]) {
      if (ours !== theirs) out.problems.push(`v2 ${name}: ours ${ours}, the SDK's ${theirs}`);
    }
  }
  // The SDK's own user client signs the same claims: deterministic ECDSA, the same bytes.
  const own = await buyer.client.user.signPayment(claims);
  if (own.signature !== signed.signature) out.problems.push(`v${version} signature differs`);
  const cert = await client.recipient.issuePaymentGuarantee(claims, signed.signature, signed.scheme);
  const decoded = await client.recipient.verifyPaymentGuarantee(cert);
  const expect = {
    version, tabId: BigInt(c.tab_id), reqId: BigInt(c.req_id), amount: BigInt(c.amount),
    totalAmount: BigInt(c.amount), timestamp: c.timestamp,
  };
  for (const [k, v] of Object.entries(expect)) {
    if (decoded[k] !== v) out.problems.push(`v${version} certificate ${k}: ${decoded[k]} != ${v}`);
  }
  for (const [k, v] of [['userAddress', c.user_address], ['recipientAddress', recipient], ['assetAddress', USDC]]) {
    if (decoded[k].toLowerCase() !== v.toLowerCase()) out.problems.push(`v${version} certificate ${k}`);
  }
  if (version === 2) {
    const p = decoded.validationPolicy;
    if (p.requiredValidationTag !== c.required_validation_tag || p.jobHash !== c.job_hash
        || p.validationRequestHash !== c.validation_request_hash || p.minValidationScore !== c.min_validation_score) {
      out.problems.push(`v2 certificate policy: ${JSON.stringify(p, (k, v) => hex(v))}`);
    }
  }
  // What remunerate() sends. The SDK require()s @noble/curves 2 (ES modules only) even here,
  // which Node.js < 20.19 refuses: then only that step is left out (Debian 12 ships Node 18).
  let words = null;
  try {
    words = (await sdk.signatureToWordsAsync(cert.signature)).length;
  } catch (err) {
    if (!err || err.code !== 'ERR_REQUIRE_ESM') throw err;
  }
  const { bls12_381: bls } = await import(
    pathToFileURL(path.join(process.env.SDK_DIR, 'node_modules/@noble/curves/bls12-381.js'))
  );
  const sig = bls.longSignatures.Signature.fromHex(cert.signature.slice(2));
  const message = bls.longSignatures.hash(Buffer.from(cert.claims.slice(2), 'hex'), DST);
  const blsValid = bls.longSignatures.verify(sig, message, Uint8Array.from(client.params.publicKey));
  if (!blsValid) out.problems.push(`v${version} BLS signature does not verify`);
  const stored = await client.recipient.getGuarantee(tab.tabId, tab.nextReqId);
  if (JSON.stringify(stored && stored.certificate) !== JSON.stringify(cert)) {
    out.problems.push(`v${version} getGuarantee: ${JSON.stringify(stored && stored.certificate)}`);
  }
  out[`v${version}`] = { tabId: hex(tab.tabId), words, blsValid, amount: hex(stored.amount) };
}

(async () => {
  const [recipientKey, coreUrl, buyerKey, ...rest] = process.argv.slice(2);
  const config = (key) => new ConfigBuilder().walletPrivateKey(key).rpcUrl(coreUrl).build();
  const client = await Client.new(config(recipientKey));
  const buyer = { client: await Client.new(config(buyerKey)), address: privateKeyToAccount(buyerKey).address };
  const out = { problems: [] };
  for (const version of [1, 2]) await round(client, buyer, version, out, [buyerKey, ...rest]);
  await buyer.client.aclose();
  await client.aclose();
  console.log(JSON.stringify(out));
})().catch((err) => {
  console.log(JSON.stringify({ error: String((err && err.stack) || err) }));
  process.exit(1);
});

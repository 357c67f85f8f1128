// Verify a Sigstore bundle with @sigstore/verify, trusting only one bare public key.
//
// usage: node verify.mjs BUNDLE.json PUBLIC_KEY.pem
// The key is registered under its graven key id (hex sha256 of its SubjectPublicKeyInfo DER), so
// the bundle's verificationMaterial.publicKey.hint must name it. There is no transparency log,
// CT log or timestamp authority: all three thresholds are 0.
// Exit 0 when the bundle verifies, 1 when it does not, 2 on bad usage.
import { createHash, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';

import sigstoreBundle from '@sigstore/bundle';
import sigstoreVerify from '@sigstore/verify';

const { bundleFromJSON } = sigstoreBundle;
const { Verifier, toSignedEntity, toTrustMaterial } = sigstoreVerify;

const [bundlePath, keyPath] = process.argv.slice(2);
if (!bundlePath || !keyPath) {
  console.error('usage: node verify.mjs BUNDLE.json PUBLIC_KEY.pem');
  process.exit(2);
}

try {
  const der = createPublicKey(readFileSync(keyPath, 'utf8')).export({ type: 'spki', format: 'der' });
  const keyid = createHash('sha256').update(der).digest('hex');
  const root = { certificateAuthorities: [], timestampAuthorities: [], tlogs: [], ctlogs: [] };
  const keys = { [keyid]: { rawBytes: der, keyDetails: 0, validFor: undefined } };
  const trustMaterial = toTrustMaterial(root, keys);
  const verifier = new Verifier(trustMaterial, {
    tlogThreshold: 0,
    ctlogThreshold: 0,
    timestampThreshold: 0,
  });
  const bundle = bundleFromJSON(JSON.parse(readFileSync(bundlePath, 'utf8')));
  verifier.verify(toSignedEntity(bundle));
  console.log(`verified: signed by ${keyid}`);
  process.exit(0);
} catch (err) {
  console.error(`not verified: ${err && err.message ? err.message : err}`);
  process.exit(1);
}

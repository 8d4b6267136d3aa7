/**
 * AES-256-GCM for confidential memory content: a fresh 12-byte IV per value, the 16-byte tag, then
 * the ciphertext, stored as one bytea next to the id of the key that sealed it (so keys can rotate).
 */
import { createCipheriv, createDecipheriv, randomBytes } from "crypto";

const IV_BYTES = 12;
const TAG_BYTES = 16;

export interface Sealed {
	sealed: Buffer;
	keyId: string;
}

export function seal(plaintext: string, key: Buffer, keyId: string): Sealed {
	const iv = randomBytes(IV_BYTES);
	const cipher = createCipheriv("aes-256-gcm", key, iv);
	// The key id is authenticated too: a value cannot be replayed under another key's label.
	cipher.setAAD(Buffer.from(keyId, "utf8"));
	const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
	return { sealed: Buffer.concat([iv, cipher.getAuthTag(), body]), keyId };
}

export class SealedBoxError extends Error {
	constructor(message: string) {
		super(message);
		this.name = "SealedBoxError";
	}
}

export function open(sealed: Buffer, keyId: string, keys: Map<string, Buffer>): string {
	const key = keys.get(keyId);
	if (!key) throw new SealedBoxError(`encryption key "${keyId}" is not configured on this node`);
	const decipher = createDecipheriv("aes-256-gcm", key, sealed.subarray(0, IV_BYTES));
	decipher.setAAD(Buffer.from(keyId, "utf8"));
	decipher.setAuthTag(sealed.subarray(IV_BYTES, IV_BYTES + TAG_BYTES));
	try {
		return Buffer.concat([decipher.update(sealed.subarray(IV_BYTES + TAG_BYTES)), decipher.final()]).toString("utf8");
	} catch {
		throw new SealedBoxError(`content sealed with key "${keyId}" failed authentication`);
	}
}

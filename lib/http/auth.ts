/**
 * Bearer JWT (HS256) for the gateway and the socket handshake, and the access rules actions declare.
 *
 * An action says who may call it through the gateway with `access`:
 *   "public"        anyone, no token needed
 *   "user"          any valid token (the default for every REST action)
 *   ["admin", ...]  a valid token holding at least one of these roles
 * Internal endpoints declare ["service", "admin"].
 */
import { createSecretKey, type KeyObject } from "crypto";
import jwt from "jsonwebtoken";
import { ForbiddenError, UnauthorizedError } from "../mesh/errors";

export interface MeshUser {
	id: string;
	roles: string[];
	teams: string[];
}

export type Access = "public" | "user" | string[];

export const INTERNAL_ACCESS: Access = ["service", "admin"];

/** What the token and access checks below refuse with: 401 (no or bad token) or 403 (missing role). */
export type AuthRefusal = UnauthorizedError | ForbiddenError;

export function isAuthRefusal(err: unknown): err is AuthRefusal {
	return err instanceof UnauthorizedError || err instanceof ForbiddenError;
}

const secretKeys = new Map<string, KeyObject>();

/**
 * jsonwebtoken re-parses a string secret on every call (crypto.createPublicKey, then a fallback to a
 * secret key): with a KeyObject built once it skips that, which was over half of the gateway's CPU.
 */
function secretKey(secret: string): KeyObject {
	let key = secretKeys.get(secret);
	if (!key) {
		key = createSecretKey(Buffer.from(secret, "utf8"));
		secretKeys.set(secret, key);
	}
	return key;
}

export function signToken(secret: string, user: MeshUser, expiresInSeconds = 3600): string {
	return jwt.sign({ roles: user.roles, teams: user.teams }, secretKey(secret), {
		algorithm: "HS256",
		subject: user.id,
		expiresIn: expiresInSeconds,
	});
}

/** `roles` / `teams`: absent, or a list of strings; anything else is a malformed token, not "no roles". */
function stringList(value: unknown, claim: string): string[] {
	if (value === undefined) return [];
	if (!Array.isArray(value) || !value.every(v => typeof v === "string")) throw new UnauthorizedError(`Token claim '${claim}' must be a list of strings`, "INVALID_TOKEN");
	return value;
}

/**
 * The claims every token must carry: a string subject and an expiry. A token without `exp` would be
 * valid forever (and a socket holding one never swept); a numeric `sub` would compare unequal to the
 * string ids rows store.
 */
function userOf(payload: jwt.JwtPayload): MeshUser {
	if (typeof payload.sub !== "string" || payload.sub === "") throw new UnauthorizedError("Token has no subject (string 'sub')", "INVALID_TOKEN");
	if (typeof payload.exp !== "number") throw new UnauthorizedError("Token has no expiry ('exp')", "INVALID_TOKEN");
	return { id: payload.sub, roles: stringList(payload.roles, "roles"), teams: stringList(payload.teams, "teams") };
}

/**
 * Verified tokens, per secret, until they expire: a client sends the same token with every request,
 * and the HMAC check was the gateway's largest cost after I/O (docs/BENCHMARKS.md). Bounded; entries
 * never outlive the token's own `exp`, so expiry is still enforced to the second.
 */
const VERIFIED_CACHE_SIZE = 10_000;
const verified = new Map<string, Map<string, { user: MeshUser; expiresAt: number }>>();

function cachedUser(secret: string, token: string): MeshUser | undefined {
	const entry = verified.get(secret)?.get(token);
	if (!entry) return undefined;
	if (entry.expiresAt > Date.now()) return entry.user;
	verified.get(secret)?.delete(token);
	return undefined;
}

function remember(secret: string, token: string, user: MeshUser, expiresAt: number | null): void {
	if (!expiresAt) return; // tokens without an expiry are verified every time
	let bySecret = verified.get(secret);
	if (!bySecret) verified.set(secret, (bySecret = new Map()));
	// Oldest first out: a Map iterates in insertion order.
	if (bySecret.size >= VERIFIED_CACHE_SIZE) bySecret.delete(bySecret.keys().next().value as string);
	bySecret.set(token, { user, expiresAt });
}

export interface VerifiedToken {
	user: MeshUser;
	/** ms since the epoch (every accepted token has `exp`) */
	expiresAt: number;
}

/** Checks signature, algorithm and expiry; nothing is cached (a socket handshake verifies once per connection). */
export function verifyTokenClaims(secret: string, token: string): VerifiedToken {
	let payload: jwt.JwtPayload | string;
	try {
		payload = jwt.verify(token, secretKey(secret), { algorithms: ["HS256"] });
	} catch (err) {
		const expired = (err as Error).name === "TokenExpiredError";
		throw new UnauthorizedError(expired ? "Token expired" : "Invalid token", expired ? "TOKEN_EXPIRED" : "INVALID_TOKEN");
	}
	if (typeof payload === "string") throw new UnauthorizedError("Invalid token", "INVALID_TOKEN");
	return { user: userOf(payload), expiresAt: payload.exp! * 1000 };
}

/** The token's user, for requests that each carry the token: answered from a cache until the token expires. */
export function verifyToken(secret: string, token: string): MeshUser {
	const known = cachedUser(secret, token);
	if (known) return known;
	const { user, expiresAt } = verifyTokenClaims(secret, token);
	remember(secret, token, user, expiresAt);
	return user;
}

export function isAdmin(user: MeshUser): boolean {
	return user.roles.includes("admin");
}

/**
 * The calling user, for actions that need one: the gateway already enforces `access`, but a mesh
 * caller may come without a user, and gets the same 401.
 */
export function requireUser(ctx: { meta: { user?: MeshUser } }): MeshUser {
	if (!ctx.meta.user) throw new UnauthorizedError("Authentication required", "NO_TOKEN");
	return ctx.meta.user;
}

/** Extracts the token from "Authorization: Bearer <token>"; undefined when the header is absent. */
export function bearerToken(header: string | undefined): string | undefined {
	if (!header) return undefined;
	const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
	if (!match) throw new UnauthorizedError("Authorization header must be 'Bearer <token>'", "INVALID_TOKEN");
	return match[1];
}

/** Throws 401 when a token is needed and missing, 403 when the user lacks every allowed role. */
export function checkAccess(access: Access | undefined, user: MeshUser | undefined): void {
	const rule = access ?? "user";
	if (rule === "public") return;
	if (!user) throw new UnauthorizedError("Authentication required", "NO_TOKEN");
	if (rule === "user") return;
	if (!rule.some(role => user.roles.includes(role))) {
		throw new ForbiddenError(`Requires one of the roles: ${rule.join(", ")}`, "FORBIDDEN");
	}
}

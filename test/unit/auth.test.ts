/**
 * Token claims: a valid signature is not enough — every token needs a string `sub` and an `exp`, and
 * `roles`/`teams`, when present, must be lists of strings (a string "admin" is refused, not ignored).
 */
import jwt from "jsonwebtoken";
import { signToken, verifyToken, verifyTokenClaims } from "../../lib/http/auth";
import { UnauthorizedError } from "../../lib/mesh/errors";

const SECRET = "unit-secret-for-claims-0123456789abcdef";
const mint = (claims: Record<string, unknown>, options: jwt.SignOptions = {}) => jwt.sign(claims, SECRET, { algorithm: "HS256", ...options });
const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

describe("token claims", () => {
	it.each([
		["no exp", mint({ sub: "u1", roles: [] }), /expiry/],
		["a numeric sub", mint({ sub: 42, exp: inAnHour() }), /subject/],
		["an empty sub", mint({ sub: "", exp: inAnHour() }), /subject/],
		["no sub", mint({ exp: inAnHour() }), /subject/],
		["roles as a string", mint({ sub: "u1", exp: inAnHour(), roles: "admin" }), /'roles' must be a list/],
		["roles with a number", mint({ sub: "u1", exp: inAnHour(), roles: ["admin", 1] }), /'roles' must be a list/],
		["teams as an object", mint({ sub: "u1", exp: inAnHour(), teams: { t1: true } }), /'teams' must be a list/],
	])("refuses a token with %s (401 INVALID_TOKEN)", (_what, token, message) => {
		for (const verify of [verifyToken, verifyTokenClaims]) {
			let caught: unknown;
			try {
				verify(SECRET, token);
			} catch (err) {
				caught = err;
			}
			expect(caught).toBeInstanceOf(UnauthorizedError);
			expect(caught).toMatchObject({ code: 401, type: "INVALID_TOKEN", message: expect.stringMatching(message) });
		}
	});

	it("accepts what signToken mints, and a token without roles or teams", () => {
		expect(verifyToken(SECRET, signToken(SECRET, { id: "u1", roles: ["admin"], teams: ["t1"] }))).toEqual({ id: "u1", roles: ["admin"], teams: ["t1"] });
		expect(verifyTokenClaims(SECRET, mint({ sub: "u2", exp: inAnHour() })).user).toEqual({ id: "u2", roles: [], teams: [] });
	});
});

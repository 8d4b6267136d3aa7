/**
 * The error family (lib/mesh/errors.ts) and the one mapping to client answers (lib/http/error-answer.ts):
 * every class is a MoleculerError with a fixed status, keeps its class across the mesh, and answers
 * clients in the shape the bad-input and hardening suites pin.
 */
import { Errors } from "moleculer";
import ApiGateway from "moleculer-web";
import { DatabaseUnavailableError, MeshErrorRegenerator } from "../../lib/data/db-faults";
import { httpErrorAnswer, socketErrorAnswer } from "../../lib/http/error-answer";
import {
	BadRequestError,
	CancelledError,
	ConflictError,
	FAMILY,
	ForbiddenError,
	HeadersTooLargeError,
	invalidField,
	NotFoundError,
	PayloadTooLargeError,
	RateLimitedError,
	UnauthorizedError,
	UnavailableError,
	UnsupportedMediaTypeError,
} from "../../lib/mesh/errors";

const CASES: Array<[Errors.MoleculerError, number, string, boolean]> = [
	[new BadRequestError("Invalid JSON body: Unexpected end of JSON input", "INVALID_JSON"), 400, "INVALID_JSON", false],
	[new UnauthorizedError("Token expired", "TOKEN_EXPIRED"), 401, "TOKEN_EXPIRED", false],
	[new ForbiddenError("Requires one of the roles: admin"), 403, "FORBIDDEN", false],
	[new NotFoundError("Room r1 not found", "ROOM_NOT_FOUND", { room_id: "r1" }), 404, "ROOM_NOT_FOUND", false],
	[new ConflictError("Room r1 already exists", "ROOM_EXISTS", { field: "id" }), 409, "ROOM_EXISTS", false],
	[new PayloadTooLargeError("content is 9 bytes; the limit is 8", "CONTENT_TOO_LARGE", { field: "content" }), 413, "CONTENT_TOO_LARGE", false],
	[new UnsupportedMediaTypeError("Request body must be application/json", "UNSUPPORTED_MEDIA_TYPE", { contentType: "text/plain" }), 415, "UNSUPPORTED_MEDIA_TYPE", false],
	[new HeadersTooLargeError("Request line or headers are too large"), 431, "HEADERS_TOO_LARGE", false],
	[new CancelledError("The client went away", "CANCELLED", { retry_elsewhere: false }), 499, "CANCELLED", false],
	[new RateLimitedError("Rate limit exceeded, retry later", "RATE_LIMITED", { retryAfter: 1 }), 429, "RATE_LIMITED", false],
	[new UnavailableError("Service 'city' has no available node right now"), 503, "SERVICE_UNAVAILABLE", true],
];

describe("error family", () => {
	it.each(CASES.map(c => [c[0].name, ...c] as const))("%s is a MoleculerError with its status, type and retryable flag", (_name, err, code, type, retryable) => {
		expect(err).toBeInstanceOf(Errors.MoleculerError);
		expect(err).toMatchObject({ code, type, retryable });
		expect(err.message).not.toBe("");
	});

	it("builds on moleculer-web's classes where it has one", () => {
		expect(new BadRequestError("x")).toBeInstanceOf(ApiGateway.Errors.BadRequestError);
		expect(new UnauthorizedError("x")).toBeInstanceOf(ApiGateway.Errors.UnAuthorizedError);
		expect(new ForbiddenError("x")).toBeInstanceOf(ApiGateway.Errors.ForbiddenError);
		expect(new NotFoundError("x")).toBeInstanceOf(ApiGateway.Errors.NotFoundError);
		expect(new RateLimitedError("x")).toBeInstanceOf(ApiGateway.Errors.RateLimitExceeded);
		expect(new DatabaseUnavailableError("shutdown")).toBeInstanceOf(UnavailableError);
	});

	it("lists every class for the mesh, under the name it travels by", () => {
		for (const [name, Class] of Object.entries(FAMILY)) expect(new Class("x").name).toBe(name);
		expect(Object.keys(FAMILY).sort()).toEqual(CASES.map(c => c[0].name).sort());
	});

	it.each(CASES.map(c => [c[0].name, c[0]] as const))("%s keeps its class, message, type, data and retryable across the mesh", (_name, err) => {
		const regenerator = new MeshErrorRegenerator();
		regenerator.init({ nodeID: "callee" } as unknown as Parameters<MeshErrorRegenerator["init"]>[0]);
		const plain = JSON.parse(JSON.stringify(regenerator.extractPlainError(err, {})));
		const restored = regenerator.restore(plain, {}) as Errors.MoleculerError;
		expect(restored).toBeInstanceOf(err.constructor);
		expect(restored).toMatchObject({ name: err.name, message: err.message, code: err.code, type: err.type, data: err.data, retryable: err.retryable });
	});

	it("names the field of bad input in the validator's shape", () => {
		const err = invalidField("user_id", "is required");
		expect(err).toBeInstanceOf(Errors.ValidationError);
		expect(err).toMatchObject({ code: 422, type: "VALIDATION_ERROR", data: [{ field: "user_id", message: "is required" }] });
	});
});

describe("client answers", () => {
	it("HTTP: {name, message, code, type, data, retryable}; Retry-After only for retryable errors", () => {
		expect(httpErrorAnswer(new ConflictError("Room r1 already exists", "ROOM_EXISTS", { field: "id" }))).toEqual({
			status: 409,
			body: { name: "ConflictError", message: "Room r1 already exists", code: 409, type: "ROOM_EXISTS", data: { field: "id" }, retryable: false },
			retryAfterSeconds: null,
		});
		const unavailable = httpErrorAnswer(new DatabaseUnavailableError("shutdown"));
		expect(unavailable).toMatchObject({ status: 503, body: { code: 503, type: "SERVICE_UNAVAILABLE", retryable: true }, retryAfterSeconds: 1 });
	});

	it("HTTP: a bug answers a bare 500 without its message", () => {
		const answer = httpErrorAnswer(new TypeError("Cannot read properties of undefined (reading 'secret')"));
		expect(answer).toEqual({ status: 500, body: { name: "InternalServerError", message: "Internal server error", code: 500, type: "INTERNAL" }, retryAfterSeconds: null });
	});

	it("socket: code, type, message and the field; a 500 hides its message; retryable 5xx and every 429 say retryable", () => {
		expect(socketErrorAnswer(new Errors.ValidationError("bad", "VALIDATION_ERROR", [{ field: "body", message: "too long" }]))).toEqual({ code: 422, type: "VALIDATION_ERROR", message: "bad", field: "body" });
		expect(socketErrorAnswer(new UnauthorizedError("A token is required"))).toEqual({ code: 401, type: "NO_TOKEN", message: "A token is required" });
		expect(socketErrorAnswer(new Error("secret detail"))).toEqual({ code: 500, type: "INTERNAL", message: "Internal error" });
		expect(socketErrorAnswer(new UnavailableError("down"))).toEqual({ code: 503, type: "SERVICE_UNAVAILABLE", message: "down", retryable: true });
		expect(socketErrorAnswer(new RateLimitedError("At most 2 open runs per socket", "TOO_MANY_RUNS"))).toEqual({ code: 429, type: "TOO_MANY_RUNS", message: "At most 2 open runs per socket", retryable: true });
		expect(socketErrorAnswer(new NotFoundError("No open run r1", "RUN_NOT_FOUND", { field: "request_id" }))).toEqual({ code: 404, type: "RUN_NOT_FOUND", message: "No open run r1", field: "request_id" });
	});
});

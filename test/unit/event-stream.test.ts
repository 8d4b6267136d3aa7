/**
 * lib/data/event-stream.ts without a server: NATS subject matching (which decides "bad subject → DLQ" vs
 * "outage → pause"), how JetStream API errors map to an outage with its fix, and the one-line-per-change log.
 */
import { EventStreamState, outageOf, subjectMatches } from "../../lib/data/event-stream";

describe("subjectMatches", () => {
	it.each([
		["memory.>", "memory.created.public", true],
		["memory.>", "memory", false],
		["p.memory.>", "p.memory.created", true],
		["memory.*", "memory.created", true],
		["memory.*", "memory.created.public", false],
		["memory.*.public", "memory.created.public", true],
		["memory.*.public", "memory.created.team", false],
		["audit.>", "memory.created", false],
		["a.b", "a.b", true],
		["a.b", "a.b.c", false],
	])("%s matches %s: %s", (pattern, subject, expected) => {
		expect(subjectMatches(pattern, subject)).toBe(expected);
	});
});

describe("outageOf", () => {
	it("reads a 503 from the account API as JetStream not enabled, with the -js fix", () => {
		const outage = outageOf(Object.assign(new Error("503"), { code: "503" }), "account");
		expect(outage.code).toBe("jetstream_disabled");
		expect(outage.reason).toMatch(/start nats-server with -js/);
	});

	it("reads timeouts and closed connections as NATS unreachable, anything else as the stream unavailable", () => {
		expect(outageOf(Object.assign(new Error("TIMEOUT"), { code: "TIMEOUT" }), "stream").code).toBe("nats_unreachable");
		expect(outageOf(Object.assign(new Error("closed"), { code: "CONNECTION_CLOSED" }), "account").code).toBe("nats_unreachable");
		const offline = outageOf(Object.assign(new Error("stream is offline"), { code: "500", api_error: { err_code: 10118, description: "stream is offline" } }), "stream");
		expect(offline).toMatchObject({ code: "stream_unavailable", reason: expect.stringContaining("stream is offline") });
		// a 503 on the stream step is not "JetStream disabled": the account API answered just before
		expect(outageOf(Object.assign(new Error("503"), { code: "503" }), "stream").code).toBe("stream_unavailable");
	});
});

describe("EventStreamState", () => {
	it("logs once per state change, reports the reason as a dependency, and says how long the pause lasted", () => {
		const lines: Array<[string, string]> = [];
		const state = new EventStreamState({ warn: m => lines.push(["warn", m]), info: m => lines.push(["info", m]) });
		const disabled = outageOf(Object.assign(new Error("503"), { code: "503" }), "account");
		expect(state.dependency()).toEqual({ status: "up" });
		for (let i = 0; i < 5; i++) state.set(disabled);
		expect(lines).toHaveLength(1);
		expect(state.paused).toBe(true);
		expect(state.dependency()).toEqual({ status: "down", error: disabled.reason });
		state.set({ code: "nats_unreachable", reason: "gone" });
		state.set(null);
		state.set(null);
		expect(lines.map(([level]) => level)).toEqual(["warn", "warn", "info"]);
		expect(lines[2][1]).toMatch(/available again, the outbox relay resumes after \d+ s paused \(nats_unreachable\)/);
		expect(state.paused).toBe(false);
	});
});

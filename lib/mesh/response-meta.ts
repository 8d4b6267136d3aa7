/**
 * A response carries back only the `meta` keys the serving side set, not the whole `meta` it was sent.
 *
 * Moleculer returns the served context's `meta` with every response, and the caller merges it into its own
 * with `Object.assign`. For a call from the gateway that is the caller's `meta.user` (and whatever else it
 * sent) travelling back unchanged on every call: the serving node serializes it, NATS carries it, and the
 * caller parses it and assigns it over an equal copy. bench/mesh measured what that costs bare Moleculer
 * (docs/BENCHMARKS.md, "Mesh foundation": the same call with and without meta).
 *
 * What the caller sees is unchanged: `Object.assign` of the keys that did not change put back what it
 * already had, so sending only the keys whose value is not the one that arrived gives it the same `meta`.
 * The rule is by top-level key, as `Object.assign`'s merge is: a key the serving side sets or replaces
 * (`ctx.meta.$responseHeaders = {…}`) goes back; a change made inside an object that arrived
 * (`ctx.meta.user.name = …`) does not, and a service that wants such a change seen by its caller assigns
 * the key. Callers on older versions merge the smaller object the same way (they read `packet.meta || {}`).
 */
import type { Middleware } from "moleculer";

type Meta = Record<string, unknown>;
interface Packet {
	type?: string;
	payload?: { meta?: Meta };
}

/**
 * Where a served request's `meta` keeps a shallow copy of itself as it arrived, until its response is sent.
 * A symbol key: JSON (the serializer) skips it, so it never travels, and reading it costs a property load
 * (a WeakMap from meta to copy cost ~1.4 µs per request in a micro-benchmark, most of it in the GC).
 */
const ARRIVED = Symbol("meta as it arrived");
type ServedMeta = Meta & { [ARRIVED]?: Meta };

/** The keys of `meta` whose value is not the one that arrived (all of them when nothing is known). */
export function changedMeta(meta: Meta, before: Meta | undefined): Meta {
	if (!before) return meta;
	let changed: Meta | null = null;
	for (const key in meta) {
		if (meta[key] !== before[key] || !(key in before)) (changed ??= {})[key] = meta[key];
	}
	return changed ?? {};
}

export function ChangedMetaOnlyMiddleware(): Middleware {
	return {
		name: "ChangedMetaOnly",
		// Transit makes `payload.meta` the served context's `meta` object: the copy taken here, before any
		// handler runs, is what the response is compared with.
		transitMessageHandler(next: (cmd: string, packet: Packet) => unknown) {
			return function rememberArrivedMeta(cmd: string, packet: Packet): unknown {
				const meta = cmd === "REQ" ? (packet.payload?.meta as ServedMeta | undefined) : undefined;
				if (meta && !meta[ARRIVED]) meta[ARRIVED] = { ...meta };
				return next(cmd, packet);
			};
		},
		transitPublish(next: (packet: Packet) => Promise<unknown>) {
			return function sendChangedMeta(packet: Packet): Promise<unknown> {
				const meta = packet.type === "RES" ? (packet.payload?.meta as ServedMeta | undefined) : undefined;
				const arrived = meta?.[ARRIVED];
				if (arrived) {
					delete meta![ARRIVED];
					packet.payload!.meta = changedMeta(meta!, arrived);
				}
				return next(packet);
			};
		},
	} as unknown as Middleware;
}

/**
 * The project's own action fields, known to Moleculer's typings. Moleculer copies unknown action
 * properties into the catalogue it gossips across the mesh, so callers on other nodes read what the
 * callee declared: the gateway enforces `access`, the call path applies `timeout` and retries only
 * `idempotent` actions, and the gateway cancels `cancellable` ones whose client left (lib/mesh/failover-policy.ts actionPolicy()). `rest` comes from moleculer-web.
 *
 * With these, a service is typed as `ServiceSchema<Settings, Methods, Vars, This>`: handlers, events,
 * methods and lifecycle hooks get `this: This` without casts (docs/ARCHITECTURE.md, "Typed services").
 */
import "moleculer";
import type { Access } from "../lib/http/auth";

declare module "moleculer" {
	// Declarations that merge must repeat the type parameter, used or not.
	// eslint-disable-next-line @typescript-eslint/no-unused-vars
	interface ActionSchema<TThis> {
		/** who may call it through the gateway: "public", "user" (the default) or a role list */
		access?: Access;
		/** safe to run twice: callers retry it on another node after a timeout or a lost node */
		idempotent?: boolean;
		/** ms; set by actionPolicy() from a timeout class (fast, standard, slow) */
		timeout?: number;
		/**
		 * the gateway gives the call a cancel key and cancels it mesh-wide when the client disconnects
		 * before the answer (lib/inference/cancellation.ts)
		 */
		cancellable?: boolean;
	}
}

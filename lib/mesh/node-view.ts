/**
 * How one node of the mesh looks to operators: the `mesh.nodes` action and the REPL's `mesh` view share it.
 */
export interface RegistryNode {
	id: string;
	available: boolean;
	local: boolean;
	lastHeartbeatTime?: number;
	metadata?: { role?: string; version?: string; transport?: string } | null;
	hostname?: string | null;
	/** service descriptors as Moleculer gossips them; `name` is the one read here */
	services?: Array<Record<string, any>>;
	cpu?: number | null;
}

export interface MeshNodeView {
	nodeID: string;
	role: string | null;
	version: string | null;
	available: boolean;
	local: boolean;
	hostname: string | null;
	services: string[];
	lastHeartbeat: string | null;
	cpu: number | null;
}

/** Moleculer stamps heartbeats with the local process.uptime() in seconds, not with wall-clock time. */
function heartbeatTime(uptimeSeconds: number | undefined): string | null {
	if (uptimeSeconds == null) return null;
	return new Date(Date.now() - (process.uptime() - uptimeSeconds) * 1000).toISOString();
}

/** Internal ($node) services are left out: operators think in actors. */
export function describeNode(node: RegistryNode): MeshNodeView {
	return {
		nodeID: node.id,
		role: node.metadata?.role ?? null,
		version: node.metadata?.version ?? null,
		available: node.available,
		local: node.local,
		hostname: node.hostname ?? null,
		services: [...new Set((node.services ?? []).map(s => String(s.name)).filter(n => !n.startsWith("$")))].sort(),
		lastHeartbeat: node.local ? null : heartbeatTime(node.lastHeartbeatTime),
		cpu: node.cpu ?? null,
	};
}

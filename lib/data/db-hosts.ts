/**
 * Database host lists: DB_HOSTS (`h1:5432,h2:5432`) and multi-host URLs (`postgres://u:p@h1:5432,h2:5432/db`).
 * No driver here, so lib/runtime/settings.ts can validate DB_HOSTS without loading pg.
 */
export interface DbHost {
	host: string;
	port: number;
}

export interface DatabaseTargets {
	hosts: DbHost[];
	/** the URL with its host list replaced by one host */
	urlFor(host: DbHost): string;
}

const URL_PARTS = /^(postgres(?:ql)?:\/\/)([^@/]*@)?([^/?#]*)(.*)$/i;

function parseHost(spec: string, defaultPort = 5432): DbHost {
	const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(spec);
	if (bracketed) return { host: bracketed[1], port: bracketed[2] ? Number(bracketed[2]) : defaultPort };
	const [host, port] = spec.split(":");
	return { host, port: port ? Number(port) : defaultPort };
}

function hostSpec({ host, port }: DbHost): string {
	return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** Splits a (possibly multi-host) PostgreSQL URL into its hosts. */
export function parseDatabaseTargets(url: string): DatabaseTargets {
	const match = URL_PARTS.exec(url);
	if (!match) return { hosts: [], urlFor: () => url };
	const [, scheme, auth = "", hostList, rest] = match;
	const hosts = hostList
		.split(",")
		.filter(Boolean)
		.map(spec => parseHost(spec));
	return { hosts, urlFor: host => `${scheme}${auth}${hostSpec(host)}${rest}` };
}

/** `h1:5432,h2:5432` → hosts; invalid entries throw with the entry named. */
export function parseHostList(list: string): DbHost[] {
	return list
		.split(",")
		.map(s => s.trim())
		.filter(Boolean)
		.map(spec => {
			const host = parseHost(spec);
			if (!host.host || !Number.isInteger(host.port) || host.port < 1 || host.port > 65535) throw new Error(`"${spec}" is not host:port`);
			return host;
		});
}


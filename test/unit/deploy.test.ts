/**
 * Deployment files agree with the code and the seed's conventions: names, network, healthchecks,
 * only the gateway published, no secret values in git, and only environment variables the code reads.
 */
import fs from "fs";
import path from "path";
import YAML from "yaml";

const ROOT = path.resolve(__dirname, "..", "..");
const read = (file: string) => fs.readFileSync(path.join(ROOT, file), "utf8");
const yamlDocs = (file: string) => YAML.parseAllDocuments(read(file)).map(d => d.toJS());

/** Every variable lib/settings.ts reads, from its source: env.X, env["X"], readInt/readBool/readDurationMs(env, "X"…). */
function variablesTheCodeReads(): Set<string> {
	const source = read("lib/settings.ts");
	const names = new Set<string>();
	for (const m of source.matchAll(/env(?:\.|\[")([A-Z][A-Z0-9_]*)|read(?:Int|Bool|DurationMs)\(env, "([A-Z][A-Z0-9_]*)"/g)) names.add(m[1] ?? m[2]);
	return names;
}

const composeFiles = ["docker/docker-compose.yml", "docker/docker-compose.node2.yml"];
const k8sFiles = fs.readdirSync(path.join(ROOT, "k8s")).filter(f => f.endsWith(".yaml")).map(f => `k8s/${f}`);

describe("docker compose", () => {
	const services = composeFiles.flatMap(file => Object.entries(yamlDocs(file)[0].services as Record<string, any>).map(([name, def]) => ({ file, name, def })));

	it("names containers daarion-<service>, joins daarion_net and has a healthcheck on every container", () => {
		expect(services.length).toBeGreaterThanOrEqual(4);
		for (const { name, def } of services) {
			expect(def.container_name).toBe(`daarion-${name}`);
			expect(def.networks).toContain("daarion_net");
			expect(def.healthcheck?.test).toBeDefined();
			expect(Object.keys(def.labels ?? {}).some(k => k.startsWith("com.daarion."))).toBe(true);
		}
	});

	it("publishes only the gateway port", () => {
		for (const { name, def } of services) {
			if (name.startsWith("node")) expect(def.ports).toEqual(["9300:9300"]);
			else expect(def.ports).toBeUndefined();
		}
	});

	it("holds no secret values: passwords come from the environment", () => {
		for (const { def } of services) {
			for (const [key, value] of Object.entries({ ...(def.environment ?? {}) })) {
				if (/PASSWORD|SECRET|TOKEN/.test(key)) expect(String(value)).toMatch(/^\$\{[A-Z_]+\}$/);
			}
			const args: string[] = (def.command ?? []).map(String);
			args.forEach((arg, i) => {
				if (/^--(pass|password|user)$/.test(arg)) expect(args[i + 1]).toMatch(/^\$\{[A-Z_]+\}$/);
			});
		}
	});

	it("gives the nodes only variables the code reads", () => {
		const known = variablesTheCodeReads();
		for (const { name, def } of services.filter(s => s.name.startsWith("node"))) {
			for (const key of Object.keys(def.environment ?? {})) expect(`${name}:${key}:${known.has(key)}`).toBe(`${name}:${key}:true`);
		}
	});
});

describe("kubernetes", () => {
	const docs = k8sFiles.flatMap(file => yamlDocs(file).map(doc => ({ file, doc })));
	const deployments = docs.filter(d => d.doc.kind === "Deployment");

	it("runs node1 and node2 with /health probes on the gateway port and a graceful stop window", () => {
		expect(deployments.map(d => d.doc.spec.template.spec.containers[0].env.find((e: any) => e.name === "NODE_ROLE").value).sort()).toEqual(["node1", "node2"]);
		for (const { doc } of deployments) {
			const pod = doc.spec.template.spec;
			const container = pod.containers[0];
			for (const probe of [container.readinessProbe, container.livenessProbe]) expect(probe.httpGet).toEqual({ path: "/health", port: 9300 });
			expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(10);
		}
	});

	it("uses only variables the code reads, and covers what production requires", () => {
		const known = variablesTheCodeReads();
		const config = docs.find(d => d.doc.kind === "ConfigMap")!.doc.data as Record<string, string>;
		const secret = docs.find(d => d.doc.kind === "Secret")!.doc.stringData as Record<string, string>;
		for (const key of [...Object.keys(config), ...Object.keys(secret)]) expect(`${key}:${known.has(key)}`).toBe(`${key}:true`);
		for (const required of ["NODE_ENV", "NATS_URL", "JWT_SECRET", "DB_HOST", "DB_PASSWORD"]) expect({ ...config, ...secret }).toHaveProperty(required);
		expect(Object.values(secret).every(v => v === "REPLACE_ME")).toBe(true);
	});
});

describe("image and env example", () => {
	it("builds on Node 22 with a /health HEALTHCHECK and runs as non-root", () => {
		const dockerfile = read("docker/Dockerfile");
		expect(dockerfile).toMatch(/^FROM node:22/m);
		expect(dockerfile).toMatch(/^HEALTHCHECK[\s\S]*\/health/m);
		expect(dockerfile).toMatch(/^USER node$/m);
	});

	it(".env.example lists every variable the code reads", () => {
		const listed = new Set([...read(".env.example").matchAll(/^([A-Z][A-Z0-9_]*)=/gm)].map(m => m[1]));
		const missing = [...variablesTheCodeReads()].filter(name => !listed.has(name));
		expect(missing).toEqual([]);
	});
});

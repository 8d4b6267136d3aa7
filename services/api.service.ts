/**
 * api: the moleculer-web gateway every node runs.
 *
 *   /api/<service>/<endpoint>   REST aliases generated from each action's `rest` declaration
 *   /health                     the seed's health document (200 healthy; 503 unhealthy, or degraded with a required dependency down)
 *   /metrics                    Prometheus text: Moleculer's metrics + the seed's HTTP metrics
 *
 * HTTP concerns live here and nowhere else: request id, rate limit, body parsing, auth, CORS,
 * HTTP metrics. Domain services only declare `rest`, `params` and `access`.
 */
import { timingSafeEqual } from "crypto";
import { STATUS_CODES, type IncomingMessage, type Server as HttpServer, type ServerResponse } from "http";
import type { Duplex } from "stream";
import path from "path";
import type { Context, Logger, LogLevels, Service, ServiceSchema } from "moleculer";
import ApiGateway, { type ApiRouteSchema, type ApiSettingsSchema } from "moleculer-web";
import type { Server as SocketServer } from "socket.io";
import { bearerToken, checkAccess, isAuthRefusal, signToken, verifyToken, type Access, type AuthRefusal, type MeshUser } from "../lib/http/auth";
import { httpErrorAnswer, statusOf } from "../lib/http/error-answer";
import { BadRequestError, HeadersTooLargeError, invalidField, NotFoundError, UnauthorizedError, UnavailableError } from "../lib/mesh/errors";
import { isDatabaseFault } from "../lib/data/db-faults";
import { cancelMeta, cancelWhenClientLeaves } from "../lib/inference/cancellation";
import { auditSecurityDecision } from "../lib/data/audit-events";
import { buildHealthReport, healthHttpStatus } from "../lib/http/health";
import { acceptIdempotencyKey, acceptRequestID, clientKey, jsonBodyMiddleware, rateLimitMiddleware } from "../lib/http/edge-middlewares";
import { InPlaceSeries } from "../lib/mesh/request-metrics";
import { HTTP_DURATION_BUCKETS, HTTP_METRICS, registerHttpMetrics } from "../lib/http/prometheus";
import { logsAt, requestLogger } from "../lib/runtime/logger";
import { nodeContextOf } from "../lib/runtime/node-resources";
import { jwtSecretOf, type MeshSettings } from "../lib/runtime/settings";
import { REALTIME_CHANNELS } from "../lib/realtime/channels";
import { RealtimeGatewayMixin } from "../mixins/realtime-gateway.mixin";

type GatewayRequest = IncomingMessage & {
	$route?: { path?: string };
	$alias?: { path?: string; method?: string };
	$action?: { access?: Access; name?: string; cancellable?: boolean };
	$startedAt?: bigint;
};

type OriginalUrl = { originalUrl?: string };
type RateLimit = ReturnType<typeof rateLimitMiddleware>;
/** What /api, /api/v1 and /internal share (authenticatedRoute). */
type EdgeRoute = Pick<ApiRouteSchema, "mappingPolicy" | "authentication" | "authorization" | "bodyParsers" | "use" | "onError">;

/** A service gone from the mesh is usually back within seconds (a restart, a redeploy): a client retries after this. */
const UNROUTED_RETRY_AFTER_SECONDS = 5;

interface ApiMethods {
	httpLogger(req: IncomingMessage & { $ctx?: Context }, res?: ServerResponse): Logger;
	logs(level: LogLevels): boolean;
	logRequest(req: IncomingMessage & { $route?: { logging?: boolean } } & OriginalUrl): void;
	logResponse(req: IncomingMessage & { $route?: { logging?: boolean }; $startTime?: [number, number] } & OriginalUrl, res: ServerResponse): void;
	authenticatedRoute(settings: MeshSettings): EdgeRoute;
	apiRoute(edge: EdgeRoute): ApiRouteSchema;
	registryRoute(edge: EdgeRoute): ApiRouteSchema;
	internalRoute(edge: EdgeRoute): ApiRouteSchema;
	operationsRoute(rateLimit: RateLimit): ApiRouteSchema;
	authenticate(ctx: Context, route: unknown, req: GatewayRequest): MeshUser | null;
	authorize(ctx: Context<unknown, { user?: MeshUser }>, route: unknown, req: GatewayRequest): void;
	auditedAuthError(ctx: Context<unknown, { user?: MeshUser }>, req: GatewayRequest, err: AuthRefusal): AuthRefusal;
	beforeCall(ctx: Context<unknown, { idempotencyKey?: string; cancel_key?: string }>, route: unknown, req: GatewayRequest, res: ServerResponse): void;
	sendHealth(req: IncomingMessage, res: ServerResponse): Promise<void>;
	sendDevToken(req: IncomingMessage, res: ServerResponse): void;
	sendMetrics(req: IncomingMessage, res: ServerResponse): void;
	metricsAllowed(req: IncomingMessage): boolean;
	answerClientError(err: Error & { code?: string }, socket: Duplex): void;
	sendJson(req: IncomingMessage, res: ServerResponse, status: number, body: unknown): void;
	sendErrorAnswer(req: IncomingMessage, res: ServerResponse, err: unknown, retryAfterSeconds?: number): void;
	isServiceAvailable(name: string): boolean;
	send404(req: IncomingMessage & OriginalUrl, res: ServerResponse): void;
	errorHandler(req: IncomingMessage, res: ServerResponse, err: Error): void;
	sendJsonError(req: IncomingMessage, res: ServerResponse, err: Error & { type?: string; data?: { fault?: unknown } }): void;
	instrumentServer(): void;
}

/** The gateway as its handlers see it: moleculer-web's members it uses, the realtime mixin's `io`, its own fields and methods. */
interface ApiThis extends Service<ApiSettingsSchema>, ApiMethods {
	/** moleculer-web: the HTTP server, created in its created() */
	server: HttpServer;
	/** moleculer-web: registers a route after created() */
	addRoute(route: ApiRouteSchema, toBottom?: boolean): unknown;
	/** moleculer-web: its default error answer, which every route here replaces with sendJsonError */
	sendError(req: IncomingMessage, res: ServerResponse, err: Error): void;
	/** RealtimeGatewayMixin: socket.io on this server, once started */
	io: SocketServer | null;
	/** every service the mesh has offered since this gateway started (see created) */
	servicesSeen: Set<string>;
}

function routeLabel(req: GatewayRequest): string {
	if (!req.$alias) return "unmatched";
	const prefix = req.$route?.path === "/" ? "" : (req.$route?.path ?? "");
	return `${prefix}/${(req.$alias.path ?? "").replace(/^\//, "")}`;
}

const ApiService: ServiceSchema<ApiSettingsSchema, Record<string, never>, Record<string, never>, ApiThis> = {
	name: "api",
	mixins: [ApiGateway, RealtimeGatewayMixin(REALTIME_CHANNELS)],

	settings: {
		port: 9300,
		ip: "0.0.0.0",
		// Every route answers JSON errors through sendError below; no HTML, no stack traces.
		log4XXResponses: false,
		logRequest: "debug",
		logResponse: "debug",
		logRouteRegistration: "debug",
		// The web page (public/): served for GET requests no route claims.
		assets: { folder: path.resolve(__dirname, "..", "public") },
		// Never log request params or response bodies, at any level: they carry memory content,
		// confidential or not (test/integration/memory.test.ts greps the logs for it).
		logRequestParams: null,
		logResponseData: null,
		// REST aliases are rebuilt after this debounce whenever a node joins or leaves; short, so a
		// freshly started gateway answers 404 for as little time as possible.
		debounceTime: 100,
		routes: [],
	},

	events: {
		/** An operator's broadcast (POST /api/v1/broadcast): a banner on every page this gateway serves. */
		"system.broadcast"(ctx: Context<{ id: string; message: string; severity: string }>) {
			const banner = { id: ctx.params.id, message: ctx.params.message, severity: ctx.params.severity };
			for (const namespace of this.io?._nsps.values() ?? []) namespace.emit("banner", banner);
		},
	},

	created() {
		// Remember every service the mesh has offered, so that when its last node leaves the gateway
		// answers 503 "unavailable, retry" rather than a misleading 404 "no such endpoint".
		this.servicesSeen = new Set<string>();
		this.broker.localBus.on("$services.changed", () => {
			for (const service of this.broker.registry.getServiceList({ skipInternal: true }) as Array<{ name: string }>) {
				this.servicesSeen.add(service.name);
			}
		});
		const { settings } = nodeContextOf(this.broker);
		this.settings.port = settings.port;
		this.settings.ip = settings.host;
		this.settings.cors = settings.corsOrigins.length
			? {
					origin: settings.corsOrigins,
					methods: ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
					allowedHeaders: ["Authorization", "Content-Type", "X-Request-ID", "Idempotency-Key"],
					exposedHeaders: ["X-Request-ID", "Retry-After"],
					maxAge: 600,
				}
			: undefined;
		// moleculer-web calls a function here with the call's options (src/index.js); its typings admit only an object.
		this.settings.rootCallOptions = ((options: { requestID?: string }, req: IncomingMessage, res: ServerResponse) => {
			options.requestID = acceptRequestID(req.headers["x-request-id"]);
			res.setHeader("X-Request-ID", options.requestID);
		}) as unknown as ApiSettingsSchema["rootCallOptions"];
		// moleculer-web registered settings.routes in its own created(); ours need the node's settings.
		// One rate limiter and body parser for every authenticated route: a client's budget is per gateway.
		const edge = this.authenticatedRoute(settings);
		this.addRoute(this.registryRoute(edge));
		this.addRoute(this.apiRoute(edge));
		this.addRoute(this.internalRoute(edge));
		// Its own budget per client (same limits): a monitor polling /health spends none of the API's.
		this.addRoute(this.operationsRoute(rateLimitMiddleware(settings.rateLimit)));
		registerHttpMetrics(this.broker);
		const devLogin = `Development login GET /auth/dev-token: ${settings.devLogin ? "SERVED" : "off"} (${settings.devLoginReason})`;
		if (settings.devLogin) this.logger.warn(`${devLogin}; anyone can sign in as anyone on this node`);
		else this.logger.info(devLogin);
		if (!settings.metricsToken) this.logger.info("GET /metrics is open to every client that reaches this port (METRICS_TOKEN closes it)");
	},

	started() {
		this.instrumentServer();
		this.server.on("clientError", (err: Error & { code?: string }, socket: Duplex) => this.answerClientError(err, socket));
	},

	methods: {
		/** The gateway's logger for one HTTP request: its lines carry the request id (X-Request-ID). */
		httpLogger(req: IncomingMessage & { $ctx?: Context }, res?: ServerResponse) {
			const requestID = req.$ctx?.requestID ?? (res?.getHeader("X-Request-ID") as string | undefined);
			return requestLogger(this.logger, { requestID });
		},

		/** Whether lines at `level` are written at all (LOG_LEVEL): request lines are skipped early when not. */
		logs(level: LogLevels): boolean {
			return logsAt(level, nodeContextOf(this.broker).settings.logLevel);
		},

		/** moleculer-web's "=> GET /path" line, with the request id. */
		logRequest(req: IncomingMessage & { $route?: { logging?: boolean } } & OriginalUrl) {
			const level = this.settings.logRequest;
			if ((req.$route && !req.$route.logging) || !level || !this.logs(level)) return;
			this.httpLogger(req)[level](`=> ${req.method} ${req.originalUrl}`);
		},

		/** moleculer-web's "<= 200 GET /path [+ms]" line, with the request id and without terminal colours. */
		logResponse(req: IncomingMessage & { $route?: { logging?: boolean }; $startTime?: [number, number] } & OriginalUrl, res: ServerResponse) {
			const level = this.settings.logResponse;
			if ((req.$route && !req.$route.logging) || !level || !this.logs(level)) return;
			const [seconds, nanos] = process.hrtime(req.$startTime ?? process.hrtime());
			const ms = Math.round(seconds * 1e6 + nanos / 1e3) / 1e3;
			this.httpLogger(req, res)[level](`<= ${res.statusCode} ${req.method} ${req.originalUrl} [+${ms} ms]`, { status: res.statusCode, duration_ms: ms });
		},

		/** What /api and /internal share: bearer auth, action access rules, rate limit, JSON bodies, JSON errors. */
		authenticatedRoute(settings: MeshSettings): EdgeRoute {
			return {
				mappingPolicy: "restrict",
				authentication: true,
				authorization: true,
				bodyParsers: false,
				use: [rateLimitMiddleware(settings.rateLimit), jsonBodyMiddleware(settings.bodyLimit)],
				onError: this.sendJsonError,
			};
		},

		apiRoute(edge: EdgeRoute): ApiRouteSchema {
			return { ...edge, name: "api", path: "/api", autoAliases: true, mergeParams: true, onBeforeCall: this.beforeCall };
		},

		/** The seed's node-registry API keeps its /api/v1 paths (DAARION_API §7), beside the /api/<service> aliases. */
		registryRoute(edge: EdgeRoute): ApiRouteSchema {
			return {
				...edge,
				name: "registry-v1",
				path: "/api/v1",
				mergeParams: true,
				aliases: {
					"POST /nodes/register": "node-registry.register",
					"POST /nodes/:node_id/heartbeat": "node-registry.heartbeat",
					"GET /nodes": "node-registry.list",
					"GET /nodes/:node_id": "node-registry.get",
					"POST /broadcast": "node-registry.broadcast",
				},
			};
		},

		/** The seed's service-to-service endpoints outside /api (service or admin role). */
		internalRoute(edge: EdgeRoute): ApiRouteSchema {
			return { ...edge, name: "internal", path: "/internal", aliases: { "POST /matrix/presence/online": "presence.internalOnline" } };
		},

		/** /health (a database ping each), /metrics and the development login: rate-limited like the API. */
		operationsRoute(rateLimit: RateLimit): ApiRouteSchema {
			const aliases: NonNullable<ApiRouteSchema["aliases"]> = {
				"GET /health": this.sendHealth,
				"GET /metrics": this.sendMetrics,
			};
			// Development login for the web page: only with the development secret or DEV_LOGIN=true (lib/runtime/settings.ts).
			if (nodeContextOf(this.broker).settings.devLogin) aliases["GET /auth/dev-token"] = this.sendDevToken;
			return {
				name: "operations",
				path: "/",
				mappingPolicy: "restrict",
				bodyParsers: false,
				use: [rateLimit],
				aliases,
				onError: this.sendJsonError,
			};
		},

		/** moleculer-web hook: a bearer token, when present, must be valid; it becomes ctx.meta.user. */
		authenticate(ctx: Context, _route: unknown, req: GatewayRequest): MeshUser | null {
			try {
				const token = bearerToken(req.headers.authorization);
				if (!token) return null;
				return verifyToken(jwtSecretOf(nodeContextOf(this.broker).settings), token);
			} catch (err) {
				if (isAuthRefusal(err)) throw this.auditedAuthError(ctx, req, err);
				throw err;
			}
		},

		/** moleculer-web hook: the called action's `access` decides (default "user": any valid token). */
		authorize(ctx: Context<unknown, { user?: MeshUser }>, _route: unknown, req: GatewayRequest): void {
			try {
				checkAccess(req.$action?.access, ctx.meta.user ?? undefined);
			} catch (err) {
				if (isAuthRefusal(err)) throw this.auditedAuthError(ctx, req, err);
				throw err;
			}
		},

		/** Every 401/403 the gateway decides is an audit event (flood-guarded), then the refusal itself. */
		auditedAuthError(ctx: Context<unknown, { user?: MeshUser }>, req: GatewayRequest, err: AuthRefusal): AuthRefusal {
			auditSecurityDecision(this.broker, ctx, {
				service: "api",
				action: err.code === 401 ? "authn_failed" : "authz_failed",
				client: clientKey(req),
				reason: err.type,
				actor: ctx.meta.user?.id,
				target: req.$action?.name ?? null,
			});
			return err;
		},

		/**
		 * Before an /api call: Idempotency-Key header → ctx.meta.idempotencyKey (writes built on
		 * IdempotentWritesMixin); for a `cancellable` action (an agent run, a generation) a cancel key in
		 * meta, broadcast when the client disconnects before its answer (lib/inference/cancellation.ts).
		 */
		beforeCall(ctx: Context<unknown, { idempotencyKey?: string; cancel_key?: string }>, _route: unknown, req: GatewayRequest, res: ServerResponse) {
			const key = acceptIdempotencyKey(req.headers["idempotency-key"]);
			if (key) ctx.meta.idempotencyKey = key;
			if (req.$action?.cancellable) {
				Object.assign(ctx.meta, cancelMeta(ctx.id));
				cancelWhenClientLeaves(this.broker, ctx.id, res);
			}
		},

		async sendHealth(req: IncomingMessage, res: ServerResponse) {
			const report = await buildHealthReport(this.broker);
			const healthy = report.status !== "unhealthy";
			this.broker.metrics.set(HTTP_METRICS.serviceHealth, healthy ? 1 : 0, { dependency: "node" });
			for (const [name, dep] of Object.entries(report.dependencies)) {
				this.broker.metrics.set(HTTP_METRICS.serviceHealth, dep.status === "up" ? 1 : 0, { dependency: name });
			}
			this.sendJson(req, res, healthHttpStatus(report), report);
		},

		/** GET /auth/dev-token?user=alice → {token}: a one-hour user token, development only (labelled as such). */
		sendDevToken(req: IncomingMessage, res: ServerResponse) {
			const user = new URL(req.url ?? "", "http://x").searchParams.get("user") ?? "";
			if (!/^[a-z0-9_.-]{1,40}$/i.test(user)) {
				return this.sendErrorAnswer(req, res, invalidField("user", "1-40 letters, digits, . _ -"));
			}
			const token = signToken(jwtSecretOf(nodeContextOf(this.broker).settings), { id: user, roles: [], teams: [] });
			this.sendJson(req, res, 200, { token, user, note: `development login: ${nodeContextOf(this.broker).settings.devLoginReason}` });
		},

		sendMetrics(req: IncomingMessage, res: ServerResponse) {
			if (!this.metricsAllowed(req)) {
				res.setHeader("WWW-Authenticate", 'Bearer realm="metrics"');
				return this.sendErrorAnswer(req, res, new UnauthorizedError("GET /metrics needs 'Authorization: Bearer <METRICS_TOKEN>'", "NO_TOKEN"));
			}
			const body = nodeContextOf(this.broker).metricsReporter.render();
			res.writeHead(200, { "Content-Type": "text/plain; version=0.0.4; charset=utf-8" });
			res.end(body);
		},

		/** With METRICS_TOKEN set, /metrics answers only its bearer (compared in constant time). */
		metricsAllowed(req: IncomingMessage): boolean {
			const expected = nodeContextOf(this.broker).settings.metricsToken;
			if (!expected) return true;
			const match = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? "");
			const given = Buffer.from(match?.[1] ?? "");
			const wanted = Buffer.from(expected);
			return given.length === wanted.length && timingSafeEqual(given, wanted);
		},

		/**
		 * Requests Node's HTTP parser refuses before any route sees them: over-long URL or headers (431,
		 * beyond Node's maxHeaderSize, 16 KiB by default) or malformed HTTP (400), answered as JSON like
		 * every other error instead of Node's empty reply.
		 */
		answerClientError(err: Error & { code?: string }, socket: Duplex) {
			if (err.code === "ECONNRESET" || !socket.writable) {
				socket.destroy();
				return;
			}
			const refusal = err.code === "HPE_HEADER_OVERFLOW" ? new HeadersTooLargeError("Request line or headers are too large") : new BadRequestError("Malformed HTTP request");
			const { status, body } = httpErrorAnswer(refusal);
			const json = JSON.stringify(body);
			socket.end(
				`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(json)}\r\nConnection: close\r\n\r\n${json}`,
			);
		},

		sendJson(_req: IncomingMessage, res: ServerResponse, status: number, body: unknown) {
			res.writeHead(status, { "Content-Type": "application/json; charset=utf-8" });
			res.end(JSON.stringify(body));
		},

		/** An error as clients see it (lib/http/error-answer.ts), with Retry-After when it is safe to send again. */
		sendErrorAnswer(req: IncomingMessage, res: ServerResponse, err: unknown, retryAfterSeconds?: number) {
			const answer = httpErrorAnswer(err);
			const after = retryAfterSeconds ?? answer.retryAfterSeconds;
			if (after !== null) res.setHeader("Retry-After", String(after));
			this.sendJson(req, res, answer.status, answer.body);
		},

		isServiceAvailable(name: string): boolean {
			return (this.broker.registry.getServiceList({ onlyAvailable: true, skipInternal: true }) as Array<{ name: string }>).some(
				s => s.name === name,
			);
		},

		/** moleculer-web hook for unrouted requests: 503 for a service that is only gone for now, else 404. */
		send404(req: IncomingMessage & OriginalUrl, res: ServerResponse) {
			// Inside a route moleculer-web rewrites req.url relative to the route; originalUrl is the full path.
			const path = req.originalUrl ?? req.url ?? "";
			const service = /^\/api\/([^/?]+)/.exec(path)?.[1];
			if (service && this.servicesSeen.has(service) && !this.isServiceAvailable(service)) {
				const unavailable = new UnavailableError(`Service '${service}' has no available node right now`, "SERVICE_UNAVAILABLE", { service });
				return this.sendErrorAnswer(req, res, unavailable, UNROUTED_RETRY_AFTER_SECONDS);
			}
			this.sendErrorAnswer(req, res, new NotFoundError("Not found"));
		},

		/**
		 * moleculer-web's default logs "Request error!" with the stack inside the message and then sends;
		 * every route here has onError (sendJsonError), which logs once, with the stack in its own field.
		 */
		errorHandler(req: IncomingMessage, res: ServerResponse, err: Error) {
			this.sendError(req, res, err);
		},

		/** Every error is JSON (lib/http/error-answer.ts); this adds what only HTTP has: 404 routing, logs, headers. */
		sendJsonError(req: IncomingMessage, res: ServerResponse, err: Error & { type?: string; data?: { fault?: unknown } }) {
			const status = statusOf(err);
			// moleculer-web raises NOT_FOUND for a path under /api that matches no alias.
			if (status === 404 && err.type === "NOT_FOUND") return this.send404(req, res);
			// A database fault is logged once per state change by the node that saw it (lib/data/db-guard.ts),
			// not once per request that met it.
			if (isDatabaseFault(err)) this.httpLogger(req, res).debug(`HTTP ${status} on ${req.method} ${req.url}: database unavailable`, { fault: err.data?.fault });
			else if (status >= 500) this.httpLogger(req, res).error(`HTTP ${status} on ${req.method} ${req.url}`, err);
			if (res.headersSent) {
				res.end();
				return;
			}
			// Lost node, timeout, full queue: safe to retry (writes with the same Idempotency-Key); sendErrorAnswer says so.
			this.sendErrorAnswer(req, res, err);
		},

		/** HTTP metrics for every request the server answers, routed or not. */
		instrumentServer() {
			const metrics = this.broker.metrics;
			if (!metrics.isEnabled()) return;
			// Per-request series are created once per label set, then updated in place (lib/mesh/request-metrics.ts).
			const series = new InPlaceSeries(this.broker, HTTP_DURATION_BUCKETS);
			let open = 0;
			this.server.on("connection", (socket: NodeJS.EventEmitter) => {
				metrics.set(HTTP_METRICS.activeConnections, ++open, { kind: "http" });
				socket.once("close", () => metrics.set(HTTP_METRICS.activeConnections, --open, { kind: "http" }));
			});
			this.server.prependListener("request", (req: GatewayRequest, res: ServerResponse) => {
				const started = process.hrtime.bigint();
				res.once("finish", () => {
					const route = routeLabel(req);
					const seconds = Number(process.hrtime.bigint() - started) / 1e9;
					const key = `${req.method} ${route}`;
					series.increment(HTTP_METRICS.requests, `${key} ${res.statusCode}`, { method: req.method, route, status: res.statusCode });
					series.observe(HTTP_METRICS.duration, key, { method: req.method, route }, seconds);
				});
			});
		},
	},
};

export default ApiService;

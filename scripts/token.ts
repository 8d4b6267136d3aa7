/**
 * `npm run token -- --user u1 --roles admin[,service] [--teams t1,t2] [--ttl 3600] [--dev]`
 * Mints a bearer JWT with JWT_SECRET from the environment, for operators and tests. Without JWT_SECRET
 * it refuses: a token signed with the development secret must never be minted by accident for a
 * production mesh. `--dev` asks for the development secret explicitly (refused when NODE_ENV=production).
 */
import { signToken } from "../lib/http/auth";
import { DEV_JWT_SECRET, loadSettings } from "../lib/runtime/settings";

function option(args: string[], name: string): string | undefined {
	const at = args.indexOf(`--${name}`);
	return at >= 0 ? args[at + 1] : undefined;
}

function list(value: string | undefined): string[] {
	return value ? value.split(",").map(s => s.trim()).filter(Boolean) : [];
}

function fail(message: string): never {
	process.stderr.write(`${message}\n`);
	process.exit(2);
}

const args = process.argv.slice(2);
const user = option(args, "user");
if (!user) fail("usage: npm run token -- --user <id> [--roles admin,service] [--teams t1] [--ttl seconds] [--dev]");
const settings = loadSettings();
const dev = args.includes("--dev");
if (dev && settings.production) fail("--dev: the development secret is refused when NODE_ENV=production");
if (!dev && !settings.jwtSecret) fail("JWT_SECRET is not set: export the mesh's JWT_SECRET, or pass --dev for a development mesh that runs on the development secret");
const secret = dev ? DEV_JWT_SECRET : (settings.jwtSecret as string);
if (dev) process.stderr.write("token signed with the DEVELOPMENT secret: it only works on development nodes without JWT_SECRET\n");
const ttl = Number(option(args, "ttl") ?? 3600);
process.stdout.write(signToken(secret, { id: user, roles: list(option(args, "roles")), teams: list(option(args, "teams")) }, ttl) + "\n");

/**
 * `npm run token -- --user u1 --roles admin[,service] [--teams t1,t2] [--ttl 3600]`
 * Mints a bearer JWT with this node's JWT_SECRET (or the development secret) for operators and tests.
 */
import { signToken } from "../lib/auth";
import { jwtSecretOf, loadSettings } from "../lib/settings";

function option(args: string[], name: string): string | undefined {
	const at = args.indexOf(`--${name}`);
	return at >= 0 ? args[at + 1] : undefined;
}

function list(value: string | undefined): string[] {
	return value ? value.split(",").map(s => s.trim()).filter(Boolean) : [];
}

const args = process.argv.slice(2);
const user = option(args, "user");
if (!user) {
	process.stderr.write("usage: npm run token -- --user <id> [--roles admin,service] [--teams t1] [--ttl seconds]\n");
	process.exit(2);
}
const ttl = Number(option(args, "ttl") ?? 3600);
process.stdout.write(
	signToken(jwtSecretOf(loadSettings()), { id: user, roles: list(option(args, "roles")), teams: list(option(args, "teams")) }, ttl) + "\n",
);

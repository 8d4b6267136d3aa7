// @ts-check
import js from "@eslint/js";
import globals from "globals";
import tseslint from "typescript-eslint";

const NO_THIS_CAST = {
	selector: "TSAsExpression[expression.type='ThisExpression']",
	message: "Type `this` through the service's ServiceSchema<Settings, Methods, Vars, This> instead of casting it.",
};
const NO_NEVER_CAST = {
	selector: "TSAsExpression[typeAnnotation.type='TSNeverKeyword']",
	message: "`as never` switches the type checker off: give the value its real type (or augment the library's in types/).",
};

export default tseslint.config(
	{ ignores: ["node_modules/", "dist/", "data/", "coverage/", "test-artifacts/", "public/vendor/"] },
	js.configs.recommended,
	...tseslint.configs.recommended,
	{
		languageOptions: { globals: { process: "readonly", console: "readonly", __dirname: "readonly", require: "readonly", module: "writable" } },
		rules: {
			"@typescript-eslint/no-explicit-any": "off",
			"@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_" }],
			"no-console": "error",
		},
	},
	{ files: ["**/*.js", "**/*.cjs"], rules: { "@typescript-eslint/no-require-imports": "off" } },
	{ files: ["bench/**/*.cjs"], languageOptions: { globals: globals.node } },
	// Layering: services → mixins → lib, never the reverse; no service reaches into another service's file
	// (they talk over the mesh); production code never imports dev/ (the image leaves it out).
	{
		files: ["lib/**/*.ts"],
		rules: {
			"@typescript-eslint/no-restricted-imports": [
				"error",
				{
					patterns: [
						{ group: ["**/services/*", "**/mixins/*"], message: "lib/ knows no services or mixins." },
						// Types vanish from the compiled code; the embedded PostgreSQL itself is loaded lazily on the development path only.
						{ group: ["**/dev/*"], allowTypeImports: true, message: "lib/ loads dev/ code only lazily (await import) on a development-only path." },
					],
				},
			],
		},
	},
	{
		files: ["mixins/**/*.ts"],
		rules: { "no-restricted-imports": ["error", { patterns: [{ group: ["**/services/*", "**/dev/*"], message: "mixins/ may use lib/, never services/ or dev/." }] }] },
	},
	{
		files: ["services/**/*.ts"],
		rules: { "no-restricted-imports": ["error", { patterns: [{ group: ["./*", "**/services/*", "**/dev/*"], message: "A service talks to another service over the mesh (ctx.call), not by importing its file; dev/ is development-only." }] }] },
	},
	{
		files: ["scripts/**/*.ts", "moleculer.config.ts"],
		rules: { "no-restricted-imports": ["error", { patterns: [{ group: ["**/services/*", "**/dev/*"], message: "Scripts and the broker config use lib/, not service files or dev/." }] }] },
	},
	// Typed services (types/moleculer.d.ts, ServiceSchema generics): `this` is typed in every handler, method
	// and hook, so a cast of `this` means the schema's type is missing something; `as never` silences the
	// checker wholesale. Tests may still use `as never` to hand a library deliberately wrong input.
	{
		files: ["services/**/*.ts", "mixins/**/*.ts"],
		rules: { "no-restricted-syntax": ["error", NO_THIS_CAST, NO_NEVER_CAST] },
	},
	{
		files: ["lib/**/*.ts", "dev/**/*.ts", "scripts/**/*.ts", "bench/**/*.ts", "moleculer.config.ts"],
		rules: { "no-restricted-syntax": ["error", NO_NEVER_CAST] },
	},
	// The web page runs in browsers, with socket.io's client loaded as a global by index.html.
	{ files: ["public/**/*.js"], languageOptions: { sourceType: "script", globals: { ...globals.browser, io: "readonly" } } },
);

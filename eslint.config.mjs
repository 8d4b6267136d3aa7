// @ts-check
import js from "@eslint/js";
import globals from "globals";
import tseslint from "typescript-eslint";

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
	// The web page runs in browsers, with socket.io's client loaded as a global by index.html.
	{ files: ["public/**/*.js"], languageOptions: { sourceType: "script", globals: { ...globals.browser, io: "readonly" } } },
);

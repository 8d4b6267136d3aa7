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
	// The web page runs in browsers, with socket.io's client loaded as a global by index.html.
	{ files: ["public/**/*.js"], languageOptions: { sourceType: "script", globals: { ...globals.browser, io: "readonly" } } },
);

